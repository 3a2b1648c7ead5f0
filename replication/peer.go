package replication

import (
	"bufio"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// outFrame is one message queued for one peer.
type outFrame struct {
	peer   *peer
	typ    MsgType
	mode   SendMode
	body   []byte
	seq    uint64
	group  *answers // nil in Async mode
	err    error    // the outcome, set once before done is
	done   atomic.Bool
	queued time.Time
}

// answers gathers the outcomes of one send's frames to all its peers, so
// that the sender wakes once, when the last is in (or when it gives up).
type answers struct {
	left atomic.Int32
	all  chan struct{} // capacity 1: signalled by the last outcome
}

func newAnswers(n int) *answers {
	a := &answers{all: make(chan struct{}, 1)}
	a.left.Store(int32(n))
	return a
}

// settle removes n outcomes from those awaited and signals when none is
// left.
func (a *answers) settle(n int) {
	if a.left.Add(int32(-n)) == 0 {
		a.signal()
	}
}

// signal wakes the sender, if it is not woken already: by the last
// outcome, or by its alarm.
func (a *answers) signal() {
	select {
	case a.all <- struct{}{}:
	default:
	}
}

// finish records the outcome of f for its sender.
func (f *outFrame) finish(err error) {
	f.err = err
	f.done.Store(true)
	f.group.settle(1)
}

// peer is the outbound side of one peer: its bounded queue and the
// goroutine that keeps a connection up and writes the queue to it.
type peer struct {
	c     *Channel
	route string
	addr  string
	queue chan *outFrame
	// stopped ends when the peer is removed (close): with it a dial, a
	// handshake or a write in progress, which a hung peer would otherwise
	// make last until their timeouts. stop is its Done channel.
	stopped context.Context
	close   context.CancelFunc
	stop    <-chan struct{}
	kick    chan struct{} // capacity 1: try to connect now, not after the backoff
	wake    chan struct{} // capacity 1: the writer has a resync to look at
	seq     atomic.Uint64

	wmu     sync.Mutex
	waiters map[uint64]*outFrame // written, awaiting an ack or reply

	connected                              atomic.Bool
	down                                   atomic.Bool // the last dial failed
	stalled                                atomic.Bool // a wait for its answer ended unanswered, and none came since
	stalls                                 atomic.Int64
	answers                                atomic.Uint64 // answers and handshakes, for stall's second look
	resync                                 atomic.Bool
	overflowed                             atomic.Bool // it missed frames while connected (its queue overflowed, or one was too large): resync once drained
	framesSent, bytesSent, errs, queueFull atomic.Int64
}

func newPeer(c *Channel, route, addr string) *peer {
	stopped, stop := context.WithCancel(context.Background())
	return &peer{c: c, route: route, addr: addr, queue: make(chan *outFrame, c.cfg.QueueSize), stopped: stopped, close: stop,
		stop: stopped.Done(), kick: make(chan struct{}, 1), wake: make(chan struct{}, 1), waiters: make(map[uint64]*outFrame)}
}

// enqueue queues f without blocking.
func (p *peer) enqueue(f *outFrame) error {
	f.peer = p
	f.seq = p.seq.Add(1)
	select {
	case <-p.stop:
		return p.gone()
	default:
	}
	if p.down.Load() {
		// The peer cannot be reached: waiting for it would hold the
		// request path until membership declares it failed.
		p.markResync("peer unreachable")
		return ErrPeerDown
	}
	select {
	case p.queue <- f:
		select {
		case <-p.stop:
			// The peer stopped meanwhile and may have failed its queue
			// before f was in it: fail what is left, f included, so
			// that its sender is not left waiting.
			p.failQueued(p.gone())
		default:
		}
		return nil
	default:
		p.queueFull.Add(1)
		p.markResync("queue full")
		p.overflowed.Store(true)
		select { // the writer may be idle already, with nothing to drain
		case p.wake <- struct{}{}:
		default:
		}
		return ErrQueueFull
	}
}

// gone is the error of a frame that its peer, stopped, will never send:
// ErrClosed when the channel closed, ErrUnknownPeer when the peer was
// removed (or replaced by AddPeer at another address), as for a send to a
// peer the channel does not know.
func (p *peer) gone() error {
	if p.c.closed.Load() { // set before Close stops the peers
		return ErrClosed
	}
	return ErrUnknownPeer
}

// markResync flags the peer as possibly missing frames, once per episode.
// The higher layer hears of it when the peer is connected again.
func (p *peer) markResync(why string) {
	if p.resync.Swap(true) {
		return
	}
	p.c.log.Warn("peer may have missed frames; it needs a resync", "peer", p.route, "reason", why)
}

// stall records that a send gave up waiting for the peer after waited:
// until it answers, later sends do not wait for it (see ErrPeerStalled).
//
// f is the frame left unanswered and seen the peer's answer count read
// after f was found unanswered: an answer read since (f's, late, or any
// other) means the peer is not hung, and answered, which it may have run
// before the stall was set, could not clear it.
func (p *peer) stall(f *outFrame, seen uint64, waited time.Duration) {
	if p.stalled.Swap(true) {
		return
	}
	if f.done.Load() || p.answers.Load() != seen {
		p.stalled.CompareAndSwap(true, false)
		return
	}
	p.stalls.Add(1)
	p.c.log.Warn("peer did not answer in time; sends no longer wait for it until it answers",
		"peer", p.route, "waited", waited.Round(time.Millisecond))
}

// answered records that the peer answered: it is no longer stalled.
func (p *peer) answered() {
	p.answers.Add(1)
	if p.stalled.Load() && p.stalled.CompareAndSwap(true, false) {
		p.c.log.Info("stalled peer answers again; sends wait for it again", "peer", p.route)
	}
}

// connectedAgain tells the higher layer that a peer which missed frames
// can be resynchronised now.
func (p *peer) connectedAgain() {
	if !p.resync.Load() {
		return
	}
	p.c.mu.Lock()
	f := p.c.onResync
	p.c.mu.Unlock()
	if f != nil {
		f(p.route)
	}
}

// forget drops the waiter of f after its sender gave up.
func (p *peer) forget(f *outFrame) {
	p.wmu.Lock()
	delete(p.waiters, f.seq)
	p.wmu.Unlock()
}

// run keeps a connection to the peer up until the peer is removed, then
// fails every frame still queued or awaiting an answer.
func (p *peer) run() {
	defer func() { p.failAll(p.gone()) }()
	backoff := 20 * time.Millisecond
	for {
		conn, open, seal, release, err := p.dial()
		if err != nil {
			select {
			case <-p.stop:
				return // the dial ended because the peer did
			default:
			}
			p.down.Store(true)
			if n := p.failQueued(ErrPeerDown); n > 0 {
				p.markResync("peer unreachable")
			}
			p.errs.Add(1)
			p.c.log.Debug("cannot reach peer; retrying", "peer", p.route, "addr", p.addr, "err", err, "in", backoff)
			select {
			case <-p.stop:
				return
			case <-p.kick:
				backoff = 20 * time.Millisecond
				continue
			case <-time.After(jitter(backoff)):
			}
			backoff = min(2*backoff, p.c.cfg.MaxBackoff)
			continue
		}
		up := time.Now()
		sent := p.framesSent.Load()
		p.answered() // it ran the handshake
		p.down.Store(false)
		p.connected.Store(true)
		p.overflowed.Store(false) // the resync below covers it
		p.connectedAgain()
		readerDone := make(chan error, 1)
		p.c.wg.Add(1)
		go func() {
			defer p.c.wg.Done()
			readerDone <- p.readAnswers(conn, open)
		}()
		err = p.writeLoop(conn, seal, readerDone)
		_ = conn.Close()
		release()
		if rerr := <-readerDone; err == nil {
			err = rerr
		}
		p.connected.Store(false)
		select {
		case <-p.stop:
			return // the frames waiting fail as gone, not as lost
		default:
		}
		n := p.failWaiting(ErrConnLost)
		// Frames written on a lost connection may not have been handled:
		// the peer needs a resync unless nothing was written at all.
		if n > 0 || err != nil || p.framesSent.Load() != sent {
			p.errs.Add(1)
			p.markResync("connection lost")
			if err != nil {
				p.c.log.Warn("replication connection lost; reconnecting", "peer", p.route, "err", err)
			} else {
				p.c.log.Warn("replication connection lost; reconnecting", "peer", p.route, "reason", "peer closed the connection")
			}
		}
		// A connection that ends at once (a peer that accepts, then
		// hangs up) must not turn into a busy redial loop.
		if time.Since(up) > time.Second {
			backoff = 20 * time.Millisecond
		} else {
			select {
			case <-p.stop:
				return
			case <-time.After(jitter(backoff)):
			}
			backoff = min(2*backoff, p.c.cfg.MaxBackoff)
		}
	}
}

// dial connects and runs the client side of the handshake. The
// connection is closed when the peer is removed, which ends any write or
// read on it; release undoes that once the connection is closed.
func (p *peer) dial() (conn net.Conn, open, seal *sealer, release func() bool, err error) {
	d := net.Dialer{Timeout: p.c.cfg.DialTimeout}
	if conn, err = d.DialContext(p.stopped, "tcp", p.addr); err != nil {
		return nil, nil, nil, nil, err
	}
	nc := conn // not the result, which the returns below may set to nil
	release = context.AfterFunc(p.stopped, func() { _ = nc.Close() })
	if open, seal, err = p.handshake(conn); err != nil {
		conn.Close()
		release()
		return nil, nil, nil, nil, err
	}
	return conn, open, seal, release, nil
}

// handshake runs the client side of the handshake on conn.
func (p *peer) handshake(conn net.Conn) (open, seal *sealer, err error) {
	c := p.c
	_ = conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout))
	mine := hello{Version: ProtocolVersion, Domain: c.cfg.Domain, Route: c.cfg.Route, Nonce: randomNonce()}
	b, _ := encodeHello(&mine)
	if _, err := conn.Write(appendFrame(nil, b)); err != nil {
		return nil, nil, err
	}
	payload, err := readFrame(conn, nil, 4096)
	if err != nil {
		return nil, nil, p.badInput(fmt.Errorf("handshake: %w", err))
	}
	theirs, err := decodeHello(payload)
	if err == nil && theirs.Domain != c.cfg.Domain {
		err = fmt.Errorf("%w: %q", ErrDomain, theirs.Domain)
	}
	if err != nil {
		return nil, nil, p.badInput(fmt.Errorf("handshake: %w", err))
	}
	if theirs.Route != p.route {
		return nil, nil, fmt.Errorf("peer at %s is %q, not %q", p.addr, theirs.Route, p.route)
	}
	if len(c.cfg.Key) > 0 {
		if !hmac.Equal(theirs.MAC, helloMAC(c.cfg.Key, &mine, &theirs)) {
			c.drops.add(dropAuth)
			return nil, nil, fmt.Errorf("%w: peer does not hold the cluster key", ErrAuth)
		}
		c2s, s2c, err := connKeys(c.cfg.Key, mine.Nonce, theirs.Nonce)
		if err == nil {
			seal, err = newSealer(c2s)
		}
		if err == nil {
			open, err = newSealer(s2c)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	// The first frame goes out at once, whether there is anything to send
	// or not: a no-op nobody waits for, which with a key proves that this
	// node holds it. The peer drops a connection whose first frame does
	// not come within its DialTimeout, as a stranger's would not, and
	// names its sender in Senders from that frame on, which a starting
	// node waits on before it reports ready. It does not count in sent
	// (run): a connection that carried only this one lost nothing.
	env := Envelope{Version: ProtocolVersion, Type: typeNoop, From: c.cfg.Route, Domain: c.cfg.Domain, Mode: Async}
	b = appendEnvelope(nil, &env)
	if seal != nil {
		b = seal.seal(nil, b)
	}
	if _, err := conn.Write(appendFrame(nil, b)); err != nil {
		return nil, nil, err
	}
	p.framesSent.Add(1)
	p.bytesSent.Add(int64(len(b) + frameHeader))
	tc := &c.types[c.types.of(typeNoop)]
	tc.framesSent.Add(1)
	tc.bytesSent.Add(int64(len(b) + frameHeader))
	_ = conn.SetDeadline(time.Time{})
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return open, seal, nil
}

// writeLoop writes queued frames until the connection fails, the reader
// stops, or the peer is removed. Frames queued together are coalesced into
// one write.
func (p *peer) writeLoop(conn net.Conn, seal *sealer, readerDone chan error) error {
	c := p.c
	bw := bufio.NewWriterSize(conn, 64<<10)
	var env Envelope
	var plain, sealed []byte // reused for every frame
	write := func(f *outFrame) error {
		env = Envelope{Version: ProtocolVersion, Type: f.typ, From: c.cfg.Route, Domain: c.cfg.Domain, Seq: f.seq, Mode: f.mode, Body: f.body}
		plain = appendEnvelope(plain[:0], &env)
		b := plain
		if cap(plain) > 4<<20 {
			plain = nil // do not keep a huge buffer for one large frame
		}
		if len(b) > c.cfg.MaxFrameSize {
			// Refused locally; the connection is fine. A sender that waits
			// hears why; otherwise (Async, or a stalled peer) the peer
			// misses the frame, and only a resync makes up for it.
			if f.group != nil {
				f.finish(fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(b)))
			} else {
				p.markResync(fmt.Sprintf("a frame of %d bytes, over the %d-byte limit, was not sent", len(b), c.cfg.MaxFrameSize))
				p.overflowed.Store(true)
			}
			return nil
		}
		if seal != nil {
			sealed = seal.seal(sealed[:0], b)
			b = sealed
		}
		if f.group != nil {
			p.wmu.Lock()
			p.waiters[f.seq] = f
			p.wmu.Unlock()
		}
		if frameHeader+len(b) > bw.Available() {
			// This write goes out to the connection, which may have taken
			// the last one's whole time: the timeout bounds each write,
			// not a run of frames that lasts as long as the queue stays
			// non-empty.
			_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
		}
		var h [frameHeader]byte
		h[0], h[1], h[2], h[3] = byte(len(b)>>24), byte(len(b)>>16), byte(len(b)>>8), byte(len(b))
		_, _ = bw.Write(h[:])
		_, err := bw.Write(b)
		p.framesSent.Add(1)
		p.bytesSent.Add(int64(len(b) + frameHeader))
		tc := &c.types[c.types.of(f.typ)]
		tc.framesSent.Add(1)
		tc.bytesSent.Add(int64(len(b) + frameHeader))
		return err
	}
	for {
		var f *outFrame
		select {
		case f = <-p.queue:
		case <-p.wake:
			p.resyncIfDrained()
			continue
		case <-p.stop:
			return nil
		case err := <-readerDone:
			readerDone <- err // for run
			return err
		}
		if err := write(f); err != nil {
			return err
		}
		if len(p.queue) == 0 {
			// A send wakes this goroutine next, ahead of the other
			// requests already runnable: let them queue their frames
			// first, so that one write carries them all.
			runtime.Gosched()
		}
	drain:
		for bw.Buffered() < 256<<10 {
			select {
			case f = <-p.queue:
				if err := write(f); err != nil {
					return err
				}
			default:
				break drain
			}
		}
		_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
		if err := bw.Flush(); err != nil {
			return err
		}
		p.resyncIfDrained()
	}
}

