package replication

import (
	"context"
	"fmt"
	"time"
)

// Stream sends a long sequence of messages to one peer with flow control:
// at most Window frames are unacknowledged at a time, so a slow receiver
// slows the sender down instead of overflowing its queue, and no goroutine
// is spent per message. The receiver gets the messages, in order, through
// the handler of the stream's type, like any other; the sender's last
// message says the stream is complete (state transfer sends a count). If
// the peer dies, Write and Close fail promptly with the connection's error;
// if it hangs, each frame's acknowledgement is waited for until ctx's
// deadline, or, when ctx has none, for Config.SendTimeout from when the
// frame was queued, as Send waits. A Stream is used by one goroutine at a
// time.
type Stream struct {
	c        *Channel
	p        *peer
	typ      MsgType
	window   int
	inflight []*outFrame
	err      error
}

// OpenStream opens a stream of messages of type t to peer, with at most
// window unacknowledged frames (at least 1).
func (c *Channel) OpenStream(peer string, t MsgType, window int) (*Stream, error) {
	c.mu.Lock()
	p := c.peers[peer]
	c.mu.Unlock()
	if p == nil {
		return nil, &PeerError{Peer: peer, Op: "stream", Err: ErrUnknownPeer}
	}
	return &Stream{c: c, p: p, typ: t, window: max(window, 1)}, nil
}

// Write queues body, first waiting, if the window is full, for the oldest
// frame's acknowledgement. body must not change until Close returns.
func (s *Stream) Write(ctx context.Context, body []byte) error {
	if s.err != nil {
		return s.err
	}
	for len(s.inflight) >= s.window {
		if err := s.waitOldest(ctx); err != nil {
			return err
		}
	}
	f := &outFrame{typ: s.typ, mode: Ack, body: body, group: newAnswers(1), queued: time.Now()}
	if err := s.p.enqueue(f); err != nil {
		s.err = &PeerError{Peer: s.p.route, Op: "stream", Err: err}
		return s.err
	}
	s.inflight = append(s.inflight, f)
	return nil
}

func (s *Stream) waitOldest(ctx context.Context) error {
	f := s.inflight[0]
	var expired <-chan time.Time // without a deadline, SendTimeout bounds the wait
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(time.Until(f.queued.Add(s.c.cfg.SendTimeout)))
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-f.group.all:
		s.inflight = s.inflight[1:]
		if f.err != nil {
			s.err = &PeerError{Peer: s.p.route, Op: "stream", Err: f.err}
		}
	case <-ctx.Done():
		s.err = &PeerError{Peer: s.p.route, Op: "stream", Err: ctx.Err()}
	case <-expired:
		s.err = &PeerError{Peer: s.p.route, Op: "stream", Err: context.DeadlineExceeded}
	case <-s.c.stop:
		s.err = ErrClosed
	}
	return s.err
}

// Close waits until every written frame is acknowledged (each wait bounded
// as Write's) and returns the stream's first error.
func (s *Stream) Close(ctx context.Context) error {
	for len(s.inflight) > 0 && s.err == nil {
		_ = s.waitOldest(ctx)
	}
	for _, f := range s.inflight {
		s.p.forget(f)
	}
	s.inflight = nil
	if s.err != nil {
		return fmt.Errorf("replication: stream to %s: %w", s.p.route, s.err)
	}
	return nil
}
