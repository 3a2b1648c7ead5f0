package web_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/websocket"
)

// After RenewID at login, the id planted before it (session fixation)
// reaches nothing, and a request carrying it is not handed the new id;
// with a grace period configured, the old id finds the session for a
// while, but still never learns the new id.
func TestRenewIDDefeatsFixation(t *testing.T) {
	for _, grace := range []bool{false, true} {
		c := manager.DefaultConfig()
		c.Route, c.Logger = "node1", quiet()
		if grace {
			c.IDGracePeriod = 1 << 62
		}
		m, err := manager.NewStandard(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close(context.Background()) })
		mux := http.NewServeMux()
		mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) { _, _ = web.Get(r) })
		mux.Handle("GET /login", login(t))
		mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
			s, _ := web.Get(r)
			_, _ = io.WriteString(w, "principal="+s.Principal())
		})
		h := middleware(t, m, "node1", nil).Middleware(mux)
		do := func(path, id string) *http.Response { return serveWithID(h, path, id) }
		fixed := do("/start", "").Cookies()[0].Value
		renewed := do("/login", fixed).Cookies()[0].Value
		resp := do("/whoami", fixed)
		body, _ := io.ReadAll(resp.Body)
		if want := map[bool]string{false: "principal=", true: "principal=alice"}[grace]; string(body) != want {
			t.Errorf("grace %v: the planted id reads %q, want %q", grace, body, want)
		}
		for _, c := range resp.Cookies() {
			if c.Value == renewed {
				t.Errorf("grace %v: a request with the planted id was handed the renewed id", grace)
			}
		}
	}
}

// An informational response (103 Early Hints) is not the response: a
// session made after it still gets its cookie on the final one.
func TestEarlyHintsKeepTheCookie(t *testing.T) {
	ss := middleware(t, standard(t, "node1", ""), "node1", nil)
	srv := httptest.NewServer(ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		s, _ := web.Get(r)
		_ = s.Set("count", 1)
		_, _ = io.WriteString(w, "ok")
	})))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) != 1 {
		t.Errorf("final response cookies %v; want the session's", resp.Cookies())
	}
}

// A handler that panics after changing the session: the change, already
// visible on this node, reaches the peers too.
func TestPanickingHandlerStillCommits(t *testing.T) {
	leaktest.Check(t)
	nodes := deltaPair(t, nil)
	ss := middleware(t, nodes[0].Manager(), "n1", func(c *web.Config) { c.Logger = quiet() })
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := web.Get(r)
		n, _ := s.GetInt("count")
		_ = s.Set("count", n+1)
		if r.URL.Query().Has("panic") {
			panic(http.ErrAbortHandler)
		}
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	id := rec.Result().Cookies()[0].Value
	req := httptest.NewRequest("GET", "/?panic", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: id})
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the handler's panic did not go on")
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	count := func(m manager.Manager) int64 {
		s, err := m.Find(context.Background(), id)
		if err != nil {
			return -1
		}
		n, _ := s.GetInt("count")
		return n
	}
	if !eventually(func() bool { return count(nodes[1].Manager()) == 2 }) {
		t.Errorf("after a panicking request n1 has count %d, n2 %d; want 2 on both", count(nodes[0].Manager()), count(nodes[1].Manager()))
	}
}

// An application's own gorilla/websocket endpoint runs behind the
// middleware, and Commit gives the handshake the new session's cookie.
func TestOwnWebSocketBehindMiddleware(t *testing.T) {
	ss := middleware(t, standard(t, "node1", ""), "node1", nil)
	var up websocket.Upgrader
	srv := httptest.NewServer(ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := web.Get(r)
		_ = s.Set("ws", true)
		c, err := up.Upgrade(w, r, web.Commit(r))
		if err != nil {
			t.Errorf("Upgrade: %v", err)
			return
		}
		_ = c.Close()
	})))
	defer srv.Close()
	c, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial through the middleware: %v", err)
	}
	_ = c.Close()
	if cs := resp.Cookies(); len(cs) != 1 || !strings.HasSuffix(cs[0].Value, ".node1") {
		t.Errorf("handshake cookies %v; want the new session's", cs)
	}
}

