package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/cohort-cluster/cohort/internal/testlog"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

const testType = FirstUserType

func testConfig(t testing.TB, route string) Config {
	c := DefaultConfig()
	c.Route = route
	c.Addr = "127.0.0.1:0"
	c.SendTimeout = 10 * time.Second
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	return c
}

func newChannel(t testing.TB, c Config) *Channel {
	t.Helper()
	ch, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// mesh connects every channel to every other.
func mesh(chs ...*Channel) {
	for _, a := range chs {
		for _, b := range chs {
			if a != b {
				a.AddPeer(b.Route(), b.Addr().String())
			}
		}
	}
}

// inbox records what a channel's handler received.
type inbox struct {
	mu   sync.Mutex
	msgs []string
}

func (in *inbox) handler(fail string) Handler {
	return func(from string, body []byte) error {
		in.mu.Lock()
		in.msgs = append(in.msgs, from+":"+string(body))
		in.mu.Unlock()
		if string(body) == fail {
			return errors.New("refused " + fail)
		}
		return nil
	}
}

func (in *inbox) has(msg string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, m := range in.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSendModes(t *testing.T) {
	leaktest.Check(t)
	a, b, c := newChannel(t, testConfig(t, "a")), newChannel(t, testConfig(t, "b")), newChannel(t, testConfig(t, "c"))
	boxes := map[string]*inbox{"b": {}, "c": {}}
	b.Handle(testType, boxes["b"].handler("bad"))
	c.Handle(testType, boxes["c"].handler("bad"))
	mesh(a, b, c)
	ctx := context.Background()

	// Ack and Sync return only once the peers have the frame.
	if err := a.Send(ctx, nil, testType, []byte("ack-all"), Ack); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(ctx, []string{"b"}, testType, []byte("sync-b"), Sync); err != nil {
		t.Fatal(err)
	}
	if !boxes["b"].has("a:sync-b") || boxes["c"].has("a:sync-b") {
		t.Error("a sync send to b alone did not reach exactly b")
	}
	if err := a.Send(ctx, []string{"b", "c"}, testType, []byte("async-set"), Async); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "async frames", func() bool { return boxes["b"].has("a:async-set") && boxes["c"].has("a:async-set") })
	for _, r := range []string{"b", "c"} {
		if !boxes[r].has("a:ack-all") {
			t.Errorf("%s missed the ack-mode frame", r)
		}
	}
	// A handler's error comes back in Sync mode, naming the peer.
	err := a.Send(ctx, nil, testType, []byte("bad"), Sync)
	var pe *PeerError
	var re *RemoteError
	if !errors.As(err, &pe) || !errors.As(err, &re) {
		t.Fatalf("Sync send to failing handlers = %v, want PeerError and RemoteError", err)
	}
	if err := a.Send(ctx, []string{"nobody"}, testType, nil, Async); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("send to an unknown peer = %v", err)
	}
	st := a.Stats()
	if len(st.Peers) != 2 || st.Peers[0].FramesSent == 0 || st.Latency.Count == 0 {
		t.Errorf("stats %+v", st)
	}
	if bs := b.Stats(); bs.Peers[0].Route != "a" || bs.Peers[0].FramesReceived < 4 {
		t.Errorf("b's stats of a: %+v", bs.Peers[0])
	}
}

func TestOrderPerSender(t *testing.T) {
	leaktest.Check(t)
	a, b := newChannel(t, testConfig(t, "a")), newChannel(t, testConfig(t, "b"))
	var mu sync.Mutex
	last := map[int]int{}
	var bad atomic.Int64
	var got atomic.Int64
	b.Handle(testType, func(from string, body []byte) error {
		g, n := int(body[0]), int(binary.BigEndian.Uint32(body[1:]))
		mu.Lock()
		if prev, ok := last[g]; ok && n != prev+1 {
			bad.Add(1)
		}
		last[g] = n
		mu.Unlock()
		got.Add(1)
		return nil
	})
	mesh(a, b)
	const senders, each = 4, 500
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for n := range each {
				body := make([]byte, 5)
				body[0] = byte(g)
				binary.BigEndian.PutUint32(body[1:], uint32(n))
				mode := SendMode(n % 3) // async, ack and sync mixed
				if err := a.Send(context.Background(), nil, testType, body, mode); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "every frame", func() bool { return got.Load() == senders*each })
	if n := bad.Load(); n != 0 {
		t.Errorf("%d frames out of their sender's order", n)
	}
}

