package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
	"github.com/gorilla/websocket"
)

// HubMsgType is the replication message type of the hub's messages
// between nodes (the manager uses replication.FirstUserType).
const HubMsgType = replication.FirstUserType + 1

// Errors returned by the hub.
var (
	ErrHubClosed     = errors.New("web: hub closed")
	ErrConnClosed    = errors.New("web: websocket closed")
	ErrSlowConsumer  = errors.New("web: websocket send buffer full; connection closed")
	ErrTooManyTopics = errors.New("web: too many topics on one websocket")
	ErrBadTopic      = errors.New("web: topic must be 1 to 256 bytes")
	ErrNoCount       = errors.New("web: hub peer did not report how many sockets it reached")
)

// WebSocket close codes the hub sends (RFC 6455 section 7.4.1).
const (
	CloseNormal     = websocket.CloseNormalClosure   // 1000: idle timeout
	CloseGoingAway  = websocket.CloseGoingAway       // 1001: the hub is shutting down
	ClosePolicy     = websocket.ClosePolicyViolation // 1008: session destroyed, or CloseUser
	CloseTooBig     = websocket.CloseMessageTooBig   // 1009: a client message over MaxMessageSize
	CloseTryAgain   = websocket.CloseTryAgainLater   // 1013: slow consumer, its send buffer overflowed
	CloseAbnormal   = websocket.CloseAbnormalClosure // 1006: the connection broke without a close frame
	maxReasonLength = 123                            // a close frame's payload is at most 125 bytes
)

