package web

import (
	"context"
	"errors"
	"net"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/gorilla/websocket"
)

// Conn is one WebSocket on this node: a user's socket, bound to the HTTP
// session of its handshake. It has one reader goroutine (the handler's)
// and one writer goroutine; everything sent to it goes through a bounded
// buffer that the writer drains. Its methods are safe for concurrent use
// and never block.
type Conn struct {
	h      *Hub
	ws     *websocket.Conn
	nc     *abortableConn // ws's connection
	id     string
	user   string
	remote net.Addr
	opened time.Time

	smu     sync.Mutex
	session *manager.Session // refreshed by each touch

	send      chan []byte
	closing   chan struct{} // closed by closeWith: the writer sends the close frame and stops
	readDone  chan struct{} // closed when the reader stops
	writeDone chan struct{} // closed when the writer stops, after closing the connection
	finished  chan struct{} // closed after OnDisconnect

	closeOnce   sync.Once
	closeCode   int    // set once, by closeWith
	closeReason string // set once, by closeWith

	lastActive atomic.Int64 // unix nanos of the last application message either way
	lastTouch  time.Time    // reader goroutine only

	topics map[string]struct{} // guarded by h.mu
}

func newConn(h *Hub, ws *websocket.Conn, nc *abortableConn, user string, s *manager.Session) *Conn {
	now := time.Now()
	c := &Conn{
		h: h, ws: ws, nc: nc, user: user, session: s, remote: ws.RemoteAddr(), opened: now,
		id:        h.route + "-" + strconv.FormatUint(h.connSeq.Add(1), 10),
		send:      make(chan []byte, h.cfg.SendBuffer),
		closing:   make(chan struct{}),
		readDone:  make(chan struct{}),
		writeDone: make(chan struct{}),
		finished:  make(chan struct{}),
		// The handshake was the session's access.
		lastTouch: now,
	}
	c.lastActive.Store(now.UnixNano())
	return c
}

// ID returns the socket's id, unique in the cluster: <route>-<n>.
func (c *Conn) ID() string { return c.id }

// User returns the socket's user.
func (c *Conn) User() string { return c.user }

// Route returns the route of the node the socket is on.
func (c *Conn) Route() string { return c.h.route }

// RemoteAddr returns the client's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Opened returns when the socket was opened.
func (c *Conn) Opened() time.Time { return c.opened }

// Session returns the HTTP session the socket is bound to, as this node
// holds it.
func (c *Conn) Session() *manager.Session {
	c.smu.Lock()
	defer c.smu.Unlock()
	return c.session
}

// SessionID returns the id of the socket's HTTP session (it follows
// renames).
func (c *Conn) SessionID() string { return c.Session().ID() }

func (c *Conn) sessionBase() string {
	base, _ := manager.SplitID(c.SessionID())
	return base
}

// Topics returns the topics the socket is subscribed to.
func (c *Conn) Topics() []string {
	c.h.mu.RLock()
	defer c.h.mu.RUnlock()
	out := make([]string, 0, len(c.topics))
	for t := range c.topics {
		out = append(out, t)
	}
	return out
}

// Send queues msg as a text message to this socket only. It returns
// ErrConnClosed when the socket is closing, and ErrSlowConsumer when its
// send buffer was full: the socket is then closed with 1013. msg must not
// be modified afterwards.
func (c *Conn) Send(msg []byte) error { return c.enqueue(msg) }

// Close closes the socket with code and reason (at most 123 bytes; it is
// cut), sending the close frame from the writer goroutine. It does not
// wait.
func (c *Conn) Close(code int, reason string) { c.closeWith(code, reason, false) }

func (c *Conn) enqueue(msg []byte) error {
	select {
	case <-c.closing:
		return ErrConnClosed
	default:
	}
	select {
	case c.send <- msg:
		c.h.stats.delivered.Add(1)
		return nil
	default:
	}
	if c.closeWith(CloseTryAgain, "slow consumer", true) {
		c.h.stats.slow.Add(1)
		c.h.log.Warn("slow websocket consumer disconnected", "conn", c.id, "user", c.user, "buffered", len(c.send))
	}
	return ErrSlowConsumer
}