func TestWrongKeyAndDomain(t *testing.T) {
	leaktest.Check(t)
	key := bytes.Repeat([]byte{1}, 32)
	for _, tc := range []struct {
		name       string
		edit       func(*Config)
		dropReason string // counted by the receiver
	}{
		{"other key", func(c *Config) { c.Key = bytes.Repeat([]byte{2}, 32) }, ""},
		{"no key", func(c *Config) { c.Key = nil }, "auth"},
		{"other domain", func(c *Config) { c.Domain = "other" }, "domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := testConfig(t, "b")
			cb.Key = key
			b := newChannel(t, cb)
			var in inbox
			b.Handle(testType, in.handler(""))
			ca := testConfig(t, "a")
			ca.Key = key
			tc.edit(&ca)
			a := newChannel(t, ca)
			a.AddPeer("b", b.Addr().String())
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if err := a.Send(ctx, nil, testType, []byte("x"), Ack); err == nil {
				t.Fatal("send succeeded")
			}
			if tc.dropReason != "" {
				waitFor(t, tc.dropReason+" drop", func() bool { return b.Stats().Dropped[tc.dropReason] > 0 })
			}
			if len(in.msgs) != 0 {
				t.Errorf("handler ran for %q", in.msgs)
			}
		})
	}
}

// TestBadInputDropsOnlyThatConnection writes garbage to the listener and
// checks each connection is dropped and counted while a real peer goes on.
func TestBadInputDropsOnlyThatConnection(t *testing.T) {
	leaktest.Check(t)
	cb := testConfig(t, "b")
	cb.MaxFrameSize = 4096
	b := newChannel(t, cb)
	var in inbox
	b.Handle(testType, in.handler(""))
	a := newChannel(t, testConfig(t, "a"))
	mesh(a, b)

	helloFrame := func() []byte {
		h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "x", Nonce: randomNonce()})
		return appendFrame(nil, h)
	}
	env := func(e Envelope) []byte {
		bb, _ := EncodeEnvelope(&e)
		return appendFrame(nil, bb)
	}
	for _, tc := range []struct {
		name   string
		input  []byte
		reason string
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), "oversize"},
		{"oversized", binary.BigEndian.AppendUint32(nil, 1<<30), "oversize"},
		{"truncated", append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3), "truncated"},
		{"bad hello", appendFrame(nil, []byte{0xc1}), "garbage"},
		{"garbage after hello", append(helloFrame(), appendFrame(nil, []byte{0xc1, 0xc1})...), "garbage"},
		{"unknown version", append(helloFrame(), env(Envelope{Version: 9, Type: testType, From: "x", Domain: "cohort"})...), "version"},
		{"other domain", append(helloFrame(), env(Envelope{Version: ProtocolVersion, Type: testType, From: "x", Domain: "evil"})...), "domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.Stats().Dropped[tc.reason]
			conn, err := net.Dial("tcp", b.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, _ = conn.Write(tc.input)
			if tc.name == "truncated" {
				_ = conn.(*net.TCPConn).CloseWrite()
			}
			// The channel closes the connection: the read ends.
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.Copy(io.Discard, conn)
			waitFor(t, tc.reason+" counted", func() bool { return b.Stats().Dropped[tc.reason] > before })
		})
	}
	if err := a.Send(context.Background(), nil, testType, []byte("still here"), Sync); err != nil {
		t.Fatalf("a real peer after bad input: %v", err)
	}
	if in.has("x:") || !in.has("a:still here") {
		t.Errorf("handler saw %q", in.msgs)
	}
}

func TestQueueFullMarksResync(t *testing.T) {
	leaktest.Check(t)
	ca := testConfig(t, "a")
	ca.QueueSize = 2
	a := newChannel(t, ca)
	var resyncs atomic.Int64
	a.OnResync(func(string) { resyncs.Add(1) })
	// A peer that accepts but never answers the handshake: nothing leaves
	// the queue while the dial waits.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			held <- c
		}
	}()
	a.AddPeer("stuck", ln.Addr().String())
	var full int
	for range 5 {
		if err := a.Send(context.Background(), nil, testType, []byte("x"), Async); errors.Is(err, ErrQueueFull) {
			full++
		}
	}
	if full != 3 {
		t.Errorf("%d sends refused with a queue of 2, want 3", full)
	}
	if !a.NeedsResync("stuck") || resyncs.Load() != 0 {
		t.Errorf("resync flagged %v, %d callbacks; want true, 0 until the peer is back", a.NeedsResync("stuck"), resyncs.Load())
	}
	if q := a.Stats().Peers[0]; q.QueueFull != 3 || q.QueueDepth != 2 {
		t.Errorf("peer stats %+v", q)
	}
	a.ClearResync("stuck")
	if a.NeedsResync("stuck") {
		t.Error("ClearResync did not clear")
	}
	a.RemovePeer("stuck")
	ln.Close()
	select { // the dial, ended by RemovePeer, may or may not have connected
	case c := <-held:
		c.Close()
	default:
	}
}