// HubConfig configures a Hub. Start from DefaultHubConfig; NewHub copies
// it. Callbacks run without the hub's locks held; each says on which
// goroutine.
type HubConfig struct {
	// SendBuffer is how many messages may wait for one socket. A socket
	// whose buffer is full is a slow consumer: it is closed with 1013
	// (try again later) and the message dropped for it, so it never holds
	// back delivery to others; the write to it under way, if any, is cut
	// at once, and so is any it would start before its close frame, which
	// gets at most a second. Default 256.
	SendBuffer int
	// MaxMessageSize bounds a message from a client in bytes; a larger one
	// closes the socket with 1009. It also bounds the body of PushHandler
	// and PublishHandler requests. Default 64 KiB.
	MaxMessageSize int64
	// WriteWait bounds one write to a socket. Default 10s.
	WriteWait time.Duration
	// PongWait is how long a socket may stay silent, pongs included,
	// before it is considered dead. Default 60s.
	PongWait time.Duration
	// PingPeriod is how often the hub pings each socket; it must be less
	// than PongWait. Default 9/10 of PongWait.
	PingPeriod time.Duration
	// IdleTimeout closes, with 1000, a socket that has neither received
	// nor sent an application message for this long (pings and pongs do
	// not count), as JSR 356's maxIdleTimeout. 0 means never. Default 0.
	IdleTimeout time.Duration
	// TouchInterval is how often, at most, a socket's activity (a message
	// received) records an access to its HTTP session and commits it,
	// which keeps the session alive. Keep it well below the session's max
	// inactive interval. Default 1m.
	TouchInterval time.Duration
	// DeliverTimeout bounds SendToUser, SendToSession, Publish and
	// CloseUser when their context has no earlier deadline. Default 5s.
	DeliverTimeout time.Duration
	// PresenceRefresh is how often every node sends its whole presence to
	// every peer again, repairing any update lost on a broken connection.
	// Default 30s.
	PresenceRefresh time.Duration
	// MaxTopics bounds the topics one socket may subscribe to. Default 64.
	MaxTopics int
	// ReadBufferSize and WriteBufferSize are the sockets' I/O buffer sizes;
	// write buffers are pooled. Default 1024 each.
	ReadBufferSize, WriteBufferSize int
	// CheckOrigin decides whether a handshake's Origin is acceptable. Nil
	// accepts only the same origin (Origin's host equals the request's
	// Host) and requests without Origin, which browsers always send.
	CheckOrigin func(r *http.Request) bool

	// OnConnect is called once a socket is open, on its reader goroutine,
	// before any OnMessage of it. It may block that socket only.
	OnConnect func(c *Conn)
	// OnMessage is called for each application message from a client (a
	// text or binary message that is not a control message), on the
	// socket's reader goroutine: it may block, holding back that socket's
	// later messages only. msg is the callback's to keep.
	OnMessage func(c *Conn, msg []byte)
	// OnDisconnect is called once per OnConnect, on the socket's reader
	// goroutine after both of its goroutines are done, with the close
	// code that ended it (the hub's, the client's, or 1006 when the
	// connection broke) and the reason.
	OnDisconnect func(c *Conn, code int, reason string)
	// OnPresence is called when a user comes online (its first socket on
	// any node) or goes offline (its last socket anywhere closed, or its
	// node failed or left), on every node, one call at a time, in the
	// order this node saw the changes. It must not block for long: it
	// delays presence updates.
	OnPresence func(user string, online bool)

	// Logger receives operational logs. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultHubConfig returns the defaults: 256 queued messages per socket,
// 64 KiB client messages, pings every 54s, no idle timeout, session touched
// at most once a minute per socket.
func DefaultHubConfig() HubConfig {
	return HubConfig{
		SendBuffer:      256,
		MaxMessageSize:  64 << 10,
		WriteWait:       10 * time.Second,
		PongWait:        60 * time.Second,
		PingPeriod:      54 * time.Second,
		TouchInterval:   time.Minute,
		DeliverTimeout:  5 * time.Second,
		PresenceRefresh: 30 * time.Second,
		MaxTopics:       64,
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
	}
}

// HubConfigError reports an invalid HubConfig field.
type HubConfigError struct {
	Field, Value, Want string
}

func (e *HubConfigError) Error() string {
	return fmt.Sprintf("web: invalid HubConfig.%s %q: want %s", e.Field, e.Value, e.Want)
}

func (c *HubConfig) validate() error {
	if c.SendBuffer < 1 {
		return &HubConfigError{"SendBuffer", strconv.Itoa(c.SendBuffer), "at least 1"}
	}
	if c.MaxMessageSize < 1 {
		return &HubConfigError{"MaxMessageSize", strconv.FormatInt(c.MaxMessageSize, 10), "at least 1"}
	}
	if c.MaxTopics < 0 {
		return &HubConfigError{"MaxTopics", strconv.Itoa(c.MaxTopics), "at least 0"}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"WriteWait", c.WriteWait}, {"PongWait", c.PongWait}, {"PingPeriod", c.PingPeriod},
		{"TouchInterval", c.TouchInterval}, {"DeliverTimeout", c.DeliverTimeout}, {"PresenceRefresh", c.PresenceRefresh},
	} {
		if d.v <= 0 {
			return &HubConfigError{d.name, d.v.String(), "a positive duration"}
		}
	}
	if c.PingPeriod >= c.PongWait {
		return &HubConfigError{"PingPeriod", c.PingPeriod.String(), "less than PongWait " + c.PongWait.String()}
	}
	if c.IdleTimeout < 0 {
		return &HubConfigError{"IdleTimeout", c.IdleTimeout.String(), "a duration of at least 0 (0: never)"}
	}
	return nil
}

