package web_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/cohort-cluster/cohort/internal/testlog"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/sessions"
)

func standard(t *testing.T, route, file string) *manager.Standard {
	t.Helper()
	c := manager.DefaultConfig()
	c.Route, c.File = route, file
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	m, err := manager.NewStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func middleware(t *testing.T, m manager.Manager, route string, edit func(*web.Config)) *web.Sessions {
	t.Helper()
	c := web.DefaultConfig()
	c.Route = route
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	if edit != nil {
		edit(&c)
	}
	ss, err := web.New(m, c)
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

// counter is the demo handler: it increments the session attribute count.
func counter(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := web.Get(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		n, _ := s.GetInt("count")
		n++
		if err := s.Set("count", n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "count=%d node=%s id=%s\n", n, route, s.ID())
	}
}

func get(t *testing.T, c *http.Client, url string) (string, *http.Response) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp
}

func TestMiddlewareCountsAndSetsCookie(t *testing.T) {
	leaktest.Check(t)
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", func(c *web.Config) { c.Secure = true })
	mux := http.NewServeMux()
	mux.Handle("GET /counter", counter("node1"))
	mux.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) {
		if web.Existing(r) != nil {
			t.Error("a static resource saw a session")
		}
		io.WriteString(w, "js")
	})
	srv := httptest.NewServer(ss.Middleware(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	body, resp := get(t, c, srv.URL+"/counter")
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies %v, want one", cookies)
	}
	ck := cookies[0]
	if ck.Name != "JSESSIONID" || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
		t.Errorf("cookie %s: want JSESSIONID, HttpOnly, Secure, SameSite=Lax, Path=/", resp.Header.Get("Set-Cookie"))
	}
	if want := "count=1 node=node1 id=" + ck.Value + "\n"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	// The jar does not send Secure cookies over http; send it by hand.
	for i := 2; i <= 5; i++ {
		req, _ := http.NewRequest("GET", srv.URL+"/counter", nil)
		req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: ck.Value})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("count=%d node=node1 id=%s\n", i, ck.Value); string(b) != want {
			t.Errorf("request %d: %q, want %q", i, b, want)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("request %d set a cookie again: %v", i, resp.Cookies())
		}
	}
	if _, resp := get(t, c, srv.URL+"/app.js"); len(resp.Cookies()) != 0 {
		t.Error("static resource set a cookie")
	}
	if m.Count() != 1 {
		t.Errorf("%d sessions, want 1", m.Count())
	}
}

func TestPathParameterID(t *testing.T) {
	leaktest.Check(t)
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	mux := http.NewServeMux()
	mux.Handle("GET /counter", counter("node1"))
	srv := httptest.NewServer(ss.Middleware(mux))
	defer srv.Close()
	body, resp := get(t, http.DefaultClient, srv.URL+"/counter")
	id := resp.Cookies()[0].Value
	if want := "count=1 node=node1 id=" + id + "\n"; body != want {
		t.Fatalf("first request: %q, want %q", body, want)
	}
	body, _ = get(t, http.DefaultClient, srv.URL+"/counter;jsessionid="+id)
	if want := "count=2 node=node1 id=" + id + "\n"; body != want {
		t.Errorf("with ;jsessionid=: %q, want %q", body, want)
	}
}

// TestRouteBinding restores, on node2, a session saved by node1, as after a
// failover, and sends requests carrying node1's route.
func TestRouteBinding(t *testing.T) {
	leaktest.Check(t)
	file := filepath.Join(t.TempDir(), "sessions.bin")
	m1 := standard(t, "node1", file)
	s, _ := m1.Create(context.Background())
	_ = s.Set("count", 41)
	oldID := s.ID()
	if err := m1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	m2 := standard(t, "node2", file)
	ss := middleware(t, m2, "node2", nil)
	var mu sync.Mutex
	seenOriginal := map[string]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /counter", func(w http.ResponseWriter, r *http.Request) {
		// Both requests rebind at once; their increments, a read then a
		// write of one session, are serialized here, as an application
		// must for its own concurrent requests on one session.
		mu.Lock()
		defer mu.Unlock()
		seenOriginal[web.OriginalID(r)] = true
		counter("node2")(w, r)
	})
	srv := httptest.NewServer(ss.Middleware(mux))
	defer srv.Close()

	// Two parallel requests with the old id both end on the same new id.
	var wg sync.WaitGroup
	ids := make([]string, 2)
	for i := range ids {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", srv.URL+"/counter", nil)
			req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: oldID})
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			for _, c := range resp.Cookies() {
				ids[i] = c.Value
			}
		})
	}
	wg.Wait()
	base, _ := manager.SplitID(oldID)
	want := base + ".node2"
	for i, id := range ids {
		if id != want {
			t.Errorf("request %d got cookie %q, want %q", i, id, want)
		}
	}
	if !seenOriginal[oldID] {
		t.Errorf("handler did not see the original id %q: %v", oldID, seenOriginal)
	}
	s2, err := m2.Find(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s2.GetInt("count"); n != 43 {
		t.Errorf("count = %d after two increments of 41, want 43", n)
	}

	// With route binding off, the id keeps its route.
	ss3 := middleware(t, m2, "node2", func(c *web.Config) { c.DisableRouteBinding = true })
	h := ss3.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := web.Existing(r); s == nil || s.ID() != want {
			t.Errorf("binding off: session %v", s)
		}
	}))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/x", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: want})
	h.ServeHTTP(rec, req)
	if len(rec.Result().Cookies()) != 0 {
		t.Errorf("binding off set cookie %v", rec.Result().Cookies())
	}
}