// TestUnreachablePeerFailsFastAndResyncsOnReturn stops a peer: sends to it
// fail at once instead of waiting out the timeout, and when it is back at
// its address the higher layer is told to resync it.
func TestUnreachablePeerFailsFastAndResyncsOnReturn(t *testing.T) {
	leaktest.Check(t)
	a := newChannel(t, testConfig(t, "a"))
	resynced := make(chan string, 4)
	a.OnResync(func(r string) { resynced <- r })
	cb := testConfig(t, "b")
	b, err := New(cb)
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr().String()
	var in inbox
	b.Handle(testType, in.handler(""))
	a.AddPeer("b", addr)
	if err := a.Send(context.Background(), nil, testType, []byte("1"), Ack); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	// Within the send timeout (10s here), sends start failing with
	// ErrPeerDown or ErrConnLost rather than by timing out.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	waitFor(t, "fast failure", func() bool {
		err := a.Send(ctx, nil, testType, []byte("lost"), Ack)
		return errors.Is(err, ErrPeerDown)
	})
	if ctx.Err() != nil {
		t.Fatal("a send waited for its deadline")
	}
	if !a.NeedsResync("b") {
		t.Error("an unreachable peer is not marked for a resync")
	}
	cb.Addr = addr
	b2 := newChannel(t, cb)
	b2.Handle(testType, in.handler(""))
	select {
	case r := <-resynced:
		if r != "b" {
			t.Errorf("resync of %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resync callback when the peer came back")
	}
	a.ClearResync("b")
	waitFor(t, "sends to the returned peer", func() bool {
		return a.Send(context.Background(), nil, testType, []byte("2"), Sync) == nil
	})
	if err := a.Flush(context.Background()); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

func TestPeerKilledMidStream(t *testing.T) {
	leaktest.Check(t)
	a := newChannel(t, testConfig(t, "a"))
	cb := testConfig(t, "b")
	b, err := New(cb)
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	b.Handle(testType, func(string, []byte) error {
		if got.Add(1) == 100 {
			go b.Close() // the peer dies mid-stream
		}
		return nil
	})
	mesh(a, b)
	s, err := a.OpenStream("b", testType, 16)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var werr error
	for i := 0; i < 100000 && werr == nil; i++ {
		werr = s.Write(ctx, []byte(fmt.Sprint(i)))
	}
	cerr := s.Close(ctx)
	if werr == nil && cerr == nil {
		t.Fatal("stream to a dead peer reported no error")
	}
	if errors.Is(werr, context.DeadlineExceeded) || errors.Is(cerr, context.DeadlineExceeded) {
		t.Errorf("stream waited for its deadline instead of failing: %v, %v", werr, cerr)
	}
	_ = b.Close()
}

func TestStreamDeliversInOrder(t *testing.T) {
	leaktest.Check(t)
	a, b := newChannel(t, testConfig(t, "a")), newChannel(t, testConfig(t, "b"))
	var next atomic.Int64
	var bad atomic.Bool
	b.Handle(testType, func(_ string, body []byte) error {
		if int64(binary.BigEndian.Uint32(body)) != next.Add(1)-1 {
			bad.Store(true)
		}
		return nil
	})
	mesh(a, b)
	s, err := a.OpenStream("b", testType, 8)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 5000 {
		if err := s.Write(ctx, binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Close returns once every chunk was read; the last may still be in
	// its handler.
	waitFor(t, "every chunk handled", func() bool { return next.Load() == 5000 })
	if next.Load() != 5000 || bad.Load() {
		t.Errorf("received %d chunks, out of order: %v", next.Load(), bad.Load())
	}
}

// TestReplayIsRejected records an encrypted connection through a proxy and
// replays its bytes on a new connection: nothing is applied twice.
func TestReplayIsRejected(t *testing.T) {
	leaktest.Check(t)
	key := bytes.Repeat([]byte{7}, 32)
	cb := testConfig(t, "b")
	cb.Key = key
	b := newChannel(t, cb)
	var n atomic.Int64
	b.Handle(testType, func(string, []byte) error { n.Add(1); return nil })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var recorded bytes.Buffer
	var rmu sync.Mutex
	proxyDone := make(chan struct{})
	go func() {
		defer close(proxyDone)
		in, err := ln.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		out, err := net.Dial("tcp", b.Addr().String())
		if err != nil {
			return
		}
		defer out.Close()
		go func() { _, _ = io.Copy(in, out) }()
		buf := make([]byte, 4096)
		for {
			k, err := in.Read(buf)
			if k > 0 {
				rmu.Lock()
				recorded.Write(buf[:k])
				rmu.Unlock()
				_, _ = out.Write(buf[:k])
			}
			if err != nil {
				return
			}
		}
	}()
	ca := testConfig(t, "a")
	ca.Key = key
	a := newChannel(t, ca)
	a.AddPeer("b", ln.Addr().String())
	if err := a.Send(context.Background(), nil, testType, []byte("pay 100"), Sync); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 {
		t.Fatalf("applied %d times", n.Load())
	}
	rmu.Lock()
	replay := bytes.Clone(recorded.Bytes())
	rmu.Unlock()
	before := b.Stats().Dropped["auth"]
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write(replay)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.Copy(io.Discard, conn)
	conn.Close()
	waitFor(t, "auth drop", func() bool { return b.Stats().Dropped["auth"] > before })
	if n.Load() != 1 {
		t.Errorf("a replayed frame was applied: %d applications", n.Load())
	}
	_ = a.Close()
	ln.Close()
	<-proxyDone
}

// TestSendTimeouts: a peer whose handler does not return fails a Sync
// send after SendWithin's timeout, after Config.SendTimeout for a context
// without a deadline, and at the context's own deadline when it is the
// earlier one; a peer that answers in time is no error.
func TestSendTimeouts(t *testing.T) {
	leaktest.Check(t)
	release := make(chan struct{})
	cb := testConfig(t, "b")
	b := newChannel(t, cb)
	b.Handle(testType, func(from string, body []byte) error {
		if string(body) == "stall" {
			<-release
		}
		return nil
	})
	cc := testConfig(t, "c")
	c := newChannel(t, cc)
	c.Handle(testType, func(string, []byte) error { return nil })
	ca := testConfig(t, "a")
	ca.SendTimeout = 200 * time.Millisecond
	a := newChannel(t, ca)
	a.AddPeer("b", b.Addr().String())
	a.AddPeer("c", c.Addr().String())
	if err := a.SendWithin(context.Background(), 5*time.Second, nil, testType, []byte("ok"), Sync); err != nil {
		t.Fatalf("SendWithin to answering peers: %v", err)
	}
	late := func(what string, err error) {
		t.Helper()
		var pe *PeerError
		if !errors.As(err, &pe) || pe.Peer != "b" || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: err = %v, want b's DeadlineExceeded", what, err)
		}
		if strings.Contains(err.Error(), " c: ") {
			t.Fatalf("%s: c answered but is in the error: %v", what, err)
		}
		// b is stalled now: let it answer, so that the next send waits
		// for it again.
		release <- struct{}{}
		waitFor(t, "b to answer again", func() bool { return !peerStats(a, "b").Stalled })
	}
	late("SendWithin 100ms", a.SendWithin(context.Background(), 100*time.Millisecond, nil, testType, []byte("stall"), Sync))
	late("Send, no deadline", a.Send(context.Background(), nil, testType, []byte("stall"), Sync))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	late("SendWithin 1h, context 100ms", a.SendWithin(ctx, time.Hour, nil, testType, []byte("stall"), Sync))
}

// TestStalledPeerFailsFastUntilItAnswers checks that once a wait for a
// peer ends unanswered, later sends do not wait for it again (they would
// each wait the whole timeout while it hangs), that its frames still reach
// it in order, and that it is waited for again once it answers.
func TestStalledPeerFailsFastUntilItAnswers(t *testing.T) {
	leaktest.Check(t)
	release := make(chan struct{})
	var got inbox
	b := newChannel(t, testConfig(t, "b"))
	record := got.handler("")
	b.Handle(testType, func(from string, body []byte) error {
		if string(body) == "hang" {
			<-release
		}
		return record(from, body)
	})
	c := newChannel(t, testConfig(t, "c"))
	c.Handle(testType, func(string, []byte) error { return nil })
	ca := testConfig(t, "a")
	ca.SendTimeout = time.Hour // a send that waited for the stalled peer would hang the test
	var logs testlog.Buffer
	ca.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	a := newChannel(t, ca)
	a.AddPeer("b", b.Addr().String())
	a.AddPeer("c", c.Addr().String())

	err := a.SendWithin(context.Background(), 100*time.Millisecond, nil, testType, []byte("hang"), Sync)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send to the hung peer: err = %v, want DeadlineExceeded", err)
	}
	if st := peerStats(a, "b"); !st.Stalled || st.Stalls != 1 {
		t.Fatalf("b after the timeout: stalled %v, stalls %d; want true, 1", st.Stalled, st.Stalls)
	}
	for _, mode := range []SendMode{Ack, Sync} {
		err := a.Send(context.Background(), nil, testType, []byte("next-"+mode.String()), mode)
		var pe *PeerError
		if !errors.Is(err, ErrPeerStalled) || !errors.As(err, &pe) || pe.Peer != "b" {
			t.Fatalf("%v send while b is stalled: err = %v, want b's ErrPeerStalled", mode, err)
		}
		if strings.Contains(err.Error(), " c: ") {
			t.Fatalf("%v send: c answered but is in the error: %v", mode, err)
		}
	}
	if err := a.Flush(context.Background()); err != nil {
		t.Fatalf("Flush with b stalled: %v (it should skip b)", err)
	}
	if peerStats(a, "c").Stalled {
		t.Fatal("an answering peer is marked stalled")
	}

	close(release)
	waitFor(t, "b to answer again", func() bool { return !peerStats(a, "b").Stalled })
	for _, m := range []string{"a:hang", "a:next-ack", "a:next-sync"} {
		waitFor(t, "b to get "+m, func() bool { return got.has(m) })
	}
	got.mu.Lock()
	order := slices.Clone(got.msgs)
	got.mu.Unlock()
	if want := []string{"a:hang", "a:next-ack", "a:next-sync"}; !slices.Equal(order, want) {
		t.Fatalf("b got %v, want %v: frames to a stalled peer keep their order", order, want)
	}
	if err := a.Send(context.Background(), nil, testType, []byte("after"), Sync); err != nil {
		t.Fatalf("send once b answers again: %v", err)
	}
	if st := peerStats(a, "b"); st.Stalled || st.Stalls != 1 {
		t.Fatalf("b at the end: stalled %v, stalls %d; want false, 1", st.Stalled, st.Stalls)
	}
	out := logs.String()
	if n := strings.Count(out, "peer did not answer in time"); n != 1 {
		t.Errorf("stall logged %d times, want once per episode:\n%s", n, out)
	}
	if !strings.Contains(out, "stalled peer answers again") {
		t.Errorf("recovery not logged:\n%s", out)
	}
}

// peerStats returns ch's stats of the peer route.
func peerStats(ch *Channel, route string) PeerStats {
	for _, p := range ch.Stats().Peers {
		if p.Route == route {
			return p
		}
	}
	return PeerStats{}
}

// TestCloseAndRemoveEndWaitingSends checks that a send waiting on a peer,
// with no deadline that would end it, returns as soon as the peer is
// removed or the channel closes, including sends queued while it closes.
func TestCloseAndRemoveEndWaitingSends(t *testing.T) {
	leaktest.Check(t)
	release := make(chan struct{})
	defer close(release)
	b := newChannel(t, testConfig(t, "b"))
	reached := make(chan struct{}, 1)
	b.Handle(testType, func(string, []byte) error {
		select {
		case reached <- struct{}{}:
		default:
		}
		<-release
		return nil
	})
	ca := testConfig(t, "a")
	ca.SendTimeout = time.Hour
	a := newChannel(t, ca)

	a.AddPeer("b", b.Addr().String())
	sent := make(chan error, 1)
	go func() { sent <- a.Send(context.Background(), nil, testType, []byte("x"), Sync) }()
	<-reached // the frame reached b's handler
	a.RemovePeer("b")
	var pe *PeerError
	if err := <-sent; !errors.As(err, &pe) || pe.Peer != "b" || !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("send to a removed peer: err = %v, want b's ErrUnknownPeer", err)
	}

	// b still holds the first frame: the rest go to another stalled peer.
	c := newChannel(t, testConfig(t, "c"))
	c.Handle(testType, func(string, []byte) error {
		select {
		case reached <- struct{}{}:
		default:
		}
		<-release
		return nil
	})
	a.AddPeer("c", c.Addr().String())
	const senders = 50
	errs := make(chan error, senders)
	for range senders {
		go func() { errs <- a.Send(context.Background(), nil, testType, []byte("y"), Sync) }()
	}
	<-reached // a frame reached c's handler
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for range senders {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Fatalf("a send waiting on a stalled peer when the channel closed: err = %v, want ErrClosed", err)
		}
	}
}