// Hub holds this node's WebSockets and delivers messages to sockets on
// every node of the cluster. It is safe for concurrent use.
//
// State: mu guards the socket tables; pmu guards the presence registry.
// Lock order: pmu, then mu. Presence messages to peers are sent only by
// the hub's run goroutine, so they leave in the order of the changes.
type Hub struct {
	cfg      HubConfig
	log      *slog.Logger
	route    string
	mgr      manager.Manager
	ch       *replication.Channel // nil: this node only
	node     *membership.Node
	sub      *membership.Subscription
	unlisten func() // removes the hub's listener from mgr
	upgrader websocket.Upgrader

	mu     sync.RWMutex
	conns  map[*Conn]struct{} // open sockets: deliveries go to them
	live   map[*Conn]struct{} // sockets whose goroutines still run, closing ones included
	users  map[string]map[*Conn]struct{}
	topics map[string]map[*Conn]struct{}
	closed bool

	pmu      sync.Mutex
	presence map[string]map[string]int  // user -> node -> sockets, this node included
	dirty    map[string]struct{}        // local users whose count peers have not heard yet
	down     map[string]bool            // failed or left nodes: their late presence is ignored
	hubs     map[string]bool            // peers whose hub has spoken since they joined: cluster-wide operations go to them
	asked    map[string]bool            // peers that asked for our whole presence
	keeping  map[string]map[string]bool // peer -> users its snapshot in progress holds so far
	notes    []presenceNote             // OnPresence calls for the run goroutine

	wmu     sync.Mutex
	waiters map[uint64]*waiter
	reqSeq  atomic.Uint64
	connSeq atomic.Uint64

	wake      chan struct{} // capacity 1: the run goroutine has work
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup // the run goroutine and every socket's two goroutines

	stats hubCounters

	// writeHook, nil outside tests, is called by each socket's writer
	// just before it checks, ahead of a write (a ping when ping), whether
	// the socket is closing (checked false), and just after, when it is
	// not (checked true). It is set under mu before any socket connects.
	writeHook func(c *Conn, ping, checked bool)
}

type presenceNote struct {
	user   string
	online bool
}

// waiter collects the counts answering one kindOp.
type waiter struct {
	c chan countReply
}

type countReply struct {
	from string
	n    int
}

type hubCounters struct {
	delivered, slow, idle, sessionClosed, badMessages atomic.Int64
}

// HubStats are the hub's counters.
type HubStats struct {
	Sockets        int   // open sockets on this node
	LocalUsers     int   // users with a socket on this node
	OnlineUsers    int   // users with a socket on any node
	Delivered      int64 // messages queued to sockets of this node
	SlowConsumers  int64 // sockets closed because their send buffer overflowed
	IdleClosed     int64 // sockets closed by the idle timeout
	SessionClosed  int64 // sockets closed because their HTTP session was destroyed
	BadPeerMessage int64 // hub messages from peers that did not decode
}

// NewHub returns the hub of the node c, registers its handler on c's
// replication channel (HubMsgType) and a listener on c's manager (Close
// removes it), and starts following membership. With the Standard manager (no channel) the
// hub serves this node's sockets only. Close it before closing c.
func NewHub(c *manager.Cluster, cfg HubConfig) (*Hub, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	node := c.Membership()
	h := &Hub{
		cfg: cfg, route: node.Route(), mgr: c.Manager(), ch: c.Channel(), node: node,
		log:      log.With("component", "hub", "route", node.Route()),
		conns:    make(map[*Conn]struct{}),
		live:     make(map[*Conn]struct{}),
		users:    make(map[string]map[*Conn]struct{}),
		topics:   make(map[string]map[*Conn]struct{}),
		presence: make(map[string]map[string]int),
		dirty:    make(map[string]struct{}),
		down:     make(map[string]bool),
		hubs:     make(map[string]bool),
		keeping:  make(map[string]map[string]bool),
		asked:    make(map[string]bool),
		waiters:  make(map[uint64]*waiter),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	// Request ids start at random so that counts meant for an earlier
	// incarnation of this node are not taken for answers.
	h.reqSeq.Store(rand.Uint64() >> 1)
	h.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   cfg.ReadBufferSize,
		WriteBufferSize:  cfg.WriteBufferSize,
		WriteBufferPool:  &sync.Pool{},
		CheckOrigin:      cfg.CheckOrigin,
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	if h.upgrader.CheckOrigin == nil {
		h.upgrader.CheckOrigin = sameOrigin
	}
	// Removed by Close: a manager that outlives its hubs must neither keep
	// them nor call them. Every manager of package manager can remove
	// it.
	l := manager.Listener{Destroyed: h.sessionDestroyed}
	if lm, ok := h.mgr.(manager.Listenable); ok {
		h.unlisten = lm.Listen(l)
	} else {
		h.mgr.AddListener(l)
		h.unlisten = func() {}
	}
	if h.ch != nil {
		h.ch.Handle(HubMsgType, h.receive)
	}
	h.sub = node.Subscribe()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.run()
	}()
	return h, nil
}