// login logs the session in as alice and renews its id.
func login(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, _ := web.Get(r)
		_ = s.SetPrincipal("alice")
		if _, err := web.RenewID(r); err != nil {
			t.Error(err)
		}
	}
}

func TestRenewIDAndInvalidate(t *testing.T) {
	leaktest.Check(t)
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	mux := http.NewServeMux()
	mux.Handle("GET /counter", counter("node1"))
	mux.Handle("GET /login", login(t))
	mux.HandleFunc("GET /logout", func(w http.ResponseWriter, r *http.Request) {
		if err := web.Invalidate(r); err != nil {
			t.Error(err)
		}
	})
	srv := httptest.NewServer(ss.Middleware(mux))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	_, resp := get(t, c, srv.URL+"/counter")
	before := resp.Cookies()[0].Value
	_, resp = get(t, c, srv.URL+"/login")
	after := resp.Cookies()[0].Value
	if after == before || !strings.HasSuffix(after, ".node1") {
		t.Errorf("RenewID: %q -> %q", before, after)
	}
	if body, _ := get(t, c, srv.URL+"/counter"); !strings.HasPrefix(body, "count=2 ") {
		t.Errorf("after login: %q, want the count kept", body)
	}
	_, resp = get(t, c, srv.URL+"/logout")
	if ck := resp.Cookies(); len(ck) != 1 || ck[0].MaxAge >= 0 {
		t.Errorf("logout cookies %v, want a deletion", ck)
	}
	if m.Count() != 0 {
		t.Errorf("%d sessions after logout", m.Count())
	}
	if body, _ := get(t, c, srv.URL+"/counter"); !strings.HasPrefix(body, "count=1 ") {
		t.Errorf("after logout: %q, want a new session", body)
	}
}

// TestInvalidateStaleCookie logs out with a cookie that names no session
// (it expired, or another node destroyed it): the cookie is deleted, so
// the browser stops sending it.
func TestInvalidateStaleCookie(t *testing.T) {
	m := standard(t, "node1", "")
	ss := middleware(t, m, "node1", nil)
	var got error
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = web.Invalidate(r)
	}))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/logout", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: "gone0000000000000000000000000000.node1"})
	h.ServeHTTP(rec, req)
	cs := rec.Result().Cookies()
	if got != nil || len(cs) != 1 || cs[0].Name != "JSESSIONID" || cs[0].MaxAge >= 0 {
		t.Errorf("Invalidate = %v, cookies %v; want nil and a deletion", got, cs)
	}
	if m.Count() != 0 {
		t.Errorf("%d sessions after logout", m.Count())
	}
	// Without a cookie there is nothing to delete.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/logout", nil))
	if cs := rec.Result().Cookies(); got != nil || len(cs) != 0 {
		t.Errorf("without a cookie: Invalidate = %v, cookies %v; want nil and none", got, cs)
	}
}

