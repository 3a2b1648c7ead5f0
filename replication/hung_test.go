package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

// fakePeer accepts connections as route: it runs the server side of the
// plaintext handshake, then serve with the connection.
func fakePeer(t *testing.T, route string, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				if _, err := readFrame(conn, nil, 4096); err != nil {
					return
				}
				b, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: route, Nonce: randomNonce()})
				if _, err := conn.Write(appendFrame(nil, b)); err != nil {
					return
				}
				serve(conn)
			})
		}
	})
	return ln.Addr().String()
}

// Close ends a writer stuck writing to a hung peer whose socket buffers
// are full, instead of waiting for its write timeout (here an hour).
func TestCloseEndsAWriteToAHungPeer(t *testing.T) {
	leaktest.Check(t)
	hang := make(chan struct{})
	addr := fakePeer(t, "b", func(conn net.Conn) { <-hang }) // never reads
	defer close(hang)
	c := testConfig(t, "a")
	c.WriteTimeout = time.Hour
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	a.AddPeer("b", addr)
	waitFor(t, "b connected", func() bool { return peerStats(a, "b").Connected })
	big := make([]byte, 1<<20)
	for range 64 {
		_ = a.Send(context.Background(), nil, testType, big, Async)
	}
	// The writer is stuck once it stops sending while frames are queued.
	last := int64(-1)
	waitFor(t, "the writer stuck", func() bool {
		n := peerStats(a, "b").BytesSent
		stuck := n == last && peerStats(a, "b").QueueDepth > 0
		last = n
		time.Sleep(100 * time.Millisecond)
		return stuck
	})
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waits for a writer stuck on a hung peer")
	}
}

// An answer read after the sender gave up on its frame, but before it
// marked the peer stalled, still counts: the peer, which answered
// everything, is not left stalled. The peer answers about when the
// sender gives up, so that a few thousand sends meet every interleaving
// (under -race, the window was hit about once in a few hundred timeouts).
func TestLateAnswerLeavesNoStall(t *testing.T) {
	leaktest.Check(t)
	addr := fakePeer(t, "b", func(conn net.Conn) {
		var out []byte
		for {
			payload, err := readFrame(conn, nil, 1<<20)
			if err != nil {
				return
			}
			env, err := parseEnvelope(payload)
			if err != nil || env.Mode != Ack {
				continue
			}
			time.Sleep(time.Millisecond) // about when the sender gives up
			e := Envelope{Version: ProtocolVersion, Type: typeAck, From: "b", Domain: "cohort", Seq: env.Seq}
			out = appendFrame(out[:0], appendEnvelope(nil, &e))
			if _, err := conn.Write(out); err != nil {
				return
			}
		}
	})
	a := newChannel(t, testConfig(t, "a"))
	a.AddPeer("b", addr)
	waitFor(t, "b connected", func() bool { return peerStats(a, "b").Connected })
	a.mu.Lock()
	p := a.peers["b"]
	a.mu.Unlock()
	timeouts := 0
	for range 3000 {
		p.stalled.Store(false)
		before := p.answers.Load()
		if err := a.SendWithin(context.Background(), time.Millisecond, nil, testType, []byte("x"), Ack); !errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		timeouts++
		waitFor(t, "the late answer read", func() bool { return p.answers.Load() > before })
		// answered clears a stall just after counting the answer.
		waitFor(t, "b, which answered every frame, not stalled", func() bool { return !p.stalled.Load() })
	}
	if timeouts == 0 {
		t.Error("no send timed out: the test did not run its case")
	}
}

// A send that a caller's own deadline ends, shorter than the send
// timeout, does not mark the peer stalled: only the send timeout passing
// unanswered does.
func TestCallerDeadlineDoesNotStall(t *testing.T) {
	leaktest.Check(t)
	addr := fakePeer(t, "b", func(conn net.Conn) {
		for { // reads, never answers
			if _, err := readFrame(conn, nil, 1<<20); err != nil {
				return
			}
		}
	})
	a := newChannel(t, testConfig(t, "a"))
	a.AddPeer("b", addr)
	waitFor(t, "b connected", func() bool { return peerStats(a, "b").Connected })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := a.Send(ctx, nil, testType, []byte("x"), Ack)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || peerStats(a, "b").Stalled {
		t.Errorf("Send past the caller's deadline = %v, stalled %v; want DeadlineExceeded, not stalled", err, peerStats(a, "b").Stalled)
	}
	err = a.SendWithin(context.Background(), 50*time.Millisecond, nil, testType, []byte("x"), Ack)
	if !errors.Is(err, context.DeadlineExceeded) || !peerStats(a, "b").Stalled {
		t.Errorf("SendWithin past its timeout = %v, stalled %v; want DeadlineExceeded, stalled", err, peerStats(a, "b").Stalled)
	}
}