// A send whose peer is removed while its frame is still queued (here the
// peer never finishes the handshake) fails as one to a peer the channel
// does not know, not as if the channel had closed.
func TestRemovePeerFailsQueuedSendsAsUnknown(t *testing.T) {
	leaktest.Check(t)
	addr := fakeListener(t)
	ca := testConfig(t, "a")
	ca.SendTimeout = time.Hour
	ca.DialTimeout = time.Hour
	a := newChannel(t, ca)
	a.AddPeer("b", addr)
	sent := make(chan error, 1)
	go func() { sent <- a.Send(context.Background(), nil, testType, []byte("x"), Sync) }()
	waitFor(t, "the frame queued", func() bool { return peerStats(a, "b").QueueDepth == 1 })
	a.RemovePeer("b")
	var pe *PeerError
	if err := <-sent; !errors.As(err, &pe) || pe.Peer != "b" || !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("send queued to a removed peer: err = %v, want b's ErrUnknownPeer", err)
	}
}

// fakeListener accepts connections and holds them, never answering.
func fakeListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	return ln.Addr().String()
}

// A peer added while the channel closes is either closed with it or never
// started: no peer goroutine outlives Close.
func TestAddPeerDuringCloseLeavesNoPeer(t *testing.T) {
	leaktest.Check(t)
	for i := range 200 {
		ch, err := New(testConfig(t, "a"))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for j := range 20 {
					ch.AddPeer(fmt.Sprint("p", g, "-", j), "127.0.0.1:1")
				}
			})
		}
		_ = ch.Close()
		wg.Wait()
		if ps := ch.Peers(); len(ps) > 0 {
			t.Fatalf("round %d: peers %v added after Close returned", i, ps)
		}
	}
}

