package replication

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mathrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Errors returned by Channel methods.
var (
	ErrClosed      = errors.New("replication: channel closed")
	ErrQueueFull   = errors.New("replication: peer queue full")
	ErrUnknownPeer = errors.New("replication: unknown peer")
	ErrConnLost    = errors.New("replication: connection lost before the peer answered")
	ErrNoHandler   = errors.New("replication: no handler for message type")
	ErrPeerDown    = errors.New("replication: peer unreachable")
	// ErrPeerStalled fails at once an Ack or Sync send to a peer that let
	// an earlier one time out (its SendWithin timeout, or a context
	// deadline at least Config.SendTimeout away) and has not answered
	// since: the frame is
	// still queued to it, in order, but nobody waits for its answer. The
	// peer stops being stalled when any answer of its comes in, or when a
	// connection to it is made again.
	ErrPeerStalled = errors.New("replication: peer stalled: it did not answer an earlier send in time")
)

// PeerError is the failure of one peer in a Send.
type PeerError struct {
	Peer string
	Op   string // "queue", "ack", "apply"
	Err  error
}

func (e *PeerError) Error() string {
	return "replication: " + e.Op + " " + e.Peer + ": " + e.Err.Error()
}

func (e *PeerError) Unwrap() error { return e.Err }

// Handler handles one message from peer from. The channel calls the
// handlers of one sender one at a time, in send order, on that sender's
// connection goroutine: a handler that blocks holds back that sender's
// later messages (and nobody else's). body is valid only during the call.
// In Sync mode the handler's error goes back to the sender.
type Handler func(from string, body []byte) error

// Channel is this node's end of the replication channel: one persistent
// outbound TCP connection per peer for its sends, and the inbound
// connections of the peers for theirs. It is safe for concurrent use.
type Channel struct {
	cfg  Config
	log  *slog.Logger
	ln   net.Listener
	stop chan struct{}
	wg   sync.WaitGroup

	closed    atomic.Bool
	closeOnce sync.Once

	hmu      sync.RWMutex
	handlers map[MsgType]Handler

	mu       sync.Mutex
	peers    map[string]*peer
	inbound  map[net.Conn]struct{}
	bySender map[string]*inConn       // the connection each sender's frames come in on
	recv     map[string]*recvCounters // by sender route

	drops     dropCounters
	types     typeCounters
	lastWarn  sync.Map // reason -> *atomic.Int64 (Unix nanos of the last warning)
	onResync  func(route string)
	histogram *histogram
	started   atomic.Int64 // Unix ns when New returned: see handlerGrace
}

// New validates cfg, listens on cfg.Addr and starts accepting peers.
func New(cfg Config) (*Channel, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Key = slices.Clone(cfg.Key)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("replication: listen on %s: %w", cfg.Addr, err)
	}
	c := &Channel{
		cfg: cfg, log: logger.With("component", "replication", "route", cfg.Route), ln: ln,
		stop: make(chan struct{}), handlers: make(map[MsgType]Handler),
		peers: make(map[string]*peer), inbound: make(map[net.Conn]struct{}), bySender: make(map[string]*inConn),
		recv:      make(map[string]*recvCounters),
		histogram: newHistogram(),
	}
	c.started.Store(time.Now().UnixNano())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.acceptLoop()
	}()
	return c, nil
}

// Addr returns the address the channel listens on.
func (c *Channel) Addr() net.Addr { return c.ln.Addr() }

// Route returns this node's route.
func (c *Channel) Route() string { return c.cfg.Route }

// Handle registers the handler of message type t, replacing any earlier
// one. t must be at least FirstUserType.
func (c *Channel) Handle(t MsgType, h Handler) {
	if t < FirstUserType {
		panic(fmt.Sprintf("replication: message type %d is reserved", t))
	}
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.handlers[t] = h
}

