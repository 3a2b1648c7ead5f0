package manager

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cohort-cluster/cohort/replication"
)

// memNet connects Delta managers in memory: one ordered queue and one
// delivery goroutine per (sender, receiver) pair, as a real channel has
// one connection per pair. Async sends return at once; Ack and Sync wait
// until the receiver has handled the message.
type memNet struct {
	mu    sync.Mutex
	nodes map[string]receiver
	pairs map[[2]string]*pipe
	drop  func(from, to string, msg []byte) bool // optional: lose a message; set under mu while nodes run
	wg    sync.WaitGroup
	done  bool // closed: no pipe starts any more
	// busy counts the messages queued or being handled: a message taken
	// off its queue is not handled yet.
	busy atomic.Int64
}

type receiver interface {
	Receive(from string, msg []byte) error
}

type pipe struct {
	busy   *atomic.Int64 // the net's
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []delivery
	closed bool
}

type delivery struct {
	msg  []byte
	done chan struct{}
}

func newMemNet() *memNet {
	return &memNet{nodes: map[string]receiver{}, pairs: map[[2]string]*pipe{}}
}

// transport returns the Transport of node route.
func (n *memNet) transport(route string) *memTransport { return &memTransport{n: n, self: route} }

func (n *memNet) add(route string, r receiver) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nodes[route] = r
}

func (n *memNet) remove(route string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.nodes, route)
	for k, p := range n.pairs {
		if k[0] == route || k[1] == route {
			p.close()
			delete(n.pairs, k)
		}
	}
}

func (n *memNet) close() {
	n.mu.Lock()
	n.done = true
	for k, p := range n.pairs {
		p.close()
		delete(n.pairs, k)
	}
	n.mu.Unlock()
	n.wg.Wait()
}

func (p *pipe) close() {
	p.mu.Lock()
	p.closed = true
	for _, d := range p.queue {
		if d.done != nil {
			close(d.done)
		}
		p.busy.Add(-1)
	}
	p.queue = nil
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (n *memNet) pipe(from, to string) *pipe {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := [2]string{from, to}
	if p, ok := n.pairs[k]; ok {
		return p
	}
	p := &pipe{busy: &n.busy}
	p.cond = sync.NewCond(&p.mu)
	if n.done {
		// A send after close (a node's goroutine still finishing):
		// refused as by a closed connection, with no goroutine that
		// close would never wait for.
		p.closed = true
		return p
	}
	n.pairs[k] = p
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			p.mu.Lock()
			for len(p.queue) == 0 && !p.closed {
				p.cond.Wait()
			}
			if p.closed {
				p.mu.Unlock()
				return
			}
			d := p.queue[0]
			p.queue = p.queue[1:]
			p.mu.Unlock()
			n.mu.Lock()
			r := n.nodes[to]
			n.mu.Unlock()
			if r != nil {
				_ = r.Receive(from, d.msg)
			}
			if d.done != nil {
				close(d.done)
			}
			n.busy.Add(-1)
		}
	}()
	return p
}

type memTransport struct {
	n    *memNet
	self string
}

func (t *memTransport) Peers() []string {
	t.n.mu.Lock()
	defer t.n.mu.Unlock()
	var out []string
	for r := range t.n.nodes {
		if r != t.self {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

func (t *memTransport) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	if to == nil {
		to = t.Peers()
	}
	t.n.mu.Lock()
	drop := t.n.drop
	t.n.mu.Unlock()
	var waits []chan struct{}
	for _, peer := range to {
		if drop != nil && drop(t.self, peer, msg) {
			continue
		}
		d := delivery{msg: msg}
		if mode != Async {
			d.done = make(chan struct{})
			waits = append(waits, d.done)
		}
		p := t.n.pipe(t.self, peer)
		p.mu.Lock()
		if !p.closed {
			t.n.busy.Add(1)
			p.queue = append(p.queue, d)
		} else if d.done != nil {
			close(d.done)
		}
		p.mu.Unlock()
		p.cond.Signal()
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// idleNow reports whether no message is queued or being handled.
func (n *memNet) idleNow() bool { return n.busy.Load() == 0 }

// failingPeer is a transport on which a send to peer fails with err, as
// the replication channel's does (ErrUnknownPeer: membership has not
// reported it yet, or has dropped it; ErrPeerDown: it has just died), the
// first failFor times, or always when failFor is 0. The other peers of a
// send get it. It counts the sends to peer.
type failingPeer struct {
	Transport
	peer     string
	err      error
	failFor  int64
	attempts atomic.Int64
}

func (t *failingPeer) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	if !slices.Contains(to, t.peer) {
		return t.Transport.Send(ctx, to, msg, mode)
	}
	if n := t.attempts.Add(1); t.failFor > 0 && n > t.failFor {
		return t.Transport.Send(ctx, to, msg, mode)
	}
	var err error
	if rest := slices.DeleteFunc(slices.Clone(to), func(r string) bool { return r == t.peer }); len(rest) > 0 {
		err = t.Transport.Send(ctx, rest, msg, mode)
	}
	return errors.Join(err, &replication.PeerError{Peer: t.peer, Op: "queue", Err: t.err})
}