// A stranger without the cluster key that says hello under a peer's route
// does not cut that peer's connection: a connection takes over a sender's
// older one only at its first frame, which proves the key.
func TestStrangerHelloDoesNotCutPeerOff(t *testing.T) {
	leaktest.Check(t)
	key := bytes.Repeat([]byte{7}, 32)
	ca, cb := testConfig(t, "a"), testConfig(t, "b")
	ca.Key, cb.Key = key, key
	a, b := newChannel(t, ca), newChannel(t, cb)
	b.Handle(testType, func(string, []byte) error { return nil })
	mesh(a, b)
	if err := a.Send(context.Background(), nil, testType, []byte("warm"), Sync); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		conn, err := net.Dial("tcp", b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "a", Nonce: randomNonce()})
		_, _ = conn.Write(appendFrame(nil, h))
		if _, err := readFrame(conn, nil, 4096); err != nil { // b's hello: the handshake is done
			t.Fatal(err)
		}
		// The stranger holds its connection open while a sends.
		for range 20 {
			if err := a.Send(context.Background(), nil, testType, []byte("x"), Sync); err != nil {
				t.Fatalf("a's send failed while a stranger said hello as a: %v", err)
			}
		}
		_, _ = conn.Write([]byte{0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}) // not sealed with the key
		_ = conn.Close()
	}
	if st := a.Stats().Peers[0]; st.Errors != 0 || a.NeedsResync("b") {
		t.Errorf("a's connection to b: %d errors, needs resync %v; want none", st.Errors, a.NeedsResync("b"))
	}
}