// OnResync registers f to be called when a peer that may have missed
// frames (its queue overflowed, it was unreachable, its connection broke
// with frames in flight, or a frame nobody waited for was too large to
// send) is connected again, or, when it missed them while it stayed
// connected, once its queue has drained. The higher layer
// then sends that peer a full state and calls ClearResync. f runs on the
// peer's writer goroutine and must not block.
func (c *Channel) OnResync(f func(route string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onResync = f
}

// AddPeer starts connecting to peer route at addr and keeps the
// connection up, reconnecting with backoff, until RemovePeer. Adding a
// known peer at a new address replaces its connection.
func (c *Channel) AddPeer(route, addr string) {
	if route == c.cfg.Route {
		return
	}
	c.mu.Lock()
	if c.closed.Load() {
		// Checked under mu, which Close takes after setting closed: a
		// peer added here is one Close finds, and closes, and waits for.
		c.mu.Unlock()
		return
	}
	old := c.peers[route]
	if old != nil && old.addr == addr {
		c.mu.Unlock()
		// Known: membership saw it (again), so if it is unreachable, it
		// may be back; try now rather than at the end of the backoff.
		select {
		case old.kick <- struct{}{}:
		default:
		}
		return
	}
	p := newPeer(c, route, addr)
	c.peers[route] = p
	c.wg.Add(1) // before Close can reach its Wait
	c.mu.Unlock()
	if old != nil {
		old.close()
	}
	go func() {
		defer c.wg.Done()
		p.run()
	}()
	c.log.Info("replication peer added", "peer", route, "addr", addr)
}

// RemovePeer closes the connection to route and fails its waiting sends
// with ErrUnknownPeer, as a send to it from now on fails.
func (c *Channel) RemovePeer(route string) {
	c.mu.Lock()
	p := c.peers[route]
	delete(c.peers, route)
	c.mu.Unlock()
	if p != nil {
		p.close()
		c.log.Info("replication peer removed", "peer", route)
	}
}

// Senders returns the routes of the peers whose own connections to this
// node are up: the peers this node can receive changes from.
func (c *Channel) Senders() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.bySender))
}

// Peers returns the routes of the peers, sorted.
func (c *Channel) Peers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.peers))
}

// Send sends body as a message of type t to the peers named in to, or to
// every peer when to is nil (an empty, non-nil to sends to no one). In
// Async mode it returns once the frames are queued; in Ack mode when every
// peer's receiver has read its frame; in Sync mode when every peer's
// handler has returned. Waits end at ctx's deadline, or after
// Config.SendTimeout when ctx has none. A peer whose queue is full fails at
// once with ErrQueueFull and is marked for a resync; a slow peer never
// delays the others' queueing. A peer that lets the send timeout pass
// unanswered is stalled: later sends queue its frames but fail it at once
// with ErrPeerStalled instead of waiting for it again, until it answers.
// The error joins a *PeerError per failed peer. body must never be
// modified: a frame whose wait ended (a timeout, a stalled peer) is still
// queued, and written later.
func (c *Channel) Send(ctx context.Context, to []string, t MsgType, body []byte, mode SendMode) error {
	return c.SendQueued(ctx, 0, to, t, body, mode, nil)
}

// SendWithin is Send whose waits end at ctx's deadline or after timeout,
// whichever comes first. It costs a request path less than a context with
// a timeout of its own.
func (c *Channel) SendWithin(ctx context.Context, timeout time.Duration, to []string, t MsgType, body []byte, mode SendMode) error {
	return c.SendQueued(ctx, timeout, to, t, body, mode, nil)
}

// SendQueued is SendWithin that calls queued once body's frames are in
// their peers' queues (or have failed to get there), before it waits for
// any answer, exactly once, on every path. Frames queued to a peer go out
// in queue order, so a caller that holds a lock until queued runs orders
// its sends without holding the lock through their round trips.
func (c *Channel) SendQueued(ctx context.Context, timeout time.Duration, to []string, t MsgType, body []byte, mode SendMode, queued func()) error {
	if timeout <= 0 {
		// ctx's deadline alone bounds the wait; without one, the default.
		timeout = 0
		if _, ok := ctx.Deadline(); !ok {
			timeout = c.cfg.SendTimeout
		}
	}
	return c.send(ctx, timeout, to, t, body, mode, queued)
}

// alarms holds stopped alarms for senders' timeouts: a send with a
// timeout is every ack-mode write, and an alarm is three allocations.
var alarms sync.Pool

// alarm wakes a sender that waits on its answers once its timeout passes:
// the sender then waits on one channel, not on a select of several.
type alarm struct {
	t     *time.Timer
	group atomic.Pointer[answers]
}