// resyncIfDrained resynchronises a peer that stayed connected through a
// burst that overflowed its queue, once the queue is empty: no
// reconnection will come to do it.
func (p *peer) resyncIfDrained() {
	if p.overflowed.Load() && len(p.queue) == 0 && p.overflowed.CompareAndSwap(true, false) {
		p.connectedAgain()
	}
}

// readAnswers reads the acks and replies the peer sends back on the
// outbound connection and completes their waiters.
func (p *peer) readAnswers(conn net.Conn, open *sealer) error {
	br := bufio.NewReaderSize(conn, 16<<10)
	var buf []byte
	for {
		payload, err := readFrame(br, buf, p.c.cfg.MaxFrameSize)
		if err != nil {
			if isClosedErr(err) {
				return nil
			}
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrFrameTooLarge) {
				p.c.drops.add(dropReason(err))
			}
			return err
		}
		buf = payload[:cap(payload)]
		if open != nil {
			if payload, err = open.open(payload); err != nil {
				p.c.drops.add(dropAuth)
				return err
			}
		}
		env, err := parseEnvelope(payload)
		if err != nil {
			p.c.drops.add(dropReason(err))
			return err
		}
		var result error
		switch env.Type {
		case typeAck:
		case typeReply:
			if len(env.Body) > 0 {
				result = &RemoteError{Msg: string(env.Body)}
			}
		default:
			p.c.drops.add(dropGarbage)
			return fmt.Errorf("%w: unexpected message type %d on an outbound connection", ErrMalformed, env.Type)
		}
		p.wmu.Lock()
		f := p.waiters[env.Seq]
		delete(p.waiters, env.Seq)
		p.wmu.Unlock()
		if f != nil {
			p.c.histogram.observe(time.Since(f.queued))
			f.finish(result)
		}
		p.answered() // after finish: see stall
	}
}