// A frame too large to send fails the sender that waits for it; one that
// nobody waits for (Async) marks the peer for a resync instead of
// vanishing.
func TestFrameTooLargeIsNotLostSilently(t *testing.T) {
	leaktest.Check(t)
	ca := testConfig(t, "a")
	ca.MaxFrameSize = 4096
	a, b := newChannel(t, ca), newChannel(t, testConfig(t, "b"))
	resynced := make(chan string, 1)
	a.OnResync(func(r string) { resynced <- r })
	var in inbox
	b.Handle(testType, in.handler(""))
	mesh(a, b)
	waitFor(t, "b connected", func() bool { return peerStats(a, "b").Connected })
	big := make([]byte, 8192)
	if err := a.SendWithin(context.Background(), 5*time.Second, nil, testType, big, Ack); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("Ack send of a frame too large = %v, want ErrFrameTooLarge", err)
	}
	if a.NeedsResync("b") {
		t.Error("b marked for a resync although the sender heard of the failure")
	}
	if err := a.Send(context.Background(), nil, testType, big, Async); err != nil {
		t.Fatal(err)
	}
	select { // connected all along: the higher layer hears of it once the queue drains
	case r := <-resynced:
		if r != "b" {
			t.Errorf("resync of %q, want b", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the higher layer never heard that b missed a frame")
	}
}

// Bad input from a peer on the connection this node dialled, in its hello
// or in an answer, drops the connection and is counted by reason, as on
// the connections it accepts.
func TestBadAnswersAreCounted(t *testing.T) {
	leaktest.Check(t)
	goodHello := func() []byte {
		b, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "b", Nonce: randomNonce()})
		return appendFrame(nil, b)
	}
	otherHello := func(edit func(*hello)) []byte {
		h := hello{Version: ProtocolVersion, Domain: "cohort", Route: "b", Nonce: randomNonce()}
		edit(&h)
		b, _ := encodeHello(&h)
		return appendFrame(nil, b)
	}
	for _, tc := range []struct {
		name   string
		input  []byte // what the peer sends once it has read the hello
		reason string
	}{
		{"garbage hello", appendFrame(nil, []byte{0xc1}), "garbage"},
		{"oversized hello", binary.BigEndian.AppendUint32(nil, 1<<30), "oversize"},
		{"hello of another version", otherHello(func(h *hello) { h.Version = 9 }), "version"},
		{"hello of another domain", otherHello(func(h *hello) { h.Domain = "evil" }), "domain"},
		{"oversized answer", append(goodHello(), binary.BigEndian.AppendUint32(nil, 1<<30)...), "oversize"},
		{"truncated answer", append(goodHello(), append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3)...), "truncated"},
		{"garbage answer", append(goodHello(), appendFrame(nil, []byte{0xc1})...), "garbage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			defer wg.Wait()
			defer ln.Close()
			wg.Go(func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					if _, err := readFrame(conn, nil, 4096); err == nil {
						_, _ = conn.Write(tc.input)
					}
					conn.Close()
				}
			})
			ca := testConfig(t, "a")
			ca.MaxFrameSize = 4096
			a := newChannel(t, ca)
			a.AddPeer("b", ln.Addr().String())
			waitFor(t, tc.reason+" counted", func() bool { return a.Stats().Dropped[tc.reason] > 0 })
			_ = a.Close()
		})
	}
}

// A peer that reads steadily, only slower than frames are queued for it,
// keeps its connection: the write timeout bounds each write, not the
// whole run of frames the writer drains while the queue stays non-empty.
func TestBusyPeerKeepsItsConnection(t *testing.T) {
	leaktest.Check(t)
	cb := testConfig(t, "b")
	b := newChannel(t, cb)
	b.Handle(testType, func(string, []byte) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	ca := testConfig(t, "a")
	ca.WriteTimeout = 500 * time.Millisecond
	ca.QueueSize = 16
	a := newChannel(t, ca)
	a.AddPeer("b", b.Addr().String())
	if err := a.Send(context.Background(), nil, testType, []byte("warm"), Sync); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 32<<10)
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); {
		_ = a.Send(context.Background(), nil, testType, body, Async) // a full queue is expected
	}
	if st := peerStats(a, "b"); st.Errors != 0 {
		t.Errorf("a's connection to b, which read all along, was lost %d times", st.Errors)
	}
}