func getAlarm(g *answers, d time.Duration) *alarm {
	if a, ok := alarms.Get().(*alarm); ok {
		a.group.Store(g)
		a.t.Reset(d)
		return a
	}
	a := &alarm{}
	a.group.Store(g)
	a.t = time.AfterFunc(d, a.ring)
	return a
}

func (a *alarm) ring() {
	if g := a.group.Load(); g != nil {
		g.signal()
	}
}

// stop reports whether the alarm rang. One that did not is reused; one
// that did may still be ringing, so it is left to the collector.
func (a *alarm) stop() (rang bool) {
	if !a.t.Stop() {
		return true
	}
	a.group.Store(nil)
	alarms.Put(a)
	return false
}

// send waits until ctx is done, or timeout has passed unless it is 0.
func (c *Channel) send(ctx context.Context, timeout time.Duration, to []string, t MsgType, body []byte, mode SendMode, queued func()) error {
	if c.closed.Load() {
		if queued != nil {
			queued()
		}
		return ErrClosed
	}
	var small [8]*peer // a cluster's peers, most often: no allocation
	targets := small[:0]
	var errs []error
	c.mu.Lock()
	if to == nil {
		for _, p := range c.peers {
			targets = append(targets, p)
		}
	} else {
		for _, r := range to {
			if p, ok := c.peers[r]; ok {
				targets = append(targets, p)
			} else {
				errs = append(errs, &PeerError{Peer: r, Op: "queue", Err: ErrUnknownPeer})
			}
		}
	}
	c.mu.Unlock()

	all := make([]outFrame, len(targets)) // one allocation for every peer's frame
	var group *answers                    // and one for their outcomes
	if mode != Async {
		// One more than the frames, settled once they are all queued: a
		// frame answered meanwhile cannot signal the group early.
		group = newAnswers(len(targets) + 1)
	}
	op := "ack"
	if mode == Sync {
		op = "apply"
	}
	failed := 0
	now := time.Now()
	for i, p := range targets {
		f := &all[i]
		*f = outFrame{typ: t, mode: mode, body: body, queued: now, group: group}
		stalled := group != nil && p.stalled.Load()
		if stalled {
			// Queued in order, and answered, but not waited for: a hung
			// peer must not hold every request for the whole timeout
			// until membership declares it failed.
			f.group = nil
		}
		if err := p.enqueue(f); err != nil {
			f.group = nil // never queued: nobody answers it
			failed++
			errs = append(errs, &PeerError{Peer: p.route, Op: "queue", Err: err})
		} else if stalled {
			failed++
			errs = append(errs, &PeerError{Peer: p.route, Op: op, Err: ErrPeerStalled})
		}
	}
	if queued != nil {
		queued()
	}
	if group == nil || failed == len(targets) {
		return errors.Join(errs...)
	}
	var ring *alarm // signals the group when the timeout passes
	if timeout > 0 {
		ring = getAlarm(group, timeout)
	}
	group.settle(failed + 1)
	// Every queued frame is answered or failed, even when the channel
	// closes (see enqueue): without a context that can end, waiting on
	// the group alone is enough.
	var gaveUp error // why the frames still unanswered failed
	if done := ctx.Done(); done == nil {
		<-group.all
	} else {
		select {
		case <-group.all:
		case <-done:
			gaveUp = ctx.Err()
		}
	}
	rang := ring != nil && ring.stop()
	if rang && gaveUp == nil {
		gaveUp = context.DeadlineExceeded
	}
	// A peer that let the send timeout pass unanswered hangs; one that
	// only missed a caller's shorter deadline may just be slower than
	// that caller's patience.
	hung := rang || errors.Is(gaveUp, context.DeadlineExceeded) && time.Since(now) >= c.cfg.SendTimeout
	for i := range all {
		f := &all[i]
		switch {
		case f.group == nil:
		case f.done.Load(): // an answer in counts, even past a deadline
			if f.err != nil {
				errs = append(errs, &PeerError{Peer: f.peer.route, Op: op, Err: f.err})
			}
		default:
			seen := f.peer.answers.Load()
			f.peer.forget(f)
			if hung {
				f.peer.stall(f, seen, time.Since(now))
			}
			errs = append(errs, &PeerError{Peer: f.peer.route, Op: op, Err: gaveUp})
		}
	}
	return errors.Join(errs...)
}