// Route returns this node's route.
func (h *Hub) Route() string { return h.route }

// Close closes every socket of this node with 1001 (going away), waits
// briefly for the close handshakes, then drops the connections and waits
// for every goroutine of the hub. Sockets that connect later are refused.
// It removes the hub's listener from the manager; its handler stays on
// the channel, answering peers that it reaches no socket, until another
// hub of the node replaces it. Close is idempotent.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		conns := make([]*Conn, 0, len(h.live))
		for c := range h.live {
			conns = append(conns, c)
		}
		h.mu.Unlock()
		h.unlisten() // every socket is closing now
		for _, c := range conns {
			c.closeWith(CloseGoingAway, "server shutting down", false)
		}
		grace := time.NewTimer(time.Second)
		for _, c := range conns {
			select {
			case <-c.finished:
			case <-grace.C:
				// Past the grace period, drop what is left at once.
				for _, c := range conns {
					_ = c.ws.NetConn().Close()
				}
			}
		}
		grace.Stop()
		close(h.done)
		h.sub.Close()
		h.wg.Wait()
	})
	return nil
}

func (h *Hub) isClosed() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.closed
}

// sameOrigin accepts requests without an Origin header and those whose
// Origin's host is the request's Host, as gorilla/websocket's default.
func sameOrigin(r *http.Request) bool {
	origin := r.Header["Origin"]
	if len(origin) == 0 {
		return true
	}
	u, err := url.Parse(origin[0])
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// hijacker lets the upgrader hijack through wrapping response writers
// that expose Unwrap but not Hijack. It hands the upgrader the connection
// as an abortableConn, and keeps it for the socket.
type hijacker struct {
	http.ResponseWriter
	conn *abortableConn
}

func (w *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &abortableConn{Conn: nc}
	return w.conn, rw, nil
}

// refusal returns the status and error with which the upgrader would
// refuse the handshake r, or 0 and nil when r passes all its checks. It
// runs the upgrader on a response writer that fails to hijack: the
// upgrader makes every check that it answers with an HTTP error before it
// hijacks the connection (it could not answer after), so these are its
// own checks, made as Upgrade makes them, and it stops at the hijack.
func (h *Hub) refusal(r *http.Request) (int, error) {
	dry := h.upgrader
	var status int
	var reason error
	dry.Error = func(_ http.ResponseWriter, _ *http.Request, s int, err error) { status, reason = s, err }
	var w dryRun
	if _, err := dry.Upgrade(&w, r, nil); err == nil || w.hijacked {
		return 0, nil
	}
	return status, reason
}

// dryRun is the response writer of refusal: it records that the upgrader
// reached the hijack, and fails it.
type dryRun struct {
	hijacked bool
	header   http.Header
}

func (w *dryRun) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (*dryRun) Write(b []byte) (int, error) { return len(b), nil }

func (*dryRun) WriteHeader(int) {}

func (w *dryRun) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return nil, nil, errDryRun
}

var errDryRun = errors.New("web: handshake checked, not upgraded")