// Once the response has started, a new session's cookie or a renewed id
// cannot reach the client: Get for a request without a session and
// RenewID say so rather than lose the session; an existing session is
// still found, and its changes still commit.
func TestResponseStartedRefusesNewIDs(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	var getErr, renewErr error
	mux := http.NewServeMux()
	mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) { _, _ = web.Get(r) })
	mux.HandleFunc("GET /late", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "written first")
		s, err := web.Get(r)
		getErr = err
		if s != nil {
			_ = s.Set("late", true)
		}
		_, renewErr = web.RenewID(r)
	})
	h := ss.Middleware(mux)
	do := func(path, id string) *http.Response { return serveWithID(h, path, id) }
	if resp := do("/late", ""); !errors.Is(getErr, web.ErrResponseStarted) || len(resp.Cookies()) != 0 || m.Count() != 0 {
		t.Errorf("Get after the response started, no session: err %v, %d cookies, %d sessions; want ErrResponseStarted and none",
			getErr, len(resp.Cookies()), m.Count())
	}
	id := do("/start", "").Cookies()[0].Value
	do("/late", id)
	if getErr != nil || !errors.Is(renewErr, web.ErrResponseStarted) {
		t.Errorf("with a session: Get = %v, RenewID = %v; want nil and ErrResponseStarted", getErr, renewErr)
	}
	s, err := m.Find(context.Background(), id)
	if err != nil {
		t.Fatalf("the session's id changed although RenewID failed: %v", err)
	}
	if v, ok := s.Get("late"); ok != true || v != true {
		t.Errorf("a change made after the response started was not committed: %v, %v", v, ok)
	}
}

// A request that arrived with the planted id and is still running when
// the victim logs in (RenewID) is not handed the new id by its response:
// only the request that renewed it sends it.
func TestRenewIDDefeatsFixationOfARequestInFlight(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	entered, release := make(chan struct{}), make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) { _, _ = web.Get(r) })
	mux.Handle("GET /login", login(t))
	mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release // as while its client trickles the body
		if _, err := web.Get(r); err != nil {
			t.Error(err)
		}
		_, _ = io.WriteString(w, "ok")
	})
	h := ss.Middleware(mux)
	planted := serveWithID(h, "/start", "").Cookies()[0].Value
	done := make(chan *http.Response)
	go func() {
		rec, req := httptest.NewRecorder(), httptest.NewRequest("POST", "/slow", nil)
		req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: planted})
		h.ServeHTTP(rec, req)
		done <- rec.Result()
	}()
	<-entered
	renewed := serveWithID(h, "/login", planted).Cookies()[0].Value
	close(release)
	if cs := (<-done).Cookies(); len(cs) != 0 {
		t.Errorf("the request in flight with the planted id %s got cookies %v (the login renewed it to %s); want none", planted, cs, renewed)
	}
}

// serveWithID serves a GET of path through h, with the session cookie id
// unless it is empty.
func serveWithID(h http.Handler, path, id string) *http.Response {
	rec, req := httptest.NewRecorder(), httptest.NewRequest("GET", path, nil)
	if id != "" {
		req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: id})
	}
	h.ServeHTTP(rec, req)
	return rec.Result()
}

// renewUnconfirmed is a manager whose id changes some peer does not
// confirm: done here, with an error.
type renewUnconfirmed struct{ manager.Manager }

func (m renewUnconfirmed) ChangeID(ctx context.Context, s *manager.Session, base string) (string, error) {
	id, _ := m.Manager.ChangeID(ctx, s, base)
	return id, errPeer
}

// A RenewID that some peer did not confirm is done, as a commit is: the
// handler gets the new id and no error, the response its cookie, and the
// failure is counted.
func TestRenewIDNotConfirmed(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, renewUnconfirmed{m}, "node1", nil)
	var got string
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := web.Get(r); err != nil {
			t.Fatal(err)
		}
		if r.URL.Path == "/login" {
			var err error
			if got, err = web.RenewID(r); err != nil {
				t.Errorf("RenewID = %v, want nil", err)
			}
		}
	}))
	first := serveWithID(h, "/", "").Cookies()[0].Value
	cs := serveWithID(h, "/login", first).Cookies()
	if len(cs) != 1 || cs[0].Value != got || got == "" || sameBaseID(got, first) {
		t.Errorf("cookies %v, RenewID gave %q (was %q); want the new id's cookie", cs, got, first)
	}
	if n := ss.Stats().CommitErrors; n != 1 {
		t.Errorf("Stats().CommitErrors = %d, want 1", n)
	}
}

func sameBaseID(a, b string) bool {
	ba, _ := manager.SplitID(a)
	bb, _ := manager.SplitID(b)
	return ba == bb
}

// unwrapOnly is another middleware's writer that offers only Unwrap, as
// writers meant for http.ResponseController do.
type unwrapOnly struct{ http.ResponseWriter }

