package replication

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func FuzzReadFrame(f *testing.F) {
	f.Add(appendFrame(nil, []byte("hello")))
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<31))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 10), 1, 2))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 4096
		r := bufio.NewReader(bytes.NewReader(in))
		var buf []byte
		for {
			p, err := readFrame(r, buf, limit)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("readFrame error %v is neither EOF nor a frame error", err)
				}
				return
			}
			if len(p) == 0 || len(p) > limit {
				t.Fatalf("readFrame returned %d bytes, limit %d", len(p), limit)
			}
			buf = p[:cap(p)]
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, e := range []Envelope{
		{Version: ProtocolVersion, Type: FirstUserType, From: "node1", Domain: "cohort", Seq: 1, Mode: Ack, Body: []byte("x")},
		{Version: ProtocolVersion, Type: typeReply, From: "b", Domain: "d", Seq: 1 << 40, Mode: Sync},
		{Version: 9, Type: 1},
	} {
		b, err := EncodeEnvelope(&e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x97, 0xc1})
	f.Fuzz(func(t *testing.T, in []byte) {
		e, err := DecodeEnvelope(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) {
				t.Fatalf("DecodeEnvelope error %v is neither malformed nor version", err)
			}
			return
		}
		if e.Version != ProtocolVersion || e.Mode > Sync {
			t.Fatalf("DecodeEnvelope accepted %+v", e)
		}
		// The body does not alias the input, which the reader reuses.
		if len(e.Body) > 0 && len(in) > 0 {
			body := bytes.Clone(e.Body)
			for i := range in {
				in[i] ^= 0xff
			}
			if !bytes.Equal(body, e.Body) {
				t.Fatal("the envelope's body aliases the frame buffer")
			}
		}
		b, err := EncodeEnvelope(&e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := DecodeEnvelope(b)
		if err != nil || e2.Seq != e.Seq || e2.Type != e.Type || e2.From != e.From || !bytes.Equal(e2.Body, e.Body) {
			t.Fatalf("round trip of %+v gave %+v, %v", e, e2, err)
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	b, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "node1", Nonce: make([]byte, nonceSize), MAC: make([]byte, 32)})
	f.Add(b)
	f.Add([]byte{0x95, 0x01})
	f.Add([]byte{0x95, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff}) // claims 4G elements
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := decodeHello(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) {
				t.Fatalf("decodeHello error %v", err)
			}
			return
		}
		if len(h.Nonce) != nonceSize || h.Route == "" {
			t.Fatalf("decodeHello accepted %+v", h)
		}
	})
}

// FuzzServe feeds a connection's whole input, handshake included, to the
// receiver: whatever arrives, serve refuses it or handles it, never
// panics (a panic would be recovered, counted and hidden) and returns
// once the input ends.
func FuzzServe(f *testing.F) {
	h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "x", Nonce: make([]byte, nonceSize)})
	in := appendFrame(nil, h)
	for mode := Async; mode <= Sync; mode++ {
		e := Envelope{Version: ProtocolVersion, Type: FirstUserType, From: "x", Domain: "cohort", Seq: uint64(mode), Mode: mode, Body: []byte("b")}
		in = appendFrame(in, appendEnvelope(nil, &e))
	}
	f.Add(in)
	f.Add(appendFrame(nil, h))
	f.Add(append(appendFrame(nil, h), 0, 0, 0, 0))
	cfg := DefaultConfig()
	cfg.Route, cfg.Addr = "b", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	c.Handle(FirstUserType, func(string, []byte) error { return nil })
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serve(server)
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, _ = client.Write(in)
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("serve did not return once its input ended")
		}
		if n := c.drops[dropPanic].Load(); n != 0 {
			t.Fatalf("serve panicked on %x", in)
		}
	})
}