// Flush returns once every frame queued so far has been read by its peer,
// or ctx is done: it sends each connected peer an acknowledged no-op,
// which, frames being ordered, is read after everything before it. Peers
// that are unreachable or stalled are skipped; their frames may be lost.
// Without a deadline in ctx, Config.SendTimeout bounds the wait. A
// graceful shutdown flushes before leaving.
func (c *Channel) Flush(ctx context.Context) error {
	c.mu.Lock()
	var to []string
	for r, p := range c.peers {
		if p.connected.Load() && !p.stalled.Load() {
			to = append(to, r)
		}
	}
	c.mu.Unlock()
	if len(to) == 0 {
		return nil
	}
	return c.Send(ctx, to, typeNoop, nil, Ack)
}

// NeedsResync reports whether route may have missed frames since the last
// ClearResync.
func (c *Channel) NeedsResync(route string) bool {
	c.mu.Lock()
	p := c.peers[route]
	c.mu.Unlock()
	return p != nil && p.resync.Load()
}

// ClearResync records that route has been sent a full state.
func (c *Channel) ClearResync(route string) {
	c.mu.Lock()
	p := c.peers[route]
	c.mu.Unlock()
	if p != nil {
		p.resync.Store(false)
	}
}

// Close stops accepting, closes every connection, fails waiting sends with
// ErrClosed and waits for every goroutine. It is idempotent.
func (c *Channel) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		close(c.stop)
		_ = c.ln.Close()
		c.mu.Lock()
		peers := c.peers
		c.peers = map[string]*peer{}
		for conn := range c.inbound {
			_ = conn.Close()
		}
		c.mu.Unlock()
		for _, p := range peers {
			p.close()
		}
		c.wg.Wait()
	})
	return nil
}

// acceptLoop accepts inbound connections until the listener closes,
// backing off 5ms to 1s on temporary errors.
func (c *Channel) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if c.closed.Load() {
				return
			}
			c.warn("accept", "accept failed", "err", err)
			select {
			case <-c.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			_ = conn.Close()
			return
		}
		c.inbound[conn] = struct{}{}
		c.mu.Unlock()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.serve(conn)
			c.mu.Lock()
			delete(c.inbound, conn)
			c.mu.Unlock()
		}()
	}
}