// A stranger's hello, which anyone can send, leaves nothing behind: the
// receive counters of a sender are made at its first good frame, so
// hellos under ever new routes do not grow the channel's memory.
func TestStrangerHellosLeaveNoCounters(t *testing.T) {
	leaktest.Check(t)
	cfg := testConfig(t, "b")
	cfg.Key = bytes.Repeat([]byte{7}, 32)
	b := newChannel(t, cfg)
	for i := range 20 {
		conn, err := net.Dial("tcp", b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: fmt.Sprint("stranger", i), Nonce: randomNonce()})
		_, _ = conn.Write(appendFrame(nil, h))
		if _, err := readFrame(conn, nil, 4096); err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte{0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}) // not sealed with the key
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(io.Discard, conn)
		_ = conn.Close()
	}
	waitFor(t, "the strangers dropped", func() bool { return b.Stats().Dropped["auth"] == 20 })
	b.mu.Lock()
	n := len(b.recv)
	b.mu.Unlock()
	if n != 0 {
		t.Errorf("%d senders' counters after 20 strangers' hellos, want 0", n)
	}
}

// A sender that claims a frame of nearly MaxFrameSize and then sends
// nothing costs the receiver no more than the bytes it sent: the buffer
// grows as the frame arrives.
func TestClaimedLengthCostsOnlyWhatArrives(t *testing.T) {
	leaktest.Check(t)
	cfg := testConfig(t, "b")
	cfg.Key = bytes.Repeat([]byte{7}, 32)
	b := newChannel(t, cfg)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const conns = 32
	for i := range conns {
		conn, err := net.Dial("tcp", b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: fmt.Sprint("stranger", i), Nonce: randomNonce()})
		_, _ = conn.Write(appendFrame(nil, h))
		if _, err := readFrame(conn, nil, 4096); err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(binary.BigEndian.AppendUint32(nil, uint32(cfg.MaxFrameSize)))
		_, _ = conn.Write(make([]byte, 1000))
	}
	// Wait until every connection is past its handshake and reading the
	// claimed frame.
	deadline := time.Now().Add(10 * time.Second)
	for b.inboundCount() < conns && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 32<<20 {
		t.Errorf("%d connections claiming %d-byte frames and sending 1000 bytes hold %d MiB", conns, cfg.MaxFrameSize, grown>>20)
	}
}