// badInput counts and logs a handshake error that is the peer's bad input
// (a frame too large, truncated or garbled, another protocol version or
// domain), as serve does for the connections it accepts, and returns err.
// Other errors (the connection refused, closed or timed out) are not
// counted: the dial is retried and logged as one that failed.
func (p *peer) badInput(err error) error {
	if isClosedErr(err) || !(errors.Is(err, ErrMalformed) || errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrVersion) || errors.Is(err, ErrDomain)) {
		return err
	}
	reason := dropReason(err)
	p.c.drops.add(reason)
	p.c.warn(reason.String(), "dropping replication connection", "peer", p.route, "remote", p.addr, "reason", reason.String(), "err", err)
	return err
}

// RemoteError is a peer handler's error, returned by Send in Sync mode.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return "peer handler: " + e.Msg }

// failWaiting fails the frames written but not answered and returns how
// many there were.
func (p *peer) failWaiting(err error) int {
	p.wmu.Lock()
	ws := p.waiters
	p.waiters = make(map[uint64]*outFrame)
	p.wmu.Unlock()
	for _, f := range ws {
		f.finish(err)
	}
	return len(ws)
}

// failAll fails everything still queued or waiting.
func (p *peer) failAll(err error) {
	p.failWaiting(err)
	p.failQueued(err)
}

// failQueued fails the frames still queued and returns how many there
// were.
func (p *peer) failQueued(err error) int {
	for n := 0; ; n++ {
		select {
		case f := <-p.queue:
			if f.group != nil {
				f.finish(err)
			}
		default:
			return n
		}
	}
}