// serve runs one inbound connection: the handshake, then each frame in
// order: ack it if asked, hand it to its handler, reply if asked. Bad
// input closes the connection and is counted; a panic in a handler is
// recovered, counted and logged, and closes the connection too.
func (c *Channel) serve(conn net.Conn) {
	defer conn.Close()
	from := "?"
	defer func() {
		if r := recover(); r != nil {
			c.drops.add(dropPanic)
			c.log.Error("panic serving a peer; connection dropped", "peer", from, "panic", r)
		}
	}()
	br := bufio.NewReaderSize(conn, 64<<10)
	bw := bufio.NewWriterSize(conn, 16<<10)
	// The hello must come within DialTimeout, and the first frame (a
	// peer sends a no-op at once; with a key, it proves the sender holds
	// it) within DialTimeout of the answer: a stranger, who can send a
	// hello but no good frame, holds a connection no longer. Once a good
	// frame is in, the connection has no read deadline: a peer with
	// nothing to send stays silent as long as it likes.
	_ = conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout))
	h, open, seal, err := c.serverHandshake(br, bw)
	if err != nil {
		c.refuse(conn, from, err)
		return
	}
	_ = conn.SetWriteDeadline(time.Time{})
	_ = conn.SetReadDeadline(time.Now().Add(c.cfg.DialTimeout))
	from = h.Route
	me := &inConn{conn: conn, done: make(chan struct{})}
	defer close(me.done)
	registered := false
	defer func() {
		if !registered {
			return
		}
		c.mu.Lock()
		if c.bySender[from] == me {
			delete(c.bySender, from)
		}
		c.mu.Unlock()
	}()
	var rc *recvCounters // made at the first good frame: see takeOver below
	var buf, out []byte
	answer := func(b []byte) {
		if len(b) > bw.Available() {
			// The buffer flushes to the connection: the timeout bounds
			// this write, not the time since the last flush.
			_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
		}
		_, _ = bw.Write(b) // an error sticks, and the next Flush returns it
	}
	overhead := 64
	for {
		payload, err := readFrame(br, buf, c.cfg.MaxFrameSize+overhead)
		if err != nil {
			if !isClosedErr(err) {
				c.refuse(conn, from, err)
			}
			return
		}
		buf = payload[:cap(payload)]
		frameLen := len(payload)
		if open != nil {
			if payload, err = open.open(payload); err != nil {
				c.refuse(conn, from, err)
				return
			}
		}
		env, err := parseEnvelope(payload)
		if err == nil && string(env.Domain) != c.cfg.Domain {
			err = fmt.Errorf("%w: %q", ErrDomain, env.Domain)
		}
		if err == nil && string(env.From) != from {
			err = fmt.Errorf("%w: frame from %q on %q's connection", ErrMalformed, env.From, from)
		}
		if err != nil {
			c.refuse(conn, from, err)
			return
		}
		if !registered {
			// One sender's frames are handled one at a time, in order: a
			// reconnecting sender's new connection takes over once the
			// old one, possibly half-open, is closed and done. It does so
			// at its first good frame, which with a key proves that it
			// holds it, not at its hello, which anyone can send: a
			// stranger naming a peer's route must not cut that peer off.
			_ = conn.SetReadDeadline(time.Time{})
			c.takeOver(from, me)
			registered = true
			rc = c.recvCounters(from)
		}
		rc.frames.Add(1)
		rc.bytes.Add(int64(frameLen + frameHeader))
		tc := &c.types[c.types.of(env.Type)]
		tc.framesRecv.Add(1)
		tc.bytesRecv.Add(int64(frameLen + frameHeader))
		if env.Mode == Ack {
			out = c.appendControl(out[:0], typeAck, env.Seq, nil, seal)
			answer(out)
			// The ack says the frame was read: when no more frames are
			// waiting, send it now rather than after the handler.
			if br.Buffered() == 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
				if err := bw.Flush(); err != nil {
					c.writeFailed(conn, from, err)
					return
				}
			}
		}
		herr := c.dispatch(from, &env)
		if env.Mode == Sync {
			var msg []byte
			if herr != nil {
				msg = replyText(herr)
			}
			out = c.appendControl(out[:0], typeReply, env.Seq, msg, seal)
			answer(out)
		}
		if br.Buffered() == 0 && bw.Buffered() > 0 {
			_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
			if err := bw.Flush(); err != nil {
				c.writeFailed(conn, from, err)
				return
			}
		}
	}
}

// maxReplyError bounds the handler's error text a reply carries: a reply
// over the sender's frame limit (1 KiB at the least) would drop the
// connection and fail the send as lost.
const maxReplyError = 512

// replyText is the body of the reply to a frame whose handler failed
// with err: its text, never empty (an empty body says the handler
// succeeded), cut to maxReplyError bytes at a character boundary.
func replyText(err error) []byte {
	s := err.Error()
	if s == "" {
		s = fmt.Sprintf("%T with no message", err)
	}
	if len(s) > maxReplyError {
		n := maxReplyError - len("…")
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return []byte(s)
}

// takeOver makes me the connection of sender from, closing and waiting
// for the one it replaces.
func (c *Channel) takeOver(from string, me *inConn) {
	c.mu.Lock()
	old := c.bySender[from]
	c.bySender[from] = me
	c.mu.Unlock()
	if old != nil {
		_ = old.conn.Close()
		<-old.done
	}
}

// inConn is an inbound connection being served.
type inConn struct {
	conn net.Conn
	done chan struct{} // closed when its serve returns
}

// dispatch calls the handler of env's type.
func (c *Channel) dispatch(from string, env *envelopeView) error {
	if env.Type == typeNoop {
		return nil
	}
	c.hmu.RLock()
	h := c.handlers[env.Type]
	c.hmu.RUnlock()
	if h == nil {
		if time.Now().UnixNano()-c.started.Load() < int64(handlerGrace) {
			// Peers reach a starting node before all of its components
			// have registered (a WebSocket hub starts after its cluster):
			// expected, not counted, and each component catches up when
			// it starts.
			c.log.Debug("no handler yet for message type; frame dropped", "peer", from, "type", env.Type)
		} else {
			c.drops.add(dropNoHandler)
			c.warn("nohandler", "no handler for message type; frame dropped", "peer", from, "type", env.Type)
		}
		return fmt.Errorf("%w %d", ErrNoHandler, env.Type)
	}
	err := h(from, env.Body)
	if err != nil {
		c.log.Debug("handler failed", "peer", from, "type", env.Type, "err", err)
	}
	return err
}

// handlerGrace is how long after New a frame of a type with no handler is
// logged at debug rather than warn: the components of a node register
// their handlers while it starts, after peers may have connected.
const handlerGrace = 10 * time.Second

// appendControl appends a framed ack or reply to dst.
func (c *Channel) appendControl(dst []byte, t MsgType, seq uint64, body []byte, seal *sealer) []byte {
	env := Envelope{Version: ProtocolVersion, Type: t, From: c.cfg.Route, Domain: c.cfg.Domain, Seq: seq, Body: body}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0) // the length, set below
	if seal == nil {
		dst = appendEnvelope(dst, &env)
	} else {
		dst = seal.seal(dst, appendEnvelope(nil, &env))
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-frameHeader))
	return dst
}