// Handler returns the WebSocket endpoint. It must run behind
// Sessions.Middleware: the socket is bound to the request's HTTP session,
// created if the request has none (its cookie is then set on the
// handshake response). userOf names the socket's user; a request for which
// it returns "" is refused with 401. A handshake that gorilla/websocket's
// Upgrader would refuse (not a GET, a Sec-WebSocket-Version without 13, a
// Sec-WebSocket-Key that is not 16 bytes in base64, a refused Origin) is
// refused as the Upgrader refuses it, before the session is made: it
// creates none. One that fails later (the connection cannot be hijacked,
// or breaks) destroys the session it created, if it did. The handler
// returns when the socket closes: it is the socket's reader.
func (h *Hub) Handler(userOf func(r *http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := r.Context().Value(ctxKey{}).(*state)
		if st == nil {
			h.log.Error("websocket handler reached without Sessions.Middleware")
			http.Error(w, "web: the hub handler must run behind Sessions.Middleware", http.StatusInternalServerError)
			return
		}
		user := userOf(r)
		if user == "" || len(user) > maxNameLen {
			http.Error(w, "no user", http.StatusUnauthorized)
			return
		}
		if !websocket.IsWebSocketUpgrade(r) {
			http.Error(w, "websocket upgrade required", http.StatusBadRequest)
			return
		}
		// The upgrader's checks (method, version, origin, key), made
		// before the session is: a handshake the upgrader refuses must
		// not create one. It makes them again.
		if status, reason := h.refusal(r); status != 0 {
			h.upgrader.Error(w, r, status, reason)
			return
		}
		if h.isClosed() {
			http.Error(w, ErrHubClosed.Error(), http.StatusServiceUnavailable)
			return
		}
		had := Existing(r)
		s, err := Get(r)
		if err != nil {
			http.Error(w, "session unavailable", http.StatusServiceUnavailable)
			return
		}
		// Commit now: the handshake response is the only one this
		// request gets, so it carries the session cookie.
		hj := &hijacker{ResponseWriter: w}
		ws, err := h.upgrader.Upgrade(hj, r, Commit(r))
		if err != nil {
			// The upgrader answered, or the connection is gone. A session
			// made by this request is of no use to anyone: no response
			// carried its cookie.
			if s != had {
				if err := Invalidate(r); err != nil {
					h.log.Warn("session of a failed websocket handshake not destroyed", "session", manager.RedactID(s.ID()), "err", err)
				}
			}
			return
		}
		c := newConn(h, ws, hj.conn, user, s)
		if !h.register(c) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseGoingAway, "server shutting down"), time.Now().Add(time.Second))
			_ = ws.Close()
			return
		}
		defer h.wg.Done() // registered by register, for this reader
		// A session destroyed between the upgrade and the registration
		// was not seen by sessionDestroyed.
		if !s.Valid() && c.closeWith(ClosePolicy, "session invalidated", false) {
			h.stats.sessionClosed.Add(1)
		}
		go func() {
			defer h.wg.Done()
			c.writeLoop()
		}()
		c.serve()
		h.mu.Lock()
		delete(h.live, c)
		h.mu.Unlock()
	})
}

// register adds c to the tables and counts its two goroutines, unless the
// hub is closed.
func (h *Hub) register(c *Conn) bool {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return false
	}
	h.conns[c] = struct{}{}
	h.live[c] = struct{}{}
	set := h.users[c.user]
	if set == nil {
		set = make(map[*Conn]struct{})
		h.users[c.user] = set
	}
	set[c] = struct{}{}
	h.wg.Add(2)
	h.mu.Unlock()
	h.localChanged(c.user)
	return true
}

// unregister removes c from the tables: nothing is delivered to it any
// more. It is called once per socket, when it starts closing.
func (h *Hub) unregister(c *Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	if set := h.users[c.user]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.users, c.user)
		}
	}
	for t := range c.topics {
		if set := h.topics[t]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(h.topics, t)
			}
		}
	}
	c.topics = nil
	h.mu.Unlock()
	h.localChanged(c.user)
}

// Subscribe subscribes c to topic: c receives what is published to it.
func (h *Hub) Subscribe(c *Conn, topic string) error {
	if topic == "" || len(topic) > maxTopicLen {
		return ErrBadTopic
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; !ok {
		return ErrConnClosed
	}
	if _, ok := c.topics[topic]; ok {
		return nil
	}
	if len(c.topics) >= h.cfg.MaxTopics {
		return ErrTooManyTopics
	}
	if c.topics == nil {
		c.topics = make(map[string]struct{})
	}
	c.topics[topic] = struct{}{}
	set := h.topics[topic]
	if set == nil {
		set = make(map[*Conn]struct{})
		h.topics[topic] = set
	}
	set[c] = struct{}{}
	return nil
}

// Unsubscribe ends c's subscription to topic, if any.
func (h *Hub) Unsubscribe(c *Conn, topic string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := c.topics[topic]; !ok {
		return
	}
	delete(c.topics, topic)
	if set := h.topics[topic]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.topics, topic)
		}
	}
}