// A receiver that answers a long run of frames, all read before it has
// answered them, keeps the connection: its write timeout bounds each
// write of answers, not the time since the last one.
func TestLongRunOfAnswersKeepsTheConnection(t *testing.T) {
	leaktest.Check(t)
	cb := testConfig(t, "b")
	cb.WriteTimeout = 50 * time.Millisecond
	b := newChannel(t, cb)
	b.Handle(testType, func(string, []byte) error {
		time.Sleep(100 * time.Microsecond)
		return nil
	})
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "x", Nonce: randomNonce()})
	_, _ = conn.Write(appendFrame(nil, h))
	if _, err := readFrame(conn, nil, 4096); err != nil {
		t.Fatal(err)
	}
	frames := func(from, n int) []byte {
		var out []byte
		for i := range n {
			e := Envelope{Version: ProtocolVersion, Type: testType, From: "x", Domain: "cohort", Seq: uint64(from + i), Mode: Ack}
			out = appendFrame(out, appendEnvelope(nil, &e))
		}
		return out
	}
	const n = 2000
	acks := make(chan int, 1)
	go func() {
		got := 0
		var buf []byte
		for {
			p, err := readFrame(conn, buf, 4096)
			if err != nil {
				acks <- got
				return
			}
			buf = p[:cap(p)]
			if got++; got == n+1 {
				acks <- got
				return
			}
		}
	}()
	_, _ = conn.Write(frames(0, 1))
	time.Sleep(200 * time.Millisecond) // past the write timeout of the first ack
	_, _ = conn.Write(frames(1, n))
	select {
	case got := <-acks:
		if got != n+1 {
			t.Errorf("%d acks of %d frames before the connection closed", got, n+1)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the acks never came")
	}
}

// A handler's error fails a Sync send even when its text is empty: the
// reply's body, which is empty for a success, must not read as one.
func TestHandlerErrorWithoutTextFailsSyncSend(t *testing.T) {
	leaktest.Check(t)
	a, b := newChannel(t, testConfig(t, "a")), newChannel(t, testConfig(t, "b"))
	b.Handle(testType, func(string, []byte) error { return errors.New("") })
	mesh(a, b)
	err := a.Send(context.Background(), nil, testType, []byte("x"), Sync)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Sync send to a handler that failed = %v, want a RemoteError", err)
	}
}

// A handler's error of any length comes back to a Sync sender whose
// frame limit is the smallest allowed: the reply carries its text cut to
// a bound, at a character boundary, instead of a frame over the sender's
// limit, which dropped the connection and failed the send as lost.
func TestLongHandlerErrorFitsTheReply(t *testing.T) {
	leaktest.Check(t)
	long := "x" + strings.Repeat("é", 4000) // 2-byte characters, starting at an odd offset
	cb := testConfig(t, "b")
	b := newChannel(t, cb)
	b.Handle(testType, func(string, []byte) error { return errors.New(long) })
	ca := testConfig(t, "a")
	ca.MaxFrameSize = 1024
	a := newChannel(t, ca)
	a.AddPeer("b", b.Addr().String())
	err := a.Send(context.Background(), nil, testType, []byte("x"), Sync)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Sync send to a handler with a long error = %v, want a RemoteError", err)
	}
	if len(re.Msg) > maxReplyError || !utf8.ValidString(re.Msg) || !strings.HasPrefix(long, strings.TrimSuffix(re.Msg, "…")) {
		t.Errorf("reply text of %d bytes (valid UTF-8 %v), want a valid prefix of the error of at most %d", len(re.Msg), utf8.ValidString(re.Msg), maxReplyError)
	}
	if st := peerStats(a, "b"); st.Errors != 0 || a.Stats().Dropped["oversize"] != 0 {
		t.Errorf("a's connection to b: %d errors, %d oversize drops; want none", st.Errors, a.Stats().Dropped["oversize"])
	}
}

// A stream to a hung peer (it reads frames, and never acknowledges one)
// fails its Write and its Close after SendTimeout when their context has
// no deadline, as Send does, instead of waiting for ever.
func TestStreamToAHungPeerTimesOut(t *testing.T) {
	leaktest.Check(t)
	addr := fakePeer(t, "b", func(conn net.Conn) {
		for {
			if _, err := readFrame(conn, nil, 1<<20); err != nil {
				return
			}
		}
	})
	c := testConfig(t, "a")
	c.SendTimeout = time.Second
	a := newChannel(t, c)
	a.AddPeer("b", addr)
	waitFor(t, "b connected", func() bool { return peerStats(a, "b").Connected })
	for _, op := range []string{"Write", "Close"} {
		s, err := a.OpenStream("b", testType, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Write(context.Background(), []byte("1")); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			if op == "Write" {
				done <- s.Write(context.Background(), []byte("2")) // waits for 1's ack: the window is full
			} else {
				done <- s.Close(context.Background())
			}
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s on a stream to a hung peer = %v, want a deadline exceeded", op, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s on a stream to a hung peer still waits", op) // Close ends it
		}
		_ = s.Close(context.Background())
	}
}