// refuse counts and logs a connection dropped for bad input, or for a
// read or write that failed.
func (c *Channel) refuse(conn net.Conn, from string, err error) {
	reason := dropReason(err)
	c.drops.add(reason)
	c.warn(reason.String(), "dropping replication connection", "peer", from, "remote", conn.RemoteAddr().String(), "reason", reason.String(), "err", err)
}

// writeFailed counts and logs a connection dropped because its acks and
// replies could not be written (the sender stopped reading for
// WriteTimeout, or reset the connection), unless it was closed here.
func (c *Channel) writeFailed(conn net.Conn, from string, err error) {
	if isClosedErr(err) {
		return
	}
	c.refuse(conn, from, fmt.Errorf("writing acks and replies: %w", err))
}

// warn logs at Warn at most once a second per key.
func (c *Channel) warn(key, msg string, args ...any) {
	v, _ := c.lastWarn.LoadOrStore(key, new(atomic.Int64))
	last := v.(*atomic.Int64)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev < int64(time.Second) || !last.CompareAndSwap(prev, now) {
		return
	}
	c.log.Warn(msg, args...)
}

func (c *Channel) recvCounters(route string) *recvCounters {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.recv[route]
	if rc == nil {
		rc = &recvCounters{}
		c.recv[route] = rc
	}
	return rc
}

// serverHandshake reads the client's hello and answers it. With a key it
// derives the connection's keys and proves it holds the cluster key; the
// client proves it with its first frame, which must open.
func (c *Channel) serverHandshake(br *bufio.Reader, bw *bufio.Writer) (h hello, open, seal *sealer, err error) {
	payload, err := readFrame(br, nil, 4096)
	if err != nil {
		return hello{}, nil, nil, err
	}
	h, err = decodeHello(payload)
	if err != nil {
		return hello{}, nil, nil, err
	}
	if h.Domain != c.cfg.Domain {
		return hello{}, nil, nil, fmt.Errorf("%w: %q", ErrDomain, h.Domain)
	}
	reply := hello{Version: ProtocolVersion, Domain: c.cfg.Domain, Route: c.cfg.Route, Nonce: randomNonce()}
	if len(c.cfg.Key) > 0 {
		reply.MAC = helloMAC(c.cfg.Key, &h, &reply)
		c2s, s2c, err := connKeys(c.cfg.Key, h.Nonce, reply.Nonce)
		if err != nil {
			return hello{}, nil, nil, err
		}
		if open, err = newSealer(c2s); err != nil {
			return hello{}, nil, nil, err
		}
		if seal, err = newSealer(s2c); err != nil {
			return hello{}, nil, nil, err
		}
	}
	b, _ := encodeHello(&reply)
	_, _ = bw.Write(appendFrame(nil, b))
	return h, open, seal, bw.Flush()
}

func randomNonce() []byte {
	b := make([]byte, nonceSize)
	_, _ = rand.Read(b)
	return b
}

// isClosedErr reports a connection closed between frames: not bad input.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || err == io.EOF
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + time.Duration(mathrand.Int64N(int64(d)*2/5+1))
}