// SendToUser delivers msg as a text message to every socket of user, on
// whichever node, and returns how many sockets it reached. It sends to the
// nodes that presence says hold sockets of user, and waits for each to
// answer with its count (see the package documentation). The count is
// valid even with an error, which names the nodes that did not answer.
func (h *Hub) SendToUser(ctx context.Context, user string, msg []byte) (int, error) {
	return h.cluster(ctx, opUser, user, msg)
}

// SendToSession delivers msg to every socket bound to the HTTP session id
// (any route suffix: the base identifies the session), on every node, and
// returns how many sockets it reached.
func (h *Hub) SendToSession(ctx context.Context, sessionID string, msg []byte) (int, error) {
	return h.cluster(ctx, opSession, sessionID, msg)
}

// Publish delivers msg to every socket subscribed to topic, on every node,
// and returns how many sockets it reached. "Every node" is every node
// whose hub runs: one whose hub has not yet sent this node its presence
// (it is starting; it does within moments of its hub's start) is not
// waited for: its first sockets may miss a message published meanwhile.
func (h *Hub) Publish(ctx context.Context, topic string, msg []byte) (int, error) {
	return h.cluster(ctx, opTopic, topic, msg)
}

// PublishLocal delivers msg to this node's sockets subscribed to topic
// only, and returns how many it reached. It does not block.
func (h *Hub) PublishLocal(topic string, msg []byte) int {
	if h.isClosed() {
		return 0
	}
	return h.local(opTopic, topic, bytes.Clone(msg))
}

// CloseUser closes every socket of user, on every node, with 1008 (policy
// violation), and returns how many it closed.
func (h *Hub) CloseUser(ctx context.Context, user string) (int, error) {
	return h.cluster(ctx, opCloseUser, user, []byte("closed by the server"))
}

// cluster runs op here and on the nodes concerned, and adds up the
// sockets reached.
func (h *Hub) cluster(ctx context.Context, op byte, name string, payload []byte) (int, error) {
	if name == "" || len(name) > maxNameLen {
		return 0, fmt.Errorf("web: hub: name must be 1 to %d bytes", maxNameLen)
	}
	if h.isClosed() {
		return 0, ErrHubClosed
	}
	payload = bytes.Clone(payload) // queued to sockets after we return
	n := h.local(op, name, payload)
	if h.ch == nil {
		return n, nil
	}
	var to []string
	if op == opUser {
		to = h.nodesOf(name)
	} else {
		to = h.hubPeers()
	}
	if len(to) == 0 {
		return n, nil
	}
	m, err := h.remote(ctx, to, op, name, payload)
	return n + m, err
}

// local runs op on this node's sockets and returns how many it reached.
func (h *Hub) local(op byte, name string, payload []byte) int {
	var targets []*Conn
	h.mu.RLock()
	switch op {
	case opUser, opCloseUser:
		for c := range h.users[name] {
			targets = append(targets, c)
		}
	case opTopic:
		for c := range h.topics[name] {
			targets = append(targets, c)
		}
	case opSession:
		base, _ := manager.SplitID(name)
		for c := range h.conns {
			if c.sessionBase() == base {
				targets = append(targets, c)
			}
		}
	}
	h.mu.RUnlock()
	n := 0
	for _, c := range targets {
		if op == opCloseUser {
			if c.closeWith(ClosePolicy, string(payload), false) {
				n++
			}
			continue
		}
		if c.enqueue(payload) == nil {
			n++
		}
	}
	return n
}

// countPoll is how often a call waiting for counts checks that the peers
// it waits for are still connected.
const countPoll = 50 * time.Millisecond

