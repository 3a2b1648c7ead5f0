package manager

import (
	"errors"
	"io"
	"log/slog"
	"testing"
)

// FuzzReceive feeds arbitrary peer messages to a Delta and a Backup
// manager: each is handled or refused with ErrMalformed, never a panic.
func FuzzReceive(f *testing.F) {
	for _, seed := range []struct {
		k    kind
		body any
	}{
		{kindChange, Change{ID: "abc.n2", Rev: Rev{N: 1, Node: "n2"}, Created: 1, Ops: []Op{{Name: "a", Value: []byte{0x01}}}}},
		{kindTouch, []touch{{ID: "abc.n2", Access: 5}}},
		{kindExpire, idMsg{ID: "abc.n2", Access: 5}},
		{kindRename, rename{Old: "abc.n2", New: "abc.n1"}},
		{kindFull, Full{ID: "abc.n2", Rev: Rev{N: 3}, Attrs: map[string][]byte{"x": {0xc0}}}},
		{kindSyncChunk, []Full{{ID: "abc.n2"}}},
		{kindFetchReply, fetchReply{ID: "abc.n2", Found: true}},
		{kindPrincipalReply, principalReply{Q: 1}},
		{kindTakeover, idMsg{ID: "abc.n2"}},
	} {
		b, err := encodeMsg(seed.k, seed.body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{byte(kindChange), 0xc1})
	f.Add([]byte{0xff})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	net := newMemNet()
	dc := DefaultDeltaConfig()
	dc.Route, dc.Logger = "n1", quiet
	d, err := NewDelta(dc, net.transport("n1"))
	if err != nil {
		f.Fatal(err)
	}
	bc := DefaultBackupConfig()
	bc.Route, bc.Logger = "n1", quiet
	b, err := NewBackup(bc, net.transport("n1"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		_ = d.Close(bg)
		_ = b.Close(bg)
		net.close()
	})
	_ = d.Sync(bg)
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, m := range []*replicated{d.replicated, b.replicated} {
			if err := m.Receive("n2", msg); err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Receive(%x) = %v, want nil or ErrMalformed", msg, err)
			}
		}
	})
}

// TestReceiveRefusesHugeClaims: a peer message whose array header claims
// billions of elements (msgpack v5.4.1 would allocate them all, and the
// node would die out of memory) is refused as malformed, for every kind.
func TestReceiveRefusesHugeClaims(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	net := newMemNet()
	defer net.close()
	dc := DefaultDeltaConfig()
	dc.Route, dc.Logger = "n1", quiet
	d, err := NewDelta(dc, net.transport("n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(bg)
	for k := kind(1); k < numKinds; k++ {
		if k == kindSyncRequest {
			continue // no body
		}
		msg := []byte{byte(k), 0xdd, 0xff, 0xff, 0xff, 0xff}
		if err := d.Receive("n2", msg); !errors.Is(err, ErrMalformed) {
			t.Errorf("kind %d: Receive = %v, want ErrMalformed", k, err)
		}
	}
	if _, err := d.h.types.decode([]byte{0x92, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff}); err == nil {
		t.Error("attribute value claiming 4G elements decoded")
	}
}