func (u unwrapOnly) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// A flush through the middleware reaches a writer below another wrapper,
// and reports a writer that cannot flush.
func TestFlushReachesWrappedWriters(t *testing.T) {
	ss := middleware(t, standard(t, "node1", ""), "node1", nil)
	var flushErr error
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "data: 1\n\n")
		flushErr = http.NewResponseController(w).Flush()
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(unwrapOnly{rec}, httptest.NewRequest("GET", "/events", nil))
	if !rec.Flushed || flushErr != nil {
		t.Errorf("flushed %v, Flush = %v; want flushed, nil", rec.Flushed, flushErr)
	}
	h.ServeHTTP(struct{ http.ResponseWriter }{httptest.NewRecorder()}, httptest.NewRequest("GET", "/events", nil))
	if !errors.Is(flushErr, http.ErrNotSupported) {
		t.Errorf("Flush to a writer that cannot flush = %v, want ErrNotSupported", flushErr)
	}
}

// pusher is an HTTP/2 writer that records its pushes.
type pusher struct {
	http.ResponseWriter
	pushed []string
}

func (p *pusher) Push(target string, _ *http.PushOptions) error {
	p.pushed = append(p.pushed, target)
	return nil
}

// A handler behind the middleware can push (HTTP/2 server push) when the
// writer below can, and learns that it cannot otherwise.
func TestPushReachesTheServersWriter(t *testing.T) {
	ss := middleware(t, standard(t, "node1", ""), "node1", nil)
	var pushErr error
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := w.(http.Pusher)
		if !ok {
			t.Fatal("the middleware's writer is not an http.Pusher")
		}
		pushErr = p.Push("/app.css", nil)
	}))
	p := &pusher{ResponseWriter: httptest.NewRecorder()}
	h.ServeHTTP(p, httptest.NewRequest("GET", "/page", nil))
	if pushErr != nil || len(p.pushed) != 1 || p.pushed[0] != "/app.css" {
		t.Errorf("Push = %v, pushed %v; want nil, [/app.css]", pushErr, p.pushed)
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/page", nil))
	if !errors.Is(pushErr, http.ErrNotSupported) {
		t.Errorf("Push through a writer that cannot push = %v, want ErrNotSupported", pushErr)
	}
}

// Of several session cookies (a stale or empty one of a parent domain
// sent first), the first that names a session is the request's, as in
// Tomcat.
func TestSeveralSessionCookies(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	h := ss.Middleware(counter("node1"))
	live := serveWithID(h, "/", "").Cookies()[0].Value
	for i, header := range []string{
		"JSESSIONID=stale.node9; JSESSIONID=" + live,
		"JSESSIONID=" + live + "; JSESSIONID=stale.node9",
		"JSESSIONID=; JSESSIONID=" + live,
		`JSESSIONID=""; JSESSIONID=` + live,
	} {
		rec, req := httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)
		req.Header.Set("Cookie", header)
		h.ServeHTTP(rec, req)
		want := fmt.Sprintf("count=%d ", i+2)
		if body := rec.Body.String(); !strings.HasPrefix(body, want) || len(rec.Result().Cookies()) != 0 || m.Count() != 1 {
			t.Errorf("Cookie: %s: %q, cookies %v, %d sessions; want %q of the live session, no cookie, one session", header, body, rec.Result().Cookies(), m.Count(), want)
		}
	}
}

// Removing a ;jsessionid= parameter keeps the rest of the path as it came
// (an encoded slash stays one, for a route's wildcard), and a static path
// that carries one still skips the session.
func TestPathParameterRemovedCleanly(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	s, err := m.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.PathValue("name"))
	})
	mux.HandleFunc("GET /app.css", func(w http.ResponseWriter, r *http.Request) {
		if web.Existing(r) != nil {
			t.Error("a static path got the session")
		}
		_, _ = io.WriteString(w, "css")
	})
	h := ss.Middleware(mux)
	for target, want := range map[string]string{
		"/files/a%2Fb":                      "a/b",
		"/files/a%2Fb;jsessionid=" + s.ID(): "a/b",
		"/app.css;jsessionid=" + s.ID():     "css",
		// An encoded ';' is part of the name: no parameter.
		"/files/a%3Bjsessionid=" + s.ID(): "a;jsessionid=" + s.ID(),
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		if rec.Code != http.StatusOK || rec.Body.String() != want {
			t.Errorf("GET %s: %d %q, want 200 %q", target, rec.Code, rec.Body.String(), want)
		}
	}
}