// remote sends op to the peers to, and adds up the counts they answer
// with: each peer's handler runs op, then queues a kindCount answer back.
// The op goes out in Async mode, so a call costs one message each way;
// peers whose queueing failed are not waited for, nor are peers whose
// connection drops while we wait (checked every countPoll), so a crashed
// node does not hold the call until its deadline.
func (h *Hub) remote(ctx context.Context, to []string, op byte, name string, payload []byte) (int, error) {
	deadline := time.Now().Add(h.cfg.DeliverTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req := h.reqSeq.Add(1)
	w := &waiter{c: make(chan countReply, len(to))}
	h.wmu.Lock()
	h.waiters[req] = w
	h.wmu.Unlock()
	defer func() {
		h.wmu.Lock()
		delete(h.waiters, req)
		h.wmu.Unlock()
	}()
	body := appendHubMsg(nil, &hubMsg{Kind: kindOp, Req: req, Op: op, Name: name, Payload: payload})
	err := h.ch.Send(ctx, to, HubMsgType, body, replication.Async)
	expect := to
	if err != nil {
		failed := failedPeers(err)
		expect = slices.DeleteFunc(slices.Clone(to), func(r string) bool { return failed[r] })
		err = fmt.Errorf("web: hub: %w", err)
	} else {
		expect = slices.Clone(to)
	}
	n := 0
	answered := func(r countReply) {
		if i := slices.Index(expect, r.from); i >= 0 {
			expect = slices.Delete(expect, i, i+1)
			n += r.n
		}
	}
	giveUp := func(peer string, cause error) {
		expect = slices.DeleteFunc(expect, func(r string) bool { return r == peer })
		err = errors.Join(err, &replication.PeerError{Peer: peer, Op: "count", Err: cause})
	}
	var poll *time.Timer
	for len(expect) > 0 {
		select {
		case r := <-w.c:
			answered(r)
			continue
		default:
		}
		if poll == nil {
			poll = time.NewTimer(min(countPoll, time.Until(deadline)))
			defer poll.Stop()
		}
		select {
		case r := <-w.c:
			answered(r)
		case <-poll.C:
			late := time.Now().After(deadline)
			connected := map[string]bool{}
			for _, p := range h.ch.Stats().Peers {
				connected[p.Route] = p.Connected
			}
			for _, r := range slices.Clone(expect) {
				switch c, known := connected[r]; {
				case !known:
					giveUp(r, replication.ErrUnknownPeer) // removed from the channel meanwhile
				case !c:
					giveUp(r, replication.ErrPeerDown)
				case late:
					giveUp(r, ErrNoCount)
				}
			}
			poll.Reset(min(countPoll, max(time.Until(deadline), 0)))
		case <-ctx.Done():
			for _, r := range slices.Clone(expect) {
				giveUp(r, ctx.Err())
			}
			return n, err
		case <-h.done:
			return n, errors.Join(err, ErrHubClosed)
		}
	}
	return n, err
}

// failedPeers returns the peers named by the *replication.PeerError
// errors in err.
func failedPeers(err error) map[string]bool {
	if err == nil {
		return nil
	}
	out := map[string]bool{}
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if pe := (*replication.PeerError)(nil); errors.As(e, &pe) {
			out[pe.Peer] = true
		}
	}
	walk(err)
	return out
}

