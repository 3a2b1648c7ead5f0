package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/websocket"
)

// hubNode is one node of an in-process cluster: its manager cluster, the
// session middleware, the hub and an HTTP server with GET /ws?user=U,
// POST /push/{user} and POST /publish/{topic}.
type hubNode struct {
	route   string
	cluster *manager.Cluster
	hub     *web.Hub
	srv     *httptest.Server

	mu          sync.Mutex
	disconnects []disconnect
	messages    []string
	connects    map[string]*web.Conn // by user, the latest
}

type disconnect struct {
	user   string
	code   int
	reason string
}

func (n *hubNode) wsURL(user string) string {
	return "ws" + strings.TrimPrefix(n.srv.URL, "http") + "/ws?user=" + url.QueryEscape(user)
}

// disconnected returns the close code of user's latest disconnect, or
// -1.
func (n *hubNode) disconnected(user string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := len(n.disconnects) - 1; i >= 0; i-- {
		if n.disconnects[i].user == user {
			return n.disconnects[i].code
		}
	}
	return -1
}

func (n *hubNode) conn(user string) *web.Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connects[user]
}

// startHubCluster starts a Delta cluster of routes (testcluster.Start:
// every node ready and seeing the others as replication peers) with a hub
// and an HTTP server on each node. Everything is closed by t.Cleanup.
func startHubCluster(t testing.TB, edit func(route string, c *web.HubConfig), routes ...string) map[string]*hubNode {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	nodes := map[string]*hubNode{}
	clusters := testcluster.Start(t, nil, log, func(c *manager.ClusterConfig) { c.Kind = manager.KindDelta }, routes...)
	for i, r := range routes {
		nodes[r] = &hubNode{route: r, cluster: clusters[i], connects: map[string]*web.Conn{}}
	}
	for _, r := range routes {
		n := nodes[r]
		hc := web.DefaultHubConfig()
		hc.Logger = log.With("node", r)
		hc.OnConnect = func(c *web.Conn) {
			n.mu.Lock()
			n.connects[c.User()] = c
			n.mu.Unlock()
		}
		hc.OnDisconnect = func(c *web.Conn, code int, reason string) {
			n.mu.Lock()
			n.disconnects = append(n.disconnects, disconnect{c.User(), code, reason})
			n.mu.Unlock()
		}
		hc.OnMessage = func(c *web.Conn, msg []byte) {
			n.mu.Lock()
			n.messages = append(n.messages, c.User()+":"+string(msg))
			n.mu.Unlock()
		}
		if edit != nil {
			edit(r, &hc)
		}
		hub, err := web.NewHub(n.cluster, hc)
		if err != nil {
			t.Fatal(err)
		}
		wc := web.DefaultConfig()
		wc.Route, wc.Logger = r, log.With("node", r)
		sessions, err := web.New(n.cluster.Manager(), wc)
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /ws", hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") }))
		mux.Handle("POST /push/{user}", hub.PushHandler())
		mux.Handle("POST /publish/{topic}", hub.PublishHandler())
		n.hub, n.srv = hub, httptest.NewServer(sessions.Middleware(mux))
		t.Cleanup(func() {
			_ = hub.Close()
			n.srv.Close()
		})
	}
	// Every hub knows every other is running: cluster-wide operations go
	// only to those (see TestNodeWithoutAHubIsNotWaitedFor).
	for _, n := range nodes {
		waitFor(t, n.route+"'s hub hearing every other hub", func() bool { return len(web.HubPeers(n.hub)) == len(routes)-1 })
	}
	return nodes
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// client is a test WebSocket client whose reader goroutine queues what it
// receives.
type client struct {
	t    testing.TB
	ws   *websocket.Conn
	resp *http.Response
	msgs chan string
	done chan struct{} // closed when the reader stops
	err  error         // why it stopped, once done
}

func dial(t testing.TB, n *hubNode, user string) *client {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial(n.wsURL(user), nil)
	if err != nil {
		t.Fatalf("dial %s as %s: %v", n.route, user, err)
	}
	c := &client{t: t, ws: ws, resp: resp, msgs: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			c.msgs <- string(msg)
		}
	}()
	t.Cleanup(func() {
		_ = ws.Close()
		<-c.done
	})
	return c
}

// next returns the next message, failing after 10s.
func (c *client) next() string {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-c.done:
		c.t.Fatalf("connection closed while waiting for a message: %v", c.err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no message after 10s")
	}
	return ""
}

// expect fails unless the next message is want.
func (c *client) expect(want string) {
	c.t.Helper()
	if got := c.next(); got != want {
		c.t.Fatalf("received %q, want %q", got, want)
	}
}