// closeWith starts closing the socket: it records why, stops deliveries
// to it and tells the writer to send the close frame. abort also cuts a
// write in progress, for a client that stopped reading, and any write the
// writer starts before it takes its close path (see abortableConn). It
// reports whether this call decided the close.
func (c *Conn) closeWith(code int, reason string, abort bool) bool {
	decided := false
	c.closeOnce.Do(func() {
		decided = true
		if len(reason) > maxReasonLength {
			cut := maxReasonLength // on a character's first byte: a close frame's reason is UTF-8
			for cut > 0 && !utf8.RuneStart(reason[cut]) {
				cut--
			}
			reason = reason[:cut]
		}
		c.closeCode, c.closeReason = code, reason
		close(c.closing) // before the abort: the writer relies on it
		if abort {
			c.nc.abort()
		}
		c.h.unregister(c)
	})
	return decided
}

// serve is the reader: it runs on the handler's goroutine until the
// socket closes, then waits for the writer and calls OnDisconnect. A panic
// in a callback closes the socket with 1011 and is logged.
func (c *Conn) serve() {
	defer close(c.finished)
	c.guard(func() {
		if f := c.h.cfg.OnConnect; f != nil {
			f(c)
		}
		c.readLoop()
	})
	close(c.readDone)
	<-c.writeDone
	if f := c.h.cfg.OnDisconnect; f != nil {
		c.guard(func() { f(c, c.closeCode, c.closeReason) })
	}
}

// guard runs f, turning a panic into a closed socket.
func (c *Conn) guard(f func()) {
	defer func() {
		if r := recover(); r != nil {
			c.h.log.Error("panic serving a websocket; closed", "conn", c.id, "user", c.user, "panic", r, "stack", string(debug.Stack()))
			c.closeWith(websocket.CloseInternalServerErr, "internal error", true)
			_ = c.ws.NetConn().Close()
		}
	}()
	f()
}

func (c *Conn) readLoop() {
	cfg := &c.h.cfg
	ws := c.ws
	ws.SetReadLimit(cfg.MaxMessageSize)
	_ = ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
	ws.SetPongHandler(func(string) error {
		return ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
	})
	for {
		// Set before each read, not on arrival: an OnMessage that blocks
		// longer than PongWait must not make the next read fail at once.
		_ = ws.SetReadDeadline(time.Now().Add(cfg.PongWait))
		typ, msg, err := ws.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		now := time.Now()
		c.lastActive.Store(now.UnixNano())
		if now.Sub(c.lastTouch) >= cfg.TouchInterval {
			c.lastTouch = now
			c.touch()
		}
		if typ == websocket.TextMessage {
			if ctl, ok := parseControl(msg); ok {
				c.control(ctl)
				continue
			}
		}
		if f := cfg.OnMessage; f != nil {
			f(c, msg)
		}
	}
}

// readFailed records why the reader stopped, unless the hub had decided
// already.
func (c *Conn) readFailed(err error) {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		c.closeWith(ce.Code, ce.Text, false)
	case errors.Is(err, websocket.ErrReadLimit):
		c.closeWith(CloseTooBig, "message too big", false)
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.closeWith(CloseAbnormal, "no pong", false)
		} else {
			c.closeWith(CloseAbnormal, "connection lost", false)
		}
	}
}

// control applies a subscription message and answers it.
func (c *Conn) control(ctl control) {
	var err error
	if ctl.Subscribe {
		err = c.h.Subscribe(c, ctl.Topic)
	} else {
		c.h.Unsubscribe(c, ctl.Topic)
	}
	_ = c.enqueue(controlReply(ctl, err))
}

// touch records an access to the socket's session and commits it, so the
// session lives as long as the socket is used. A session that is gone
// closes the socket.
func (c *Conn) touch() {
	ctx, cancel := context.WithTimeout(context.Background(), c.h.cfg.DeliverTimeout)
	defer cancel()
	s, err := c.h.mgr.Find(ctx, c.SessionID())
	if errors.Is(err, manager.ErrNotFound) {
		if c.closeWith(ClosePolicy, "session expired", false) {
			c.h.stats.sessionClosed.Add(1)
		}
		return
	}
	if err != nil {
		c.h.log.Warn("websocket session touch failed", "conn", c.id, "err", err)
		return
	}
	c.smu.Lock()
	c.session = s
	c.smu.Unlock()
	if err := c.h.mgr.Commit(ctx, s); err != nil {
		c.h.log.Warn("websocket session commit failed", "conn", c.id, "err", err)
	}
}

// closeWait bounds the close handshake: how long the writer waits to send
// the close frame and then for the client's answer.
const closeWait = time.Second