// An invalidation that some peer did not confirm is done: the cookie is
// deleted, Invalidate returns nil and the failure is counted. One that
// could not destroy the session returns the error and keeps the session
// and its cookie.
func TestInvalidateThatFails(t *testing.T) {
	for _, tc := range invalidationFailures {
		t.Run(tc.name, func(t *testing.T) {
			m := standard(t, "node1", "")
			ss := middleware(t, invalidateFails{m, tc.err}, "node1", nil)
			var got error
			h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s, _ := web.Get(r)
				if r.URL.Path == "/logout" {
					got = web.Invalidate(r)
				} else {
					_ = s.Set("user", "alice")
				}
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/login", nil))
			cookie := rec.Result().Cookies()[0]
			rec = httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/logout", nil)
			req.AddCookie(cookie)
			h.ServeHTTP(rec, req)
			_, ferr := m.Find(context.Background(), cookie.Value)
			cs := rec.Result().Cookies()
			deleted := len(cs) == 1 && cs[0].MaxAge < 0
			if tc.wantGone {
				if got != nil || !deleted || !errors.Is(ferr, manager.ErrNotFound) {
					t.Errorf("Invalidate = %v, cookies %v, Find = %v; want nil, a deletion, ErrNotFound", got, cs, ferr)
				}
			} else if !errors.Is(got, tc.err) || deleted || ferr != nil {
				t.Errorf("Invalidate = %v, cookies %v, Find = %v; want the error, no deletion, the session kept", got, cs, ferr)
			}
			if st := ss.Stats(); st != tc.wantStats {
				t.Errorf("Stats() = %+v, want %+v", st, tc.wantStats)
			}
		})
	}
}

// gorillaCounter is a handler written for gorilla/sessions, unmodified.
func gorillaCounter(store sessions.Store) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		session, err := store.Get(r, "shop")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if r.URL.Query().Get("logout") != "" {
			session.Options.MaxAge = -1
		} else {
			n, _ := session.Values["count"].(int)
			session.Values["count"] = n + 1
			session.Values["user"] = "alice"
		}
		if err := session.Save(r, w); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%v", session.Values["count"])
	}
}

func TestGorillaStoreIsADropInReplacement(t *testing.T) {
	leaktest.Check(t)
	m := standard(t, "node1", "")
	cohortStore, err := web.NewStore(m, web.Config{Route: "node1"})
	if err != nil {
		t.Fatal(err)
	}
	cookieStore := sessions.NewCookieStore([]byte("0123456789abcdef0123456789abcdef"))
	cookieStore.Options.Secure = false
	for _, tc := range []struct {
		name  string
		store sessions.Store
	}{
		{"CookieStore", cookieStore},
		{"Cohort", cohortStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(gorillaCounter(tc.store))
			defer srv.Close()
			jar, _ := cookiejar.New(nil)
			c := &http.Client{Jar: jar}
			for i := 1; i <= 3; i++ {
				if body, _ := get(t, c, srv.URL); body != fmt.Sprint(i) {
					t.Errorf("request %d: %q", i, body)
				}
			}
			get(t, c, srv.URL+"?logout=1")
			if body, _ := get(t, c, srv.URL); body != "1" {
				t.Errorf("after MaxAge=-1: %q, want a new session", body)
			}
		})
	}
	// The Cohort cookie names the session, route included, for balancers.
	rec := httptest.NewRecorder()
	gorillaCounter(cohortStore)(rec, httptest.NewRequest("GET", "/", nil))
	ck := rec.Result().Cookies()
	if len(ck) != 1 || !strings.HasSuffix(ck[0].Value, ".node1") || !ck[0].HttpOnly {
		t.Errorf("cookie %v, want a readable HttpOnly <id>.node1", ck)
	}
	s, err := m.Find(context.Background(), ck[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := s.GetInt("count"); !ok || n != 1 {
		t.Errorf("session count = %d, %v", n, ok)
	}
	if err := cohortStoreSaveBadKey(cohortStore); err == nil {
		t.Error("a non-string key was accepted")
	}
}

func cohortStoreSaveBadKey(st *web.Store) error {
	req := httptest.NewRequest("GET", "/", nil)
	gs, _ := st.New(req, "shop")
	gs.Values[42] = "x"
	return gs.Save(req, httptest.NewRecorder())
}

// notReady is a manager that cannot say whether a session exists yet, as a
// replicating node during its state transfer.
type notReady struct{ manager.Manager }

func (notReady) Find(context.Context, string) (*manager.Session, error) {
	return nil, manager.ErrNotReady
}

// TestLookupFailureIsUnavailable checks that a session that may exist is
// never replaced by a new one: the request is refused with 503.
func TestLookupFailureIsUnavailable(t *testing.T) {
	ss := middleware(t, notReady{standard(t, "node1", "")}, "node1", nil)
	ran := false
	srv := httptest.NewServer(ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran = true
		_, _ = web.Get(r)
	})))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/counter", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: "abc.node2"})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if ran || len(resp.Cookies()) != 0 {
		t.Errorf("handler ran: %v; cookies set: %v", ran, resp.Cookies())
	}
}

// hangUp is a manager whose lookups end with their request's context, as
// a Backup fetch does when the client hangs up while it waits.
type hangUp struct{ manager.Manager }