func (c *client) write(msg string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) subscribe(topic string) {
	c.t.Helper()
	c.write(`{"subscribe":` + strconvQuote(topic) + `}`)
	c.expect(`{"subscribed":` + strconvQuote(topic) + `}`)
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// closeCode waits until the server has closed the connection and returns
// the close code the client received.
func (c *client) closeCode() int {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Fatal("connection still open after 10s")
	}
	var ce *websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code
	}
	c.t.Fatalf("connection ended without a close frame: %v", c.err)
	return 0
}

// waitOnline waits until every node in ns sees user with want sockets in
// total.
func waitOnline(t testing.TB, user string, want int, ns ...*hubNode) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s with %d sockets everywhere", user, want), func() bool {
		for _, n := range ns {
			total := 0
			for _, k := range n.hub.Presence(user) {
				total += k
			}
			if total != want {
				return false
			}
		}
		return true
	})
}

func TestHubSendToUserAcrossNodes(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a", "b", "c")
	a, b, c := nodes["a"], nodes["b"], nodes["c"]
	ctx := t.Context()

	alice := dial(t, a, "alice")
	if !slices.ContainsFunc(alice.resp.Cookies(), func(c *http.Cookie) bool { return c.Name == "JSESSIONID" && strings.HasSuffix(c.Value, ".a") }) {
		t.Errorf("handshake response sets no session cookie: %v", alice.resp.Header["Set-Cookie"])
	}
	waitOnline(t, "alice", 1, a, b, c)
	if !c.hub.Online("alice") || !slices.Contains(c.hub.OnlineUsers(), "alice") {
		t.Fatalf("c: alice not online: %v", c.hub.OnlineUsers())
	}
	n, err := c.hub.SendToUser(ctx, "alice", []byte("hello from c"))
	if err != nil || n != 1 {
		t.Fatalf("SendToUser on c = %d, %v; want 1, nil", n, err)
	}
	alice.expect("hello from c")
	if n, err := a.hub.SendToUser(ctx, "alice", []byte("local")); err != nil || n != 1 {
		t.Fatalf("SendToUser on a = %d, %v; want 1, nil", n, err)
	}
	alice.expect("local")
	if n, err := b.hub.SendToUser(ctx, "nobody", []byte("x")); err != nil || n != 0 {
		t.Fatalf("SendToUser to an offline user = %d, %v; want 0, nil", n, err)
	}

	// The same session's socket answers SendToSession from another node.
	var sid string
	for _, ck := range alice.resp.Cookies() {
		if ck.Name == "JSESSIONID" {
			sid = ck.Value
		}
	}
	if n, err := b.hub.SendToSession(ctx, sid, []byte("to the session")); err != nil || n != 1 {
		t.Fatalf("SendToSession on b = %d, %v; want 1, nil", n, err)
	}
	alice.expect("to the session")

	// Application messages reach OnMessage with the user.
	alice.write("hi there")
	waitFor(t, "OnMessage on a", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.messages, "alice:hi there")
	})

	// Disconnecting takes alice out of presence everywhere.
	_ = alice.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	waitOnline(t, "alice", 0, a, b, c)
	waitFor(t, "OnDisconnect on a", func() bool { return a.disconnected("alice") == websocket.CloseNormalClosure })
}

func TestHubPublishReachesEveryNode(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a", "b", "c")
	a, b, c := nodes["a"], nodes["b"], nodes["c"]
	subs := []*client{dial(t, a, "u1"), dial(t, a, "u2"), dial(t, b, "u3"), dial(t, c, "u4")}
	for _, s := range subs {
		s.subscribe("news")
	}
	other := dial(t, c, "u5")
	other.subscribe("sport")

	n, err := b.hub.Publish(t.Context(), "news", []byte("headline"))
	if err != nil || n != len(subs) {
		t.Fatalf("Publish = %d, %v; want %d, nil", n, err, len(subs))
	}
	for _, s := range subs {
		s.expect("headline")
	}
	// Over HTTP, and after one unsubscribes.
	subs[2].write(`{"unsubscribe":"news"}`)
	subs[2].expect(`{"unsubscribed":"news"}`)
	resp, err := http.Post(c.srv.URL+"/publish/news", "text/plain", strings.NewReader("second"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.TrimSpace(string(body)); got != `{"reached":3}` {
		t.Fatalf("POST /publish/news = %s %s, want {\"reached\":3}", resp.Status, got)
	}
	for _, s := range []*client{subs[0], subs[1], subs[3]} {
		s.expect("second")
	}
	// sport's subscriber got neither; a sport message comes first.
	if n, _ := a.hub.Publish(t.Context(), "sport", []byte("goal")); n != 1 {
		t.Fatalf("Publish sport = %d, want 1", n)
	}
	other.expect("goal")
	if n := c.hub.PublishLocal("news", []byte("local only")); n != 1 {
		t.Fatalf("PublishLocal on c = %d, want 1", n)
	}
	subs[3].expect("local only")
	// A malformed control message is an application message.
	subs[0].write(`{"subscribe":42}`)
	waitFor(t, "OnMessage", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.messages, `u1:{"subscribe":42}`)
	})
}