// writeLoop is the writer: it drains the send buffer, pings, enforces the
// idle timeout, and on closing sends the close frame, waits briefly for
// the client's, and closes the connection. It returns then, or when a
// write fails, or when the reader stops.
func (c *Conn) writeLoop() {
	defer close(c.writeDone)
	defer c.ws.Close()
	cfg := &c.h.cfg
	ping := time.NewTicker(cfg.PingPeriod)
	defer ping.Stop()
	var idle *time.Timer
	var idleC <-chan time.Time
	if cfg.IdleTimeout > 0 {
		idle = time.NewTimer(cfg.IdleTimeout)
		defer idle.Stop()
		idleC = idle.C
	}
	for {
		// Closing wins over queued messages.
		select {
		case <-c.closing:
			c.finishClose()
			return
		default:
		}
		select {
		case msg := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(cfg.WriteWait))
			if c.closedBeforeWrite(false) {
				c.finishClose()
				return
			}
			if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
				c.closeWith(CloseAbnormal, "write failed", true)
				return
			}
			c.lastActive.Store(time.Now().UnixNano())
		case <-ping.C:
			if s := c.Session(); !s.Valid() {
				if c.closeWith(ClosePolicy, "session expired", false) {
					c.h.stats.sessionClosed.Add(1)
				}
				continue
			}
			if c.closedBeforeWrite(true) {
				c.finishClose()
				return
			}
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(cfg.WriteWait)); err != nil {
				c.closeWith(CloseAbnormal, "ping failed", true)
				return
			}
		case <-idleC:
			d := time.Since(time.Unix(0, c.lastActive.Load()))
			if d < cfg.IdleTimeout {
				idle.Reset(cfg.IdleTimeout - d)
			} else if c.closeWith(CloseNormal, "idle timeout", false) {
				c.h.stats.idle.Add(1)
			}
		case <-c.closing:
			c.finishClose()
			return
		case <-c.readDone:
			return
		}
	}
}

// closedBeforeWrite reports whether the socket started closing, checked
// by the writer just before each write (a ping when ping), after it set
// the write's deadline: the writer then takes its close path instead.
//
// With abortableConn, that covers every interleaving with an abort:
// closeWith closes c.closing before it aborts the connection, so an abort
// that this check does not see comes after it, and makes the write fail
// at once, although gorilla applies the write's own deadline to the
// connection as the write starts (abortableConn keeps the abort's). An
// abort that it sees sends the writer to the close frame, under
// closeWait, without the write.
func (c *Conn) closedBeforeWrite(ping bool) bool {
	hook := c.h.writeHook
	if hook != nil {
		hook(c, ping, false)
	}
	select {
	case <-c.closing:
		return true
	default:
	}
	if hook != nil {
		hook(c, ping, true)
	}
	return false
}

// finishClose sends the close frame, unless the code may not be sent
// (1005, 1006) or the connection broke, then waits up to closeWait for the
// client's close frame, which ends the reader.
func (c *Conn) finishClose() {
	if c.closeCode != CloseAbnormal && c.closeCode != websocket.CloseNoStatusReceived {
		// After an abort too: the close frame has its own deadline.
		c.nc.release()
		msg := websocket.FormatCloseMessage(c.closeCode, c.closeReason)
		_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(closeWait))
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-c.readDone:
	case <-t.C:
	}
}

// abortableConn is a socket's network connection, on which an abort
// sticks. gorilla's Conn applies its write deadline to the connection as
// each write starts, for data and control frames alike (pongs the reader
// answers included): a deadline in the past that closeWith set to cut a
// write would be replaced by the next write's own, and a client that
// stopped reading could hold that write for the whole WriteWait. Once
// aborted, every write deadline set is in the past, until the writer
// releases it to send the close frame.
type abortableConn struct {
	net.Conn
	mu      sync.Mutex
	aborted bool
}

// abortedDeadline is the write deadline of an aborted connection.
var abortedDeadline = time.Unix(1, 0)

func (a *abortableConn) SetWriteDeadline(t time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aborted {
		t = abortedDeadline
	}
	return a.Conn.SetWriteDeadline(t)
}

func (a *abortableConn) SetDeadline(t time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.aborted {
		return a.Conn.SetDeadline(t)
	}
	if err := a.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return a.Conn.SetWriteDeadline(abortedDeadline)
}

// abort makes the write in progress, if any, and every later one fail at
// once.
func (a *abortableConn) abort() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.aborted = true
	_ = a.Conn.SetWriteDeadline(abortedDeadline)
}

// release lets writes through again, each under the deadline it sets.
func (a *abortableConn) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.aborted = false
}