// inboundCount is how many inbound connections c is serving.
func (c *Channel) inboundCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.inbound)
}

// A peer whose queue overflows while it stays connected is resynchronised
// once the queue has drained: no reconnection comes to do it.
func TestQueueOverflowWhileConnectedResyncs(t *testing.T) {
	leaktest.Check(t)
	ca := testConfig(t, "a")
	ca.QueueSize = 1
	a := newChannel(t, ca)
	resynced := make(chan string, 16)
	a.OnResync(func(route string) {
		a.ClearResync(route)
		resynced <- route
	})
	b := newChannel(t, testConfig(t, "b"))
	b.Handle(testType, func(string, []byte) error { return nil })
	a.AddPeer("b", b.Addr().String())
	if err := a.Send(context.Background(), nil, testType, []byte("warm"), Sync); err != nil {
		t.Fatal(err)
	}
	full := 0
	body := make([]byte, 1024)
	for i := 0; full == 0; i++ {
		if i == 1_000_000 {
			t.Fatal("a queue of 1 never overflowed")
		}
		if err := a.Send(context.Background(), nil, testType, body, Async); errors.Is(err, ErrQueueFull) {
			full++
		}
	}
	select {
	case r := <-resynced:
		if r != "b" {
			t.Errorf("resync of %q, want b", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("b missed frames (queue full) and was not resynchronised; connected %v", a.Stats().Peers[0].Connected)
	}
	if a.NeedsResync("b") {
		t.Error("b still needs a resync after it was resynchronised")
	}
}

// A frame of a type with no handler is dropped. While the channel starts
// (its node's components still registering) that is expected: logged at
// debug and not counted; later it is counted and logged at warn.
func TestNoHandler(t *testing.T) {
	leaktest.Check(t)
	var log testlog.Buffer
	cfg := testConfig(t, "b")
	cfg.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, b := newChannel(t, testConfig(t, "a")), newChannel(t, cfg)
	mesh(a, b)
	send := func() {
		t.Helper()
		if err := a.Send(context.Background(), nil, testType, []byte("x"), Ack); err != nil {
			t.Fatal(err)
		}
		if err := a.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	send() // Flush returns once b has handled the frame before its no-op
	if s := log.String(); !strings.Contains(s, "level=DEBUG msg=\"no handler yet") || strings.Contains(s, "level=WARN") {
		t.Errorf("while starting, log = %s; want the drop at debug only", s)
	}
	if n := b.Stats().Dropped["no_handler"]; n != 0 {
		t.Errorf("while starting, %d drops counted, want 0", n)
	}
	b.started.Add(-int64(handlerGrace))
	send()
	waitFor(t, "the drop", func() bool { return b.Stats().Dropped["no_handler"] == 1 })
	if s := log.String(); !strings.Contains(s, "level=WARN msg=\"no handler for message type") {
		t.Errorf("after starting, log = %s; want the drop at warn", s)
	}
}

// A frame's length travels in 32 bits: a MaxFrameSize that does not fit
// there (with the sealing's overhead) is refused, rather than sending
// lengths that wrap and a receiver that checks none.
func TestMaxFrameSizeFitsTheLengthPrefix(t *testing.T) {
	cfg := testConfig(t, "a")
	size := int64(1) << 32
	cfg.MaxFrameSize = int(size)
	ch, err := New(cfg)
	if err == nil {
		ch.Close()
	}
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "MaxFrameSize" {
		t.Fatalf("New with a 4 GiB MaxFrameSize = %v, want a ConfigError of MaxFrameSize", err)
	}
}

// A connection whose read deadline passes in the middle of a frame (here
// a hello of which only a few bytes came before the handshake's bound)
// is counted under timeout: the bytes that came were not bad input.
func TestDeadlineInAFrameCountsAsTimeout(t *testing.T) {
	leaktest.Check(t)
	cfg := testConfig(t, "b")
	cfg.DialTimeout = 500 * time.Millisecond
	b := newChannel(t, cfg)
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write(append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3)) // then nothing
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.Copy(io.Discard, conn) // until b drops it
	waitFor(t, "timeout counted", func() bool { return b.Stats().Dropped["timeout"] == 1 })
	if d := b.Stats().Dropped; d["garbage"] != 0 || d["truncated"] != 0 || d["io"] != 0 {
		t.Errorf("a frame cut short by the deadline also counted as bad input: %v", d)
	}
}

// A sender that stops reading its acks has its connection dropped once
// the receiver's write timeout passes, and the drop is counted (under
// timeout) and logged at warn, as every other drop is.
func TestUnwritableAcksAreCountedAndLogged(t *testing.T) {
	leaktest.Check(t)
	var logs testlog.Buffer
	cfg := testConfig(t, "b")
	cfg.WriteTimeout = 500 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := newChannel(t, cfg)
	b.Handle(testType, func(string, []byte) error { return nil })
	// A pipe has no buffer: an ack nobody reads cannot be written.
	client, server := net.Pipe()
	defer client.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.serve(server)
	}()
	h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "x", Nonce: randomNonce()})
	_ = client.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := client.Write(appendFrame(nil, h)); err != nil {
		t.Fatal(err)
	}
	if _, err := readFrame(client, nil, 4096); err != nil {
		t.Fatal(err)
	}
	e := Envelope{Version: ProtocolVersion, Type: testType, From: "x", Domain: "cohort", Seq: 1, Mode: Ack}
	if _, err := client.Write(appendFrame(nil, appendEnvelope(nil, &e))); err != nil {
		t.Fatal(err)
	}
	select { // and never reads the ack
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the receiver still waits to write an ack nobody reads")
	}
	if n := b.Stats().Dropped["timeout"]; n != 1 {
		t.Errorf("%d connections dropped under timeout, want 1", n)
	}
	if !strings.Contains(logs.String(), "dropping replication connection") {
		t.Errorf("no warning of the dropped connection; log:\n%s", logs.String())
	}
}