func TestHubUserOnTwoNodes(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a", "b", "c")
	a, b, c := nodes["a"], nodes["b"], nodes["c"]
	onA, onB := dial(t, a, "bob"), dial(t, b, "bob")
	waitOnline(t, "bob", 2, a, b, c)
	if got := c.hub.Presence("bob"); got["a"] != 1 || got["b"] != 1 || len(got) != 2 {
		t.Fatalf("presence of bob on c = %v", got)
	}
	n, err := c.hub.SendToUser(t.Context(), "bob", []byte("to both"))
	if err != nil || n != 2 {
		t.Fatalf("SendToUser = %d, %v; want 2, nil", n, err)
	}
	onA.expect("to both")
	onB.expect("to both")
	// Once each, and the same over POST /push/bob on a.
	resp, err := http.Post(a.srv.URL+"/push/bob", "text/plain", strings.NewReader("pushed"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.TrimSpace(string(body)); got != `{"reached":2}` {
		t.Fatalf("POST /push/bob = %s %s", resp.Status, got)
	}
	onA.expect("pushed")
	onB.expect("pushed")
}

func TestHubFailedNodeLeavesPresence(t *testing.T) {
	leaktest.Check(t)
	var mu sync.Mutex
	offline := map[string][]string{} // node -> users seen going offline
	nodes := startHubCluster(t, func(route string, c *web.HubConfig) {
		c.OnPresence = func(user string, online bool) {
			if !online {
				mu.Lock()
				offline[route] = append(offline[route], user)
				mu.Unlock()
			}
		}
	}, "a", "b", "c")
	a, b, c := nodes["a"], nodes["b"], nodes["c"]
	dial(t, b, "carol")
	dial(t, b, "dave")
	dial(t, a, "dave")
	waitOnline(t, "carol", 1, a, c)
	waitOnline(t, "dave", 2, a, c)

	// b crashes: no leave, no goodbye on the channel.
	_ = b.cluster.Membership().Close()
	_ = b.cluster.Channel().Close()
	_ = b.hub.Close()
	b.srv.Close()

	// Until b is declared failed, calls that include it do not wait for
	// its count: its connection is down. One that waited would end in
	// ErrNoCount after DeliverTimeout.
	_, err := a.hub.Publish(t.Context(), "anything", []byte("x"))
	t.Logf("Publish with b down: %v", err)
	if err != nil && !errors.Is(err, replication.ErrPeerDown) && !errors.Is(err, replication.ErrUnknownPeer) {
		t.Errorf("Publish with b down: %v", err)
	}

	waitOnline(t, "carol", 0, a, c)
	waitOnline(t, "dave", 1, a, c)
	for _, n := range []*hubNode{a, c} {
		if n.hub.Online("carol") || !n.hub.Online("dave") {
			t.Errorf("%s: carol online %v, dave online %v; want false, true", n.route, n.hub.Online("carol"), n.hub.Online("dave"))
		}
	}
	waitFor(t, "OnPresence(carol, false) on a and c", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(offline["a"], "carol") && slices.Contains(offline["c"], "carol")
	})
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(offline["a"], "dave") || slices.Contains(offline["c"], "dave") {
		t.Errorf("dave, still on a, went offline: %v", offline)
	}
}

func TestHubInvalidatedSessionClosesSocket(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a", "b", "c")
	a, c := nodes["a"], nodes["c"]
	erin := dial(t, a, "erin")
	var sid string
	for _, ck := range erin.resp.Cookies() {
		if ck.Name == "JSESSIONID" {
			sid = ck.Value
		}
	}
	if sid == "" {
		t.Fatal("no session cookie on the handshake")
	}
	// Invalidate on c, once c has the session.
	waitFor(t, "c to invalidate the session", func() bool {
		err := c.cluster.Manager().Invalidate(t.Context(), sid)
		return !errors.Is(err, manager.ErrNotFound)
	})
	if code := erin.closeCode(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d, want 1008", code)
	}
	waitFor(t, "OnDisconnect", func() bool { return a.disconnected("erin") == websocket.ClosePolicyViolation })
	waitOnline(t, "erin", 0, a, c)
}

func TestHubSlowConsumerIsCutOff(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) {
		c.SendBuffer = 4
		c.WriteWait = time.Minute // a write blocked on the slow client would outlast waitFor
	}, "a", "b", "c")
	a, b := nodes["a"], nodes["b"]
	// The slow client never reads.
	slow, _, err := websocket.DefaultDialer.Dial(a.wsURL("slow"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slow.Close() })
	if err := slow.WriteMessage(websocket.TextMessage, []byte(`{"subscribe":"feed"}`)); err != nil {
		t.Fatal(err)
	}
	// The fast ones, on a and on b, count what they receive.
	var got atomic.Int64
	var fast []*websocket.Conn
	var wg sync.WaitGroup
	for _, n := range []*hubNode{a, b} {
		ws, _, err := websocket.DefaultDialer.Dial(n.wsURL("fast-"+n.route), nil)
		if err != nil {
			t.Fatal(err)
		}
		fast = append(fast, ws)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"subscribe":"feed"}`)); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != `{"subscribed":"feed"}` {
			t.Fatalf("subscribe answer %q, %v", msg, err)
		}
		wg.Go(func() {
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
				got.Add(1)
			}
		})
	}
	t.Cleanup(func() {
		for _, ws := range fast {
			_ = ws.Close()
		}
		wg.Wait()
	})
	waitFor(t, "the slow subscription", func() bool {
		c := a.conn("slow")
		return c != nil && len(c.Topics()) == 1
	})

	// Publish one message at a time, each as soon as both fast sockets
	// have the previous one, until a cuts the slow one off: its buffer of
	// 4 fills once the TCP buffers between it and a are full.
	msg := bytes.Repeat([]byte("x"), 32<<10)
	sent := 0
	var slowest time.Duration
	start := time.Now()
	for a.disconnected("slow") < 0 {
		if sent == 20000 {
			t.Fatal("the slow consumer was never cut off")
		}
		t0 := time.Now()
		n, err := b.hub.Publish(t.Context(), "feed", msg)
		if err != nil {
			t.Fatal(err)
		}
		if n < 2 {
			t.Fatalf("Publish reached %d sockets, want at least the 2 fast ones", n)
		}
		sent++
		waitFor(t, "both fast sockets to have the message", func() bool { return got.Load() == int64(2*sent) })
		slowest = max(slowest, time.Since(t0))
	}
	if code := a.disconnected("slow"); code != websocket.CloseTryAgainLater {
		t.Fatalf("slow consumer closed with %d, want 1013", code)
	}
	t.Logf("slow consumer cut off after %d messages of %d KiB in %v; slowest delivery to the others %v", sent, len(msg)>>10, time.Since(start), slowest)
	if st := a.hub.Stats(); st.SlowConsumers != 1 {
		t.Errorf("SlowConsumers = %d, want 1", st.SlowConsumers)
	}
}

// An abort (a slow consumer's) that comes while the writer is about to
// write is not undone by the deadline of that write: a writer that sees it
// sends the close frame instead (1013), and the write of one that does not
// fails at once, however long WriteWait. Either way, nothing is written
// after the abort.
func TestHubAbortBeforeAWrite(t *testing.T) {
	for _, tc := range []struct {
		name          string
		ping, checked bool
		want          int // the client's close code
	}{
		{"message, before the writer checks", false, false, websocket.CloseTryAgainLater},
		{"message, after the writer checked", false, true, websocket.CloseAbnormalClosure},
		{"ping, before the writer checks", true, false, websocket.CloseTryAgainLater},
		{"ping, after the writer checked", true, true, websocket.CloseAbnormalClosure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaktest.Check(t)
			nodes := startHubCluster(t, func(_ string, c *web.HubConfig) {
				if tc.ping {
					c.PingPeriod = 10 * time.Millisecond
				}
			}, "a")
			a := nodes["a"]
			web.AbortBeforeWrite(a.hub, tc.ping, tc.checked)
			ws, _, err := websocket.DefaultDialer.Dial(a.wsURL("u"), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ws.Close() })
			pinged := false // read by the reader's ping handler, on this goroutine
			ws.SetPingHandler(func(string) error { pinged = true; return nil })
			if !tc.ping {
				waitFor(t, "the socket registered", func() bool { return a.conn("u") != nil })
				if err := a.conn("u").Send([]byte("after the abort")); err != nil {
					t.Fatal(err)
				}
			}
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard
			_, msg, err := ws.ReadMessage()
			if err == nil {
				t.Fatalf("the client received %q, written after the abort", msg)
			}
			if pinged {
				t.Fatal("the client received a ping written after the abort")
			}
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.want {
				t.Fatalf("the client's read ended with %v, want close code %d", err, tc.want)
			}
			waitFor(t, "OnDisconnect", func() bool { return a.disconnected("u") == websocket.CloseTryAgainLater })
		})
	}
}

func TestHubIdleTimeout(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) {
		c.IdleTimeout = 300 * time.Millisecond
	}, "a")
	a := nodes["a"]

	idle := dial(t, a, "idle")
	busy := dial(t, a, "busy")
	// busy keeps talking, idle does not.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if busy.ws.WriteMessage(websocket.TextMessage, []byte("ping")) != nil {
					return
				}
			}
		}
	})
	if code := idle.closeCode(); code != websocket.CloseNormalClosure {
		t.Fatalf("idle socket closed with %d, want 1000", code)
	}
	select {
	case <-busy.done:
		t.Fatalf("a busy socket was closed: %v", busy.err)
	default:
	}
	close(stop)
	wg.Wait()
	if st := a.hub.Stats(); st.IdleClosed != 1 {
		t.Errorf("IdleClosed = %d, want 1", st.IdleClosed)
	}
}

func TestHubCloseUserAndConn(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a", "b", "c")
	a, b, c := nodes["a"], nodes["b"], nodes["c"]

	// CloseUser from c closes frank's sockets on a and b.
	f1, f2 := dial(t, a, "frank"), dial(t, b, "frank")
	waitOnline(t, "frank", 2, c)
	n, err := c.hub.CloseUser(t.Context(), "frank")
	if err != nil || n != 2 {
		t.Fatalf("CloseUser = %d, %v; want 2, nil", n, err)
	}
	for _, f := range []*client{f1, f2} {
		if code := f.closeCode(); code != websocket.ClosePolicyViolation {
			t.Fatalf("CloseUser: close code %d, want 1008", code)
		}
	}
	waitOnline(t, "frank", 0, a, b, c)
	// One socket, closed by the server with its own code.
	g := dial(t, b, "grace")
	waitFor(t, "grace's conn", func() bool { return b.conn("grace") != nil })
	b.conn("grace").Close(4000, "bye")
	if code := g.closeCode(); code != 4000 {
		t.Fatalf("Conn.Close: close code %d, want 4000", code)
	}
	// Closing the hub closes its sockets with 1001, and refuses new ones.
	h := dial(t, c, "heidi")
	_ = c.hub.Close()
	if code := h.closeCode(); code != websocket.CloseGoingAway {
		t.Fatalf("Hub.Close: close code %d, want 1001", code)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(c.wsURL("ivan"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial a closed hub: %v, want 503", err)
	}
	if _, err := c.hub.SendToUser(t.Context(), "heidi", nil); !errors.Is(err, web.ErrHubClosed) {
		t.Errorf("SendToUser on a closed hub: %v, want ErrHubClosed", err)
	}
}

func TestHubSessionKeptAliveAndHandshakeChecks(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) {
		c.TouchInterval = time.Millisecond
	}, "a", "b")
	a, b := nodes["a"], nodes["b"]
	h := dial(t, a, "heidi")
	var sid string
	for _, ck := range h.resp.Cookies() {
		if ck.Name == "JSESSIONID" {
			sid = ck.Value
		}
	}
	s, err := a.cluster.Manager().Find(t.Context(), sid)
	if err != nil {
		t.Fatal(err)
	}
	before := s.LastAccess()
	waitFor(t, "the socket's activity to touch the session", func() bool {
		h.write("activity")
		return a.cluster.Lookup(sid).LastAccess().After(before)
	})
	if got := a.conn("heidi").SessionID(); got != sid {
		t.Errorf("Conn.SessionID = %q, want %q", got, sid)
	}

	// A cross-origin handshake is refused; a request without a user too.
	hdr := http.Header{"Origin": {"http://evil.example"}}
	if _, resp, err := websocket.DefaultDialer.Dial(b.wsURL("mallory"), hdr); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin handshake: %v %v, want 403", resp, err)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(b.wsURL(""), nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("handshake without a user: %v %v, want 401", resp, err)
	}
	// A message over MaxMessageSize closes the socket with 1009.
	h.write(strings.Repeat("x", int(web.DefaultHubConfig().MaxMessageSize)+1))
	if code := h.closeCode(); code != websocket.CloseMessageTooBig {
		t.Errorf("oversized message: close code %d, want 1009", code)
	}
}

// unhijackable hides the connection of the response writer it wraps: an
// upgrade through it fails after every check of the request passed.
type unhijackable struct{ http.ResponseWriter }

// A handshake that the upgrader refuses makes no session: the hub makes the
// upgrader's checks first, and answers as the upgrader does. One that
// fails later destroys the session it made, but not one it arrived with.
func TestHubRefusedHandshakeMakesNoSession(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, nil, "a")
	a := nodes["a"]
	mgr := a.cluster.Manager()
	var created, destroyed atomic.Int64
	mgr.AddListener(manager.Listener{
		Created:   func(*manager.Session) { created.Add(1) },
		Destroyed: func(*manager.Session, manager.Reason) { destroyed.Add(1) },
	})
	// gorilla's Upgrader, answering as the hub's does, for comparison.
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := websocket.Upgrader{Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		}}
		if ws, err := u.Upgrade(w, r, nil); err == nil {
			_ = ws.Close()
		}
	}))
	t.Cleanup(bare.Close)
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	handshake := func(url string, edit func(r *http.Request)) (int, string) {
		t.Helper()
		r, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		if edit != nil {
			edit(r)
		}
		resp, err := tr.RoundTrip(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		name string
		edit func(r *http.Request)
	}{
		{"version 8", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }},
		{"no version", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Version") }},
		{"key of 15 bytes", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA") }},
		{"key not base64", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "not a base64 key!") }},
		{"no key", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }},
		{"HEAD", func(r *http.Request) { r.Method = http.MethodHead }},
		{"cross origin", func(r *http.Request) { r.Header.Set("Origin", "http://evil.example") }},
	} {
		status, body := handshake(a.srv.URL+"/ws?user=mallory", tc.edit)
		wantStatus, wantBody := handshake(bare.URL, tc.edit)
		if wantStatus < 400 {
			t.Fatalf("%s: gorilla's Upgrader answered %d", tc.name, wantStatus)
		}
		if status != wantStatus || body != wantBody {
			t.Errorf("%s: the hub answered %d %q, want gorilla's %d %q", tc.name, status, body, wantStatus, wantBody)
		}
		if n := created.Load(); n != 0 {
			t.Fatalf("%s: %d sessions created", tc.name, n)
		}
	}
	if n := mgr.Count(); n != 0 {
		t.Fatalf("the manager holds %d sessions after refused handshakes, want 0", n)
	}

	// A handshake whose upgrade fails once the request passed the checks:
	// here, the connection cannot be hijacked.
	wc := web.DefaultConfig()
	wc.Route = "a"
	sessions, err := web.New(mgr, wc)
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{}, 1)
	ws := a.hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") })
	broken := httptest.NewServer(sessions.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { returned <- struct{}{} }()
		ws.ServeHTTP(unhijackable{w}, r)
	})))
	t.Cleanup(broken.Close)
	failed := func(edit func(r *http.Request)) {
		t.Helper()
		if status, _ := handshake(broken.URL+"/ws?user=mallory", edit); status != http.StatusInternalServerError {
			t.Fatalf("an upgrade that cannot hijack answered %d, want 500", status)
		}
		select {
		case <-returned:
		case <-time.After(10 * time.Second): // a hang guard
			t.Fatal("the handler did not return")
		}
	}
	failed(nil)
	if c, d, n := created.Load(), destroyed.Load(), mgr.Count(); c != 1 || d != 1 || n != 0 {
		t.Fatalf("after a failed upgrade: %d sessions created, %d destroyed, %d held; want 1, 1, 0", c, d, n)
	}
	// With the session it arrived with, which stays.
	erin := dial(t, a, "erin")
	var sid string
	for _, ck := range erin.resp.Cookies() {
		if ck.Name == "JSESSIONID" {
			sid = ck.Value
		}
	}
	failed(func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: sid}) })
	if _, err := mgr.Find(t.Context(), sid); err != nil || destroyed.Load() != 1 {
		t.Fatalf("the session a failed upgrade arrived with: %v, %d destroyed; want it kept", err, destroyed.Load())
	}
}

// A closed hub is no longer a listener of its manager: a manager that
// outlives hubs made and closed on its node neither keeps them nor calls
// them when a session is destroyed.
func TestClosedHubLeavesTheManager(t *testing.T) {
	leaktest.Check(t)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	c := testcluster.Start(t, nil, log, func(c *manager.ClusterConfig) { c.Kind = manager.KindDelta }, "a")[0]
	const closed = 3
	collected := make(chan struct{}, closed)
	for range closed {
		closedHub(t, c, collected)
	}
	// The channel keeps the handler of the latest hub: this one replaces
	// the last closed one's.
	h, err := web.NewHub(c, web.DefaultHubConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	// Freed, a hub can no longer be called.
	deadline := time.Now().Add(10 * time.Second) // a hang guard
	for n := 0; n < closed; {
		runtime.GC()
		select {
		case <-collected:
			n++
			continue
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d closed hubs are still reachable", closed-n, closed)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedHub makes a hub on c and closes it; collected hears when the
// garbage collector has freed it.
func closedHub(t *testing.T, c *manager.Cluster, collected chan<- struct{}) {
	t.Helper()
	h, err := web.NewHub(c, web.DefaultHubConfig())
	if err != nil {
		t.Fatal(err)
	}
	runtime.AddCleanup(h, func(ch chan<- struct{}) { ch <- struct{}{} }, collected)
	_ = h.Close()
}

func TestHubConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*web.HubConfig)
		field string
	}{
		{"send buffer", func(c *web.HubConfig) { c.SendBuffer = 0 }, "SendBuffer"},
		{"ping after pong", func(c *web.HubConfig) { c.PingPeriod = c.PongWait }, "PingPeriod"},
		{"negative idle", func(c *web.HubConfig) { c.IdleTimeout = -1 }, "IdleTimeout"},
		{"write wait", func(c *web.HubConfig) { c.WriteWait = 0 }, "WriteWait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := web.DefaultHubConfig()
			tc.edit(&c)
			_, err := web.NewHub(nil, c)
			var ce *web.HubConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("NewHub = %v, want a *HubConfigError on %s", err, tc.field)
			}
		})
	}
}

// Conn.Close cuts a long reason on a character boundary: a reason cut
// inside a character is invalid UTF-8, and the client would see a protocol
// error instead of the close code.
func TestCloseReasonCutOnACharacter(t *testing.T) {
	nodes := startHubCluster(t, nil, "a")
	a := nodes["a"]
	cl := dial(t, a, "u")
	waitFor(t, "the socket registered", func() bool { return a.conn("u") != nil })
	a.conn("u").Close(4001, "xx"+strings.Repeat("é", 100)) // byte 123 is inside an é
	<-cl.done
	var ce *websocket.CloseError
	if !errors.As(cl.err, &ce) || ce.Code != 4001 {
		t.Errorf("client saw %v, want a close with 4001", cl.err)
	}
}

// An OnMessage that blocks longer than PongWait holds back its socket's
// later messages only: the socket, whose client answers pings, stays open.
func TestBlockingOnMessageKeepsTheSocket(t *testing.T) {
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) {
		c.PongWait = 400 * time.Millisecond
		c.PingPeriod = 100 * time.Millisecond
		prev := c.OnMessage
		c.OnMessage = func(cn *web.Conn, msg []byte) {
			if string(msg) == "slow" {
				time.Sleep(time.Second)
			}
			prev(cn, msg)
		}
	}, "a")
	a := nodes["a"]
	cl := dial(t, a, "u") // its reader answers pings
	cl.write("slow")
	waitFor(t, "the slow message handled", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.messages, "u:slow")
	})
	cl.write("after") // sent once the reader reads the socket again
	waitFor(t, "the message after the slow one read", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return slices.Contains(a.messages, "u:after")
	})
	a.mu.Lock()
	ds := append([]disconnect(nil), a.disconnects...)
	a.mu.Unlock()
	if len(ds) > 0 {
		t.Errorf("the socket closed while OnMessage blocked past PongWait: %+v", ds)
	}
}

// A node whose hub is closed while its cluster still runs (a node
// stopping: its hub closes first) answers a cluster-wide operation with
// no socket reached, so the caller does not wait out DeliverTimeout.
func TestClosedHubAnswersOperations(t *testing.T) {
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) { c.DeliverTimeout = time.Hour }, "a", "b")
	a, b := nodes["a"], nodes["b"]
	cl := dial(t, a, "u")
	waitOnline(t, "u", 1, a, b)
	if err := b.hub.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	n, err := a.hub.SendToUser(ctx, "u", []byte("still here"))
	if n != 1 || err != nil {
		t.Errorf("SendToUser with b's hub closed = %d, %v; want 1, nil", n, err)
	}
	cl.expect("still here")
	if n, err := a.hub.Publish(ctx, "news", []byte("x")); n != 0 || err != nil {
		t.Errorf("Publish with b's hub closed = %d, %v; want 0, nil", n, err)
	}
}

// A peer's periodic refresh of its whole presence replaces its counts
// without reporting its users gone and back: OnPresence hears a user who
// connected once, and never left, come online once.
func TestPresenceRefreshDoesNotFlap(t *testing.T) {
	var mu sync.Mutex
	var calls []bool
	nodes := startHubCluster(t, func(route string, c *web.HubConfig) {
		c.PresenceRefresh = 100 * time.Millisecond
		if route == "a" {
			c.OnPresence = func(user string, online bool) {
				mu.Lock()
				calls = append(calls, online)
				mu.Unlock()
			}
		}
	}, "a", "b")
	a, b := nodes["a"], nodes["b"]
	dial(t, b, "zoe")
	waitOnline(t, "zoe", 1, a)
	time.Sleep(1500 * time.Millisecond) // about fifteen refreshes both ways
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, []bool{true}) {
		t.Errorf("OnPresence(zoe) on a: %v; want one true", calls)
	}
}

// A node of the cluster whose hub is not running (not started yet) is
// left out of cluster-wide operations: it would drop them, and the caller
// wait out DeliverTimeout for its count.
func TestNodeWithoutAHubIsNotWaitedFor(t *testing.T) {
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	clusters := testcluster.Start(t, nil, log, func(c *manager.ClusterConfig) { c.Kind = manager.KindDelta }, "a", "b")
	hc := web.DefaultHubConfig()
	hc.Logger, hc.DeliverTimeout = log, time.Hour
	hub, err := web.NewHub(clusters[0], hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hub.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, op := range []func() (int, error){
		func() (int, error) { return hub.Publish(ctx, "news", []byte("x")) },
		func() (int, error) { return hub.CloseUser(ctx, "u") },
	} {
		if n, err := op(); n != 0 || err != nil {
			t.Errorf("with b's hub not running: %d, %v; want 0, nil", n, err)
		}
	}
}

// DeliverTimeout bounds a call whose context has a later deadline: a
// peer that never answers with its count holds the call for
// DeliverTimeout, not until the context's deadline.
func TestDeliverTimeoutBoundsALaterDeadline(t *testing.T) {
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) { c.DeliverTimeout = 200 * time.Millisecond }, "a", "b")
	a, b := nodes["a"], nodes["b"]
	dial(t, b, "u")
	waitOnline(t, "u", 1, a)
	// b stays connected but its hub answers nothing any more.
	b.cluster.Channel().Handle(web.HubMsgType, func(string, []byte) error { return nil })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// Held until the context's deadline, the call would end in
	// context.DeadlineExceeded.
	n, err := a.hub.SendToUser(ctx, "u", []byte("x"))
	if n != 0 || !errors.Is(err, web.ErrNoCount) {
		t.Errorf("SendToUser with a silent peer = %d, %v; want 0, ErrNoCount", n, err)
	}
}

// A node that restarts at its address faster than membership declares it
// failed is seen as a member whose start time changed: the sockets of its
// earlier incarnation are gone, so their users go offline at once, and its
// new incarnation, whose hub does not run yet, is not waited for by
// cluster-wide operations.
func TestHubRestartedNodeForgetsItsEarlierSockets(t *testing.T) {
	leaktest.Check(t)
	nodes := startHubCluster(t, func(_ string, c *web.HubConfig) { c.DeliverTimeout = 5 * time.Second }, "a", "b")
	a, b := nodes["a"], nodes["b"]
	dial(t, b, "w")
	waitOnline(t, "w", 1, a)
	started := func() time.Time {
		for _, m := range a.cluster.Membership().Members() {
			if m.Name == "b" && m.State == membership.StateAlive {
				return m.Meta.Started
			}
		}
		return time.Time{}
	}
	before := started()
	gossip, repl := b.cluster.Membership().Addr().String(), b.cluster.Channel().Addr().String()
	// b crashes, and starts again at once at the same addresses, without
	// its hub for now.
	_ = b.cluster.Membership().Close()
	_ = b.cluster.Channel().Close()
	_ = b.hub.Close()
	b.srv.Close()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := manager.DefaultClusterConfig()
	cfg.Kind = manager.KindDelta
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route, cfg.Membership.BindAddr, cfg.Membership.Logger = "b", gossip, log.With("node", "b2")
	cfg.Membership.Join = []string{a.cluster.Membership().Addr().String()}
	cfg.Replication.Addr = repl
	cfg.JoinWait = 300 * time.Millisecond
	b2, err := manager.StartCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b2.Close(context.Background()) })
	waitFor(t, "a to see b's new incarnation", func() bool {
		s := started()
		return !s.IsZero() && !s.Equal(before)
	})
	deadline := time.Now().Add(3 * time.Second)
	for a.hub.Online("w") {
		if time.Now().After(deadline) {
			t.Fatalf("w, whose socket died with b's earlier incarnation, still online on a: %v", a.hub.Presence("w"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// One that waited for b's count would end in ErrNoCount.
	if n, err := a.hub.Publish(t.Context(), "news", []byte("x")); n != 0 || err != nil {
		t.Errorf("Publish with b's new hub not running = %d, %v; want 0, nil", n, err)
	}

	// Its hub starts: its sockets are seen again.
	hc := web.DefaultHubConfig()
	hc.Logger = log.With("node", "b2")
	hub, err := web.NewHub(b2, hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hub.Close() })
	wc := web.DefaultConfig()
	wc.Route = "b"
	sessions, err := web.New(b2.Manager(), wc)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sessions.Middleware(hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") })))
	t.Cleanup(srv.Close)
	nb := &hubNode{route: "b", cluster: b2, hub: hub, srv: srv}
	v := dial(t, nb, "v")
	waitOnline(t, "v", 1, a, nb)
	if n, err := a.hub.SendToUser(t.Context(), "v", []byte("welcome back")); n != 1 || err != nil {
		t.Errorf("SendToUser to b's new incarnation = %d, %v; want 1, nil", n, err)
	}
	v.expect("welcome back")
	if a.hub.Online("w") {
		t.Errorf("w online again on a: %v", a.hub.Presence("w"))
	}
}