func (hangUp) Find(ctx context.Context, _ string) (*manager.Session, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestLookupEndedByHangUpIsNotUnavailable: a client that hangs up while
// its session is looked up is gone, not refused: the request is neither
// counted as unavailable nor logged as a failed lookup.
func TestLookupEndedByHangUpIsNotUnavailable(t *testing.T) {
	var logs testlog.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ss := middleware(t, hangUp{standard(t, "node1", "")}, "node1", func(c *web.Config) { c.Logger = log })
	ran := false
	h := ss.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true }))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, "GET", "/counter", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: "abc.node2"})
	h.ServeHTTP(httptest.NewRecorder(), req)
	if ran {
		t.Error("handler ran without the session")
	}
	if n := ss.Stats().Unavailable; n != 0 {
		t.Errorf("Stats().Unavailable = %d, want 0 for a client that hung up", n)
	}
	if strings.Contains(logs.String(), "lookup failed") {
		t.Errorf("a hang-up was logged as a failed lookup:\n%s", logs.String())
	}
}

// TestClientHangUpDoesNotCutCommitShort: a request whose client is gone
// before its handler returns still commits in ack mode, through the
// middleware and through the gorilla Store, and the peer has the change.
func TestClientHangUpDoesNotCutCommitShort(t *testing.T) {
	leaktest.Check(t)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	nodes := testcluster.Start(t, nil, log, func(c *manager.ClusterConfig) {
		c.Kind, c.Manager.Mode = manager.KindDelta, manager.Ack
	}, "n1", "n2")
	var warnings testlog.Buffer
	quietOn := func(c *web.Config) { c.Logger = slog.New(slog.NewTextHandler(&warnings, nil)) }
	ss := middleware(t, nodes[0].Manager(), "n1", quietOn)
	cfg := web.DefaultConfig()
	cfg.Route = "n1"
	quietOn(&cfg)
	store, err := web.NewStore(nodes[0].Manager(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		handler http.Handler
	}{
		{"middleware", ss.Middleware(counter("n1"))},
		{"store", gorillaCounter(store)},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, hangUp := context.WithCancel(context.Background())
			hangUp() // the client is gone before the handler runs
			rec := httptest.NewRecorder()
			c.handler.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, "/counter", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if w := warnings.String(); w != "" {
				t.Errorf("warnings for a client that hung up:\n%s", w)
			}
			cookies := rec.Result().Cookies()
			if len(cookies) != 1 {
				t.Fatalf("cookies %v, want one", cookies)
			}
			// Ack mode: the peer has read the change; it applies it next.
			deadline := time.Now().Add(5 * time.Second)
			for {
				s, err := nodes[1].Manager().Find(context.Background(), cookies[0].Value)
				var n int64
				if err == nil {
					n, _ = s.GetInt("count")
				}
				if n == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("peer's session %s: count %d, err %v; want count 1", cookies[0].Value, n, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestNewRefusesBadCookieName: a cookie name net/http would neither send
// nor read is refused when the middleware is made, not silently dropped
// from every response.
func TestNewRefusesBadCookieName(t *testing.T) {
	m := standard(t, "node1", "")
	for _, name := range []string{"my session", "sid;x", "sé", "a=b"} {
		c := web.DefaultConfig()
		c.Route, c.CookieName = "node1", name
		if _, err := web.New(m, c); err == nil || !strings.Contains(err.Error(), "CookieName") {
			t.Errorf("CookieName %q: err = %v, want one naming CookieName", name, err)
		}
	}
	c := web.DefaultConfig()
	c.Route, c.CookieName = "node1", "SESSION_id-2"
	if _, err := web.New(m, c); err != nil {
		t.Errorf("CookieName SESSION_id-2: %v", err)
	}
}

// Config.Route must be the manager's: another would make every session
// look like another node's and rebind it on every request. An empty one
// takes the manager's.
func TestNewChecksRouteAgainstManager(t *testing.T) {
	m := standard(t, "node1", "")
	c := web.DefaultConfig()
	c.Route = "web1"
	if _, err := web.New(m, c); err == nil || !strings.Contains(err.Error(), `"web1"`) || !strings.Contains(err.Error(), `"node1"`) {
		t.Errorf("Route web1 over a node1 manager: err = %v, want one naming both routes", err)
	}
	c.Route = ""
	ss, err := web.New(m, c)
	if err != nil {
		t.Fatalf("empty Route: %v", err)
	}
	h := ss.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = web.Get(r) }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if cs := rec.Result().Cookies(); len(cs) != 1 || !strings.HasSuffix(cs[0].Value, ".node1") {
		t.Errorf("empty Route: cookies %v, want one id ending .node1", cs)
	}
}