// A stranger that says hello, which anyone can, and then sends no good
// frame is dropped once DialTimeout has passed after the answer (counted
// under timeout), instead of holding its connection for ever.
func TestSilentStrangerIsDropped(t *testing.T) {
	leaktest.Check(t)
	cfg := testConfig(t, "b")
	cfg.Key = bytes.Repeat([]byte{7}, 32)
	cfg.DialTimeout = time.Second
	b := newChannel(t, cfg)
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h, _ := encodeHello(&hello{Version: ProtocolVersion, Domain: "cohort", Route: "a", Nonce: randomNonce()})
	_, _ = conn.Write(appendFrame(nil, h))
	if _, err := readFrame(conn, nil, 4096); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil { // nil at EOF: b closed it
		t.Fatalf("the stranger's connection after its hello: %v, want it closed by b", err)
	}
	waitFor(t, "timeout counted", func() bool { return b.Stats().Dropped["timeout"] == 1 })
}

// A peer with nothing to send keeps its connection, silent, long after
// the bound on a connection's first frame: it sends a no-op at once,
// which with a key proves it holds it, and is a sender from then on.
func TestIdlePeerKeepsItsConnection(t *testing.T) {
	leaktest.Check(t)
	key := bytes.Repeat([]byte{7}, 32)
	ca, cb := testConfig(t, "a"), testConfig(t, "b")
	ca.Key, cb.Key = key, key
	ca.DialTimeout, cb.DialTimeout = time.Second, time.Second
	a, b := newChannel(t, ca), newChannel(t, cb)
	b.Handle(testType, func(string, []byte) error { return nil })
	a.AddPeer("b", b.Addr().String())
	waitFor(t, "a a sender of b's", func() bool { return slices.Contains(b.Senders(), "a") })
	time.Sleep(3 * cb.DialTimeout) // a sends nothing
	if err := a.Send(context.Background(), nil, testType, []byte("x"), Sync); err != nil {
		t.Fatal(err)
	}
	if st := peerStats(a, "b"); st.Errors != 0 || b.Stats().Dropped["timeout"] != 0 {
		t.Errorf("a's idle connection to b: %d errors, %d dropped under timeout; want none", st.Errors, b.Stats().Dropped["timeout"])
	}
}