// receive handles a hub message from a peer, on that peer's replication
// receiver goroutine. It never blocks: deliveries are queued to sockets.
func (h *Hub) receive(from string, body []byte) error {
	m, err := decodeHubMsg(body)
	if err != nil {
		h.stats.badMessages.Add(1)
		h.log.Warn("bad hub message from peer", "peer", from, "err", err)
		return err
	}
	closed := h.isClosed()
	if closed && m.Kind != kindOp {
		return ErrHubClosed
	}
	switch m.Kind {
	case kindOp:
		n := 0 // a closed hub reaches no socket, and says so: its caller waits for every count
		if !closed {
			n = h.local(m.Op, m.Name, bytes.Clone(m.Payload))
		}
		reply := appendHubMsg(nil, &hubMsg{Kind: kindCount, Req: m.Req, N: uint64(n)})
		if err := h.ch.Send(context.Background(), []string{from}, HubMsgType, reply, replication.Async); err != nil {
			h.log.Debug("count not sent", "peer", from, "err", err)
			return err
		}
	case kindCount:
		h.wmu.Lock()
		w := h.waiters[m.Req]
		h.wmu.Unlock()
		if w != nil {
			select {
			case w.c <- countReply{from, int(min(m.N, 1<<31))}:
			default: // more answers than asked for: a confused peer
			}
		}
	case kindPresence:
		h.applyPresence(from, m.Reset, m.More, m.Entries)
	case kindAskPresence:
		h.pmu.Lock()
		if !h.down[from] {
			h.hubs[from] = true
		}
		h.asked[from] = true
		h.pmu.Unlock()
		h.poke()
	}
	return nil
}

// sessionDestroyed closes the sockets bound to s, on the goroutine that
// destroyed it (a request, the expiry sweep or the replication receiver).
func (h *Hub) sessionDestroyed(s *manager.Session, why manager.Reason) {
	base, _ := manager.SplitID(s.ID())
	var targets []*Conn
	h.mu.RLock()
	for c := range h.conns {
		if c.sessionBase() == base {
			targets = append(targets, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range targets {
		if c.closeWith(ClosePolicy, "session "+why.String(), false) {
			h.stats.sessionClosed.Add(1)
		}
	}
}

// Online reports whether user has a socket on any node.
func (h *Hub) Online(user string) bool {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	return len(h.presence[user]) > 0
}

// OnlineUsers returns the users with a socket on any node, sorted.
func (h *Hub) OnlineUsers() []string {
	h.pmu.Lock()
	out := slices.Collect(maps.Keys(h.presence))
	h.pmu.Unlock()
	slices.Sort(out)
	return out
}

// Presence returns, for user, the number of sockets on each node that has
// some, as this node knows it.
func (h *Hub) Presence(user string) map[string]int {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	out := make(map[string]int, len(h.presence[user]))
	for n, k := range h.presence[user] {
		out[n] = k
	}
	return out
}

// Stats returns the hub's counters.
func (h *Hub) Stats() HubStats {
	h.mu.RLock()
	st := HubStats{Sockets: len(h.conns), LocalUsers: len(h.users)}
	h.mu.RUnlock()
	h.pmu.Lock()
	st.OnlineUsers = len(h.presence)
	h.pmu.Unlock()
	st.Delivered = h.stats.delivered.Load()
	st.SlowConsumers = h.stats.slow.Load()
	st.IdleClosed = h.stats.idle.Load()
	st.SessionClosed = h.stats.sessionClosed.Load()
	st.BadPeerMessage = h.stats.badMessages.Load()
	return st
}

// PushHandler returns a handler for POST /push/{user}: the request body
// goes to every socket of the path's user (SendToUser) and the answer is
// {"reached": N}, with "error" when some node did not answer. Mount it
// with a pattern that has a {user} wildcard.
func (h *Hub) PushHandler() http.Handler {
	return h.postHandler("user", h.SendToUser)
}

// PublishHandler returns a handler for POST /publish/{topic}: the request
// body goes to every socket subscribed to the path's topic (Publish), and
// the answer is {"reached": N} as for PushHandler.
func (h *Hub) PublishHandler() http.Handler {
	return h.postHandler("topic", h.Publish)
}

func (h *Hub) postHandler(wildcard string, send func(context.Context, string, []byte) (int, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue(wildcard)
		if name == "" {
			http.Error(w, "missing {"+wildcard+"} in the path", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxMessageSize))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		n, err := send(r.Context(), name, body)
		if errors.Is(err, ErrHubClosed) {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		res := struct {
			Reached int    `json:"reached"`
			Error   string `json:"error,omitempty"`
		}{Reached: n}
		if err != nil {
			res.Error = err.Error()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
}
