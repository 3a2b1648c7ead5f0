package web_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/sessions"
)

// store returns a gorilla Store for m on route.
func store(t *testing.T, m manager.Manager, route string, edit func(*web.Config)) *web.Store {
	t.Helper()
	c := web.DefaultConfig()
	c.Route = route
	if edit != nil {
		edit(&c)
	}
	st, err := web.NewStore(m, c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// deltaPair starts a 2-node Delta cluster in ack mode.
func deltaPair(t *testing.T, edit func(*manager.ClusterConfig)) []*manager.Cluster {
	t.Helper()
	return testcluster.Start(t, nil, quiet(), func(c *manager.ClusterConfig) {
		c.Kind, c.Manager.Mode = manager.KindDelta, manager.Ack
		if edit != nil {
			edit(c)
		}
	}, "n1", "n2")
}

// eventually polls cond for up to 10 s.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A value the handler changes in place after Save is a change at the next
// Save, and reaches the peers: the session keeps a copy, not the
// handler's object.
func TestStoreSaveAfterChangeInPlace(t *testing.T) {
	leaktest.Check(t)
	nodes := deltaPair(t, nil)
	st := store(t, nodes[0].Manager(), "n1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "shop")
	prefs := map[string]string{"theme": "light"}
	gs.Values["prefs"] = prefs
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	prefs["theme"] = "dark"
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	theme := func(m manager.Manager) string {
		s, err := m.Find(context.Background(), gs.ID)
		if err != nil {
			return err.Error()
		}
		v, _ := s.Get("prefs")
		p, _ := v.(map[string]string)
		return p["theme"]
	}
	if !eventually(func() bool { return theme(nodes[1].Manager()) == "dark" }) || theme(nodes[0].Manager()) != "dark" {
		t.Errorf("after the second Save n1 holds theme %q, n2 %q; want dark on both", theme(nodes[0].Manager()), theme(nodes[1].Manager()))
	}
}

// Another request of the same user reading the session while a handler
// goes on changing the value it saved does not race with it (run with
// -race).
func TestStoreSavedValueIsNotShared(t *testing.T) {
	st := store(t, standard(t, "node1", ""), "node1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	prefs := map[string]int{"n": 0}
	gs.Values["prefs"] = prefs
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	cookie := rec.Result().Cookies()[0]
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 200 {
			r := httptest.NewRequest("GET", "/", nil)
			r.AddCookie(cookie)
			if _, err := st.New(r, "s"); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i := range 200 {
		prefs["n"] = i
	}
	wg.Wait()
}

// A request that only reads its session, with no Save, counts as an
// access on the peers too, as through the middleware.
func TestStoreReadIsAnAccessEverywhere(t *testing.T) {
	leaktest.Check(t)
	nodes := deltaPair(t, func(c *manager.ClusterConfig) { c.Manager.SweepInterval = 50 * time.Millisecond })
	st := store(t, nodes[0].Manager(), "n1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "cart")
	gs.Values["cart"] = "beans"
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	var peer *manager.Session
	if !eventually(func() bool {
		s, err := nodes[1].Manager().Find(context.Background(), gs.ID)
		peer = s
		return err == nil
	}) {
		t.Fatal("n2 never got the session")
	}
	before := peer.LastAccess()
	time.Sleep(5 * time.Millisecond) // access times are kept to the millisecond
	r := httptest.NewRequest("GET", "/cart", nil)
	r.AddCookie(rec.Result().Cookies()[0])
	if g, err := st.Get(r, "cart"); err != nil || g.IsNew {
		t.Fatalf("read: new %v, %v", g.IsNew, err)
	}
	if !eventually(func() bool { return peer.LastAccess().After(before) }) {
		t.Errorf("n2's copy was last accessed %v, before the read: a read through the Store is not an access on the peers", peer.LastAccess())
	}
}

// A session that may exist but cannot be looked up is not replaced by a
// new one without a word: Get returns the error with the new session.
func TestStoreLookupFailureIsAnError(t *testing.T) {
	st := store(t, notReady{standard(t, "node1", "")}, "node1", nil)
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: "cart", Value: "existingsessionbase.node2"})
	gs, err := st.Get(req, "cart")
	if !errors.Is(err, manager.ErrNotReady) || gs == nil {
		t.Errorf("Get = %v, %v; want a session and an error wrapping ErrNotReady", gs, err)
	}
	_, _ = st.Get(req, "cart") // the registry's: no second lookup
	if got := st.Stats(); got != (web.Stats{Unavailable: 1}) {
		t.Errorf("Stats() = %+v, want one lookup that failed", got)
	}
}

// NewStore takes the cookie's path and domain from the config; a nil
// value is saved as no value.
func TestStoreCookieOptionsAndNilValues(t *testing.T) {
	st := store(t, standard(t, "node1", ""), "node1", func(c *web.Config) {
		c.CookiePath, c.CookieDomain, c.Secure = "/app", "example.com", true
	})
	if o := st.Options; o.Path != "/app" || o.Domain != "example.com" || !o.Secure || !o.HttpOnly {
		t.Errorf("Options = %+v; want Path /app, Domain example.com, Secure, HttpOnly", o)
	}
	req, rec := httptest.NewRequest("GET", "/app", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	gs.Values["kept"], gs.Values["none"] = "x", nil
	if err := gs.Save(req, rec); err != nil {
		t.Fatalf("Save with a nil value: %v", err)
	}
	r := httptest.NewRequest("GET", "/app", nil)
	r.AddCookie(rec.Result().Cookies()[0])
	back, _ := st.New(r, "s")
	if _, ok := back.Values["none"]; ok || back.Values["kept"] != "x" {
		t.Errorf("read back %v; want kept=x and no none", back.Values)
	}
}

// A session gone between Get and Save (invalidated by another request of
// the user) is replaced by a new one, whose cookie Save sets.
func TestStoreSaveOfAVanishedSessionSetsTheNewCookie(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	gs.Values["a"] = "x"
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	old := gs.ID
	if err := m.Invalidate(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	if cs := rec.Result().Cookies(); len(cs) != 1 || cs[0].Value == old || cs[0].Value != gs.ID {
		t.Errorf("Save after the session vanished set cookies %v (session %q, old %q); want the new session's", cs, gs.ID, old)
	}
}

// unregistered is a type no node registered.
type unregistered struct{ A int }

// A Save with one value that cannot be stored stores none of the others
// and removes nothing: the session is as it was.
func TestStoreSaveIsAllOrNothing(t *testing.T) {
	leaktest.Check(t)
	nodes := testcluster.Start(t, nil, quiet(), func(c *manager.ClusterConfig) { c.Manager.MaxSessionSize = 1000 }, "n1")
	st := store(t, nodes[0].Manager(), "n1", nil)
	for _, tc := range []struct {
		name string
		bad  func(map[any]any)
	}{
		{"non-string key", func(v map[any]any) { v[42] = "x" }},
		{"unregistered type", func(v map[any]any) { v["z"] = unregistered{1} }},
		{"too large", func(v map[any]any) { v["big1"], v["big2"] = strings.Repeat("x", 600), strings.Repeat("y", 600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
			gs, _ := st.Get(req, "s")
			gs.Values["keep"] = "k"
			for i := range 20 {
				gs.Values[fmt.Sprint("v", i)] = "before"
			}
			if err := gs.Save(req, rec); err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "/", nil)
			r.AddCookie(rec.Result().Cookies()[0])
			gs, _ = st.New(r, "s")
			delete(gs.Values, "keep")
			for i := range 20 {
				gs.Values[fmt.Sprint("v", i)] = "after"
			}
			tc.bad(gs.Values)
			if err := gs.Save(r, httptest.NewRecorder()); err == nil {
				t.Fatal("Save succeeded")
			}
			s, err := nodes[0].Manager().Find(context.Background(), gs.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := s.Names(), append([]string{"keep"}, sortedV(20)...); !slices.Equal(got, want) {
				t.Errorf("after a failed Save the session holds %v, want %v", got, want)
			}
			for _, name := range s.Names() {
				if v, _ := s.GetString(name); name != "keep" && v != "before" {
					t.Errorf("after a failed Save %s = %.10q, want before", name, v)
				}
			}
		})
	}
}

// sortedV returns v0 to v<n-1> in the order Session.Names sorts them.
func sortedV(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprint("v", i))
	}
	slices.Sort(out)
	return out
}

// A first Save that fails leaves no session behind to count toward
// MaxSessions, and, when the manager can check values first, creates
// none at all.
func TestStoreFailedFirstSaveLeavesNoSession(t *testing.T) {
	c := manager.DefaultConfig()
	c.Route, c.MaxSessions, c.Logger = "node1", 1, quiet()
	m, err := manager.NewStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	var created atomic.Int64
	m.AddListener(manager.Listener{Created: func(*manager.Session) { created.Add(1) }})
	for _, tc := range []struct {
		name      string
		m         manager.Manager
		mayCreate bool // the manager cannot check values before Create
		bad       func(map[any]any)
	}{
		{"non-string key", m, false, func(v map[any]any) { v[42] = "x" }},
		{"unregistered type", m, false, func(v map[any]any) { v["z"] = unregistered{1} }},
		{"unregistered type, wrapped manager", struct{ manager.Manager }{m}, true, func(v map[any]any) { v["z"] = unregistered{1} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := store(t, tc.m, "node1", nil)
			before := created.Load()
			req := httptest.NewRequest("GET", "/", nil)
			gs, _ := st.Get(req, "s")
			gs.Values["a"] = "x"
			tc.bad(gs.Values)
			rec := httptest.NewRecorder()
			if err := gs.Save(req, rec); err == nil {
				t.Fatal("Save succeeded")
			}
			if n := m.Count(); n != 0 {
				t.Errorf("a failed first Save left %d sessions", n)
			}
			if n := created.Load() - before; n != 0 && !tc.mayCreate {
				t.Errorf("a failed first Save created %d sessions", n)
			}
			if len(rec.Result().Cookies()) != 0 || gs.ID != "" || !gs.IsNew {
				t.Errorf("a failed first Save set cookies %v, id %q, new %v", rec.Result().Cookies(), gs.ID, gs.IsNew)
			}
			req = httptest.NewRequest("GET", "/", nil)
			gs, _ = st.Get(req, "s")
			gs.Values["a"] = "x"
			if err := gs.Save(req, httptest.NewRecorder()); err != nil {
				t.Errorf("the next Save, with MaxSessions 1: %v", err)
			}
			_ = m.Invalidate(context.Background(), gs.ID)
		})
	}
}

// errPeer is a commit error of failingCommit.
var errPeer = errors.New("peer n2 did not confirm")

// failingCommit is a manager whose commits a peer does not confirm.
type failingCommit struct{ manager.Manager }

func (f failingCommit) Commit(ctx context.Context, s *manager.Session) error {
	_ = f.Manager.Commit(ctx, s)
	return errPeer
}

// A Save whose commit a peer did not confirm keeps the change on this
// node, sets the cookie and counts it, and succeeds: an unmodified gorilla
// handler must not answer 500 while a failed node is not yet declared gone.
func TestStoreSaveCountsUnconfirmedCommit(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, failingCommit{m}, "node1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	gs.Values["a"] = "x"
	err := gs.Save(req, rec)
	if err != nil {
		t.Errorf("Save = %v; want nil: the session is saved on this node", err)
	}
	if cs := rec.Result().Cookies(); len(cs) != 1 || cs[0].Value != gs.ID || gs.ID == "" {
		t.Fatalf("cookies %v for session %q; want the session's cookie", cs, gs.ID)
	}
	s, err := m.Find(context.Background(), gs.ID)
	if v, _ := s.GetString("a"); err != nil || v != "x" {
		t.Errorf("this node holds a=%q (%v); want the saved x", v, err)
	}
	if got := st.Stats(); got != (web.Stats{CommitErrors: 1}) {
		t.Errorf("Stats() = %+v, want one commit error", got)
	}
}

// lookupFails is a manager whose lookups fail while fail is set, as a
// Backup node's fetch from the session's holders that times out.
type lookupFails struct {
	manager.Manager
	fail *atomic.Bool
}

func (l lookupFails) Find(ctx context.Context, id string) (*manager.Session, error) {
	if l.fail.Load() {
		return nil, manager.ErrNotReady
	}
	return l.Manager.Find(ctx, id)
}

// A Save that cannot look its session up returns the error: it does not
// replace the user's session with a new one.
func TestStoreSaveLookupFailureIsAnError(t *testing.T) {
	m := standard(t, "node1", "")
	var fail atomic.Bool
	st := store(t, lookupFails{m, &fail}, "node1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	gs.Values["a"] = "x"
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	id := gs.ID
	fail.Store(true)
	rec = httptest.NewRecorder()
	gs.Values["a"] = "y"
	if err := gs.Save(req, rec); !errors.Is(err, manager.ErrNotReady) {
		t.Errorf("Save = %v, want an error wrapping ErrNotReady", err)
	}
	if cs := rec.Result().Cookies(); len(cs) != 0 || gs.ID != id || m.Count() != 1 {
		t.Errorf("Save set cookies %v, session id %q (was %q), %d sessions; want the user's session alone, untouched", cs, gs.ID, id, m.Count())
	}
	if n := st.Stats().Unavailable; n != 1 {
		t.Errorf("Stats().Unavailable = %d, want 1", n)
	}
}

// savedSession saves a new session of name "s" holding vals and returns
// its cookie.
func savedSession(t *testing.T, st *web.Store, vals map[string]any) *http.Cookie {
	t.Helper()
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	for k, v := range vals {
		gs.Values[k] = v
	}
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	return rec.Result().Cookies()[0]
}

// A handler written as gorilla's README shows, `session, _ :=
// store.Get(r, name)`, ignores Get's error. When the lookup failed, the
// session it saves is empty: saving it, or saving every session of the
// request through sessions.Save, must not replace the user's session.
func TestStoreSaveAfterFailedGetKeepsTheSession(t *testing.T) {
	for _, via := range []string{"Session.Save", "sessions.Save"} {
		t.Run(via, func(t *testing.T) {
			m := standard(t, "node1", "")
			var fail atomic.Bool
			st := store(t, lookupFails{m, &fail}, "node1", nil)
			cookie := savedSession(t, st, map[string]any{"user": "alice"})
			fail.Store(true)
			req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
			req.AddCookie(cookie)
			gs, _ := st.Get(req, "s") // the error ignored
			gs.Values["page"] = "/x"
			fail.Store(false) // the session can be found again, but gs is empty
			var err error
			if via == "Session.Save" {
				err = gs.Save(req, rec)
			} else {
				err = sessions.Save(req, rec)
			}
			if err == nil {
				t.Error("Save = nil; want an error: the user's session was not loaded")
			}
			if cs := rec.Result().Cookies(); len(cs) != 0 || m.Count() != 1 {
				t.Errorf("Save set cookies %v, %d sessions; want no cookie and the user's session alone", cs, m.Count())
			}
			s, err := m.Find(context.Background(), cookie.Value)
			if u, _ := s.GetString("user"); err != nil || u != "alice" {
				t.Errorf("the user's session: user=%q (%v); want alice", u, err)
			}
		})
	}
}

// A Save of a session whose cookie names one that is gone (expired, or
// logged out) makes a new session, as before.
func TestStoreSaveReplacesAGoneSession(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	cookie := savedSession(t, st, map[string]any{"user": "alice"})
	if err := m.Invalidate(context.Background(), cookie.Value); err != nil {
		t.Fatal(err)
	}
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	req.AddCookie(cookie)
	gs, err := st.Get(req, "s")
	if err != nil || !gs.IsNew {
		t.Fatalf("Get = %v, IsNew %v; want a new session", err, gs.IsNew)
	}
	gs.Values["user"] = "bob"
	if err := gs.Save(req, rec); err != nil {
		t.Fatalf("Save = %v", err)
	}
	if v, n := storeCookie(rec.Result(), "s"); n != 1 || v == cookie.Value || m.Count() != 1 {
		t.Errorf("cookie %q (%d set), %d sessions; want one new session's cookie", v, n, m.Count())
	}
}

// A logout (MaxAge < 0) after a Get whose lookup failed still destroys
// the session the cookie names, everywhere.
func TestStoreLogoutAfterFailedGetInvalidates(t *testing.T) {
	m := standard(t, "node1", "")
	var fail atomic.Bool
	st := store(t, lookupFails{m, &fail}, "node1", nil)
	cookie := savedSession(t, st, map[string]any{"user": "alice"})
	fail.Store(true)
	req, rec := httptest.NewRequest("GET", "/logout", nil), httptest.NewRecorder()
	req.AddCookie(cookie)
	gs, _ := st.Get(req, "s")
	fail.Store(false)
	gs.Options.MaxAge = -1
	if err := gs.Save(req, rec); err != nil {
		t.Fatalf("Save = %v", err)
	}
	if _, err := m.Find(context.Background(), cookie.Value); !errors.Is(err, manager.ErrNotFound) {
		t.Errorf("after the logout, Find = %v; want ErrNotFound", err)
	}
	if cs := rec.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 {
		t.Errorf("cookies %v; want the session's cookie deleted", cs)
	}
}

// invalidationFailures are the two ways an invalidation fails: it is done
// on this node but some peer did not confirm it, or the session could not
// be destroyed; with what each leaves and counts.
var invalidationFailures = []struct {
	name      string
	err       error
	wantGone  bool
	wantStats web.Stats
}{
	{"not confirmed", fmt.Errorf("%w: %w", manager.ErrNotConfirmed, errPeer), true, web.Stats{CommitErrors: 1}},
	{"not destroyed", manager.ErrNotReady, false, web.Stats{Unavailable: 1}},
}

// invalidateFails is a manager whose invalidations end with err, after
// destroying the session when err wraps ErrNotConfirmed (a peer did not
// confirm) and without touching it otherwise (its holders did not answer).
type invalidateFails struct {
	manager.Manager
	err error
}

func (f invalidateFails) Invalidate(ctx context.Context, id string) error {
	if errors.Is(f.err, manager.ErrNotConfirmed) {
		_ = f.Manager.Invalidate(ctx, id)
	}
	return f.err
}

// A logout that some peer did not confirm is done: the cookie is deleted,
// the failure counted, and Save returns nil, as for a commit. One that
// could not destroy the session returns the error and keeps the cookie.
func TestStoreLogoutThatFails(t *testing.T) {
	for _, tc := range invalidationFailures {
		t.Run(tc.name, func(t *testing.T) {
			m := standard(t, "node1", "")
			st := store(t, invalidateFails{m, tc.err}, "node1", nil)
			cookie := savedSession(t, st, map[string]any{"user": "alice"})
			req, rec := httptest.NewRequest("GET", "/logout", nil), httptest.NewRecorder()
			req.AddCookie(cookie)
			gs, _ := st.Get(req, "s")
			gs.Options.MaxAge = -1
			err := gs.Save(req, rec)
			_, ferr := m.Find(context.Background(), cookie.Value)
			deleted := len(rec.Result().Cookies()) == 1 && rec.Result().Cookies()[0].MaxAge < 0
			if tc.wantGone {
				if err != nil || !deleted || !errors.Is(ferr, manager.ErrNotFound) {
					t.Errorf("Save = %v, cookie deleted %v, Find = %v; want nil, deleted, ErrNotFound", err, deleted, ferr)
				}
			} else if !errors.Is(err, tc.err) || deleted || ferr != nil {
				t.Errorf("Save = %v, cookie deleted %v, Find = %v; want the error, the cookie and the session kept", err, deleted, ferr)
			}
			if got := st.Stats(); got != tc.wantStats {
				t.Errorf("Stats() = %+v, want %+v", got, tc.wantStats)
			}
		})
	}
}

// Get reads all of a session's values at one moment: a concurrent Save of
// several values is seen whole or not at all, so a reader that saves
// afterwards never writes back a mix that never was.
func TestStoreGetIsOneSnapshot(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	cookie := savedSession(t, st, map[string]any{"a": 0, "b": 0})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			req := httptest.NewRequest("GET", "/", nil)
			req.AddCookie(cookie)
			gs, _ := st.Get(req, "s")
			gs.Values["a"], gs.Values["b"] = i, i
			if err := gs.Save(req, httptest.NewRecorder()); err != nil {
				t.Error(err)
				return
			}
		}
	})
	torn := 0
	for range 5000 {
		req := httptest.NewRequest("GET", "/", nil)
		req.AddCookie(cookie)
		gs, err := st.New(req, "s")
		if err != nil {
			t.Fatal(err)
		}
		if gs.Values["a"] != gs.Values["b"] {
			torn++
		}
	}
	close(stop)
	wg.Wait()
	if torn > 0 {
		t.Errorf("%d of 5000 reads saw a != b: a Save seen half done", torn)
	}
}

// storeCookie returns the value of the response's cookie of name, and how
// many it set.
func storeCookie(resp *http.Response, name string) (string, int) {
	v, n := "", 0
	for _, c := range resp.Cookies() {
		if c.Name == name {
			v, n = c.Value, n+1
		}
	}
	return v, n
}

// A request that only reads, on another node, a session whose cookie names
// the first: without Store.Middleware no cookie can be sent, so the id
// keeps its route (rebound, it would be rebound back on every request the
// balancer sends to the first node), until Save sets the cookie; behind
// Store.Middleware, Get rebinds it and the response carries the new
// cookie.
func TestStoreRebindsOnlyWhenTheCookieIsSent(t *testing.T) {
	leaktest.Check(t)
	nodes := deltaPair(t, nil)
	quietly := func(c *web.Config) { c.Logger = quiet() }
	st1 := store(t, nodes[0].Manager(), "n1", quietly)
	st2 := store(t, nodes[1].Manager(), "n2", quietly)
	read := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := st2.Get(r, "s"); err != nil {
			t.Error(err)
		}
	})
	save := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gs, err := st2.Get(r, "s")
		if err != nil {
			t.Error(err)
		}
		gs.Values["n"] = "2"
		if err := gs.Save(r, w); err != nil {
			t.Error(err)
		}
	})
	readThenWrite := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "started")
		read(w, r)
	})
	writeThenSave := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "started")
		save(w, r)
	})
	failedSave := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gs, _ := st2.Get(r, "s")
		gs.Values["bad"] = unregistered{}
		if err := gs.Save(r, w); err == nil {
			t.Error("Save of an unregistered type succeeded")
		}
	})
	for _, tc := range []struct {
		name       string
		h          http.Handler
		wantCookie bool // the response sets the rebound id
	}{
		{"read", read, false},
		{"save", save, true},
		{"read behind Store.Middleware", st2.Middleware(read), true},
		{"save behind Store.Middleware", st2.Middleware(save), true},
		{"failed save behind Store.Middleware", st2.Middleware(failedSave), true},
		{"read after the response started, behind Store.Middleware", st2.Middleware(readThenWrite), false},
		{"save after the response started, behind Store.Middleware", st2.Middleware(writeThenSave), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
			gs, _ := st1.Get(req, "s")
			gs.Values["n"] = "1"
			if err := gs.Save(req, rec); err != nil {
				t.Fatal(err)
			}
			id := gs.ID
			base, _ := manager.SplitID(id)
			if !eventually(func() bool { _, err := nodes[1].Manager().Find(context.Background(), id); return err == nil }) {
				t.Fatal("n2 never got the session")
			}
			r, w := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
			r.AddCookie(&http.Cookie{Name: "s", Value: id})
			rebinds := st2.Stats().Rebinds
			tc.h.ServeHTTP(w, r)
			if n := st2.Stats().Rebinds - rebinds; n != 1 && tc.wantCookie || n != 0 && !tc.wantCookie {
				t.Errorf("Stats().Rebinds went up by %d", n)
			}
			s, err := nodes[1].Manager().Find(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			got, n := storeCookie(w.Result(), "s")
			if tc.wantCookie {
				if want := manager.JoinID(base, "n2"); got != want || n != 1 || s.ID() != want {
					t.Errorf("response set %d cookies, %q; session %q; want one cookie and the session %q", n, got, s.ID(), want)
				}
			} else if n != 0 || s.ID() != id {
				t.Errorf("response set %d cookies, %q; session %q; want none, and the session still %q", n, got, s.ID(), id)
			}
		})
	}
}

// Flashes are one []interface{} value: a string flash comes back as a
// string, an int as an int64 (as the Store's doc says).
func TestStoreFlashTypes(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
	gs, _ := st.Get(req, "s")
	gs.AddFlash("saved")
	gs.AddFlash(true)
	gs.AddFlash(42)
	if err := gs.Save(req, rec); err != nil {
		t.Fatal(err)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.AddCookie(rec.Result().Cookies()[0])
	back, err := st.Get(req, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Flashes(); !reflect.DeepEqual(got, []any{"saved", true, int64(42)}) {
		t.Errorf("flashes %#v, want saved, true, int64(42)", got)
	}
}

// A request that read the session before another request of the user
// logged out does not bring the logged-out session back when it saves.
func TestStoreSaveAfterConcurrentLogoutSavesNothing(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	cookie := savedSession(t, st, map[string]any{"user": "alice"})
	poll, pollRec := httptest.NewRequest("GET", "/poll", nil), httptest.NewRecorder()
	poll.AddCookie(cookie)
	b, _ := st.Get(poll, "s")
	logout, logoutRec := httptest.NewRequest("GET", "/logout", nil), httptest.NewRecorder()
	logout.AddCookie(cookie)
	a, _ := st.Get(logout, "s")
	a.Options.MaxAge = -1
	if err := a.Save(logout, logoutRec); err != nil {
		t.Fatal(err)
	}
	b.Values["seen"] = "now"
	if err := b.Save(poll, pollRec); err != nil {
		t.Errorf("Save after the logout = %v, want nil", err)
	}
	if cs := pollRec.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 || m.Count() != 0 {
		t.Errorf("cookies %v, %d sessions; want the cookie deleted and no session", cs, m.Count())
	}
}

// MaxAge sets the cookies' Max-Age, as gorilla's own stores' MaxAge does.
func TestStoreMaxAge(t *testing.T) {
	st := store(t, standard(t, "node1", ""), "node1", nil)
	st.MaxAge(3600)
	if cs := savedSession(t, st, map[string]any{"a": "x"}); cs.MaxAge != 3600 {
		t.Errorf("cookie Max-Age %d, want 3600", cs.MaxAge)
	}
}

// Of several cookies of a session's name (a stale or empty one of a
// parent domain or path sent first), the first that names a session is
// the request's, as through the middleware: Get loads it and Save keeps
// it, instead of giving the user a new, empty session on every request.
func TestStoreSeveralSessionCookies(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	live := savedSession(t, st, map[string]any{"user": "alice"}).Value
	for _, header := range []string{
		"s=stale.node9; s=" + live,
		"s=; s=" + live,
		"s=" + live + "; s=stale.node9",
	} {
		req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
		req.Header.Set("Cookie", header)
		gs, err := st.Get(req, "s")
		if u, _ := gs.Values["user"].(string); err != nil || gs.IsNew || gs.ID != live || u != "alice" {
			t.Errorf("Cookie: %s: Get = %v, IsNew %v, id %q, user %q; want the live session %q of alice", header, err, gs.IsNew, gs.ID, u, live)
		}
		gs.Values["page"] = "/x"
		if err := gs.Save(req, rec); err != nil {
			t.Errorf("Cookie: %s: Save = %v", header, err)
		}
		if v, _ := storeCookie(rec.Result(), "s"); v != live || m.Count() != 1 {
			t.Errorf("Cookie: %s: Save set the cookie %q, %d sessions; want the live session's alone", header, v, m.Count())
		}
	}
	// A lookup that fails for the live one after a stale one: Save does
	// not replace it, and a logout destroys it.
	var fail atomic.Bool
	st = store(t, lookupFails{m, &fail}, "node1", nil)
	for _, logout := range []bool{false, true} {
		fail.Store(true)
		req, rec := httptest.NewRequest("GET", "/", nil), httptest.NewRecorder()
		req.Header.Set("Cookie", "s=stale.node9; s="+live)
		gs, _ := st.Get(req, "s") // the error ignored
		fail.Store(false)
		if logout {
			gs.Options.MaxAge = -1
		}
		err := gs.Save(req, rec)
		_, ferr := m.Find(context.Background(), live)
		switch {
		case !logout && (err == nil || ferr != nil || m.Count() != 1):
			t.Errorf("Save after a failed Get = %v, the live session %v, %d sessions; want an error and the live session alone", err, ferr, m.Count())
		case logout && (err != nil || !errors.Is(ferr, manager.ErrNotFound)):
			t.Errorf("logout after a failed Get = %v, the live session %v; want nil and the session gone", err, ferr)
		}
	}
}

// Two requests of one session that read it at the same time and save it,
// as gorilla handlers do at their end, each write what they changed: a
// page's request that saves what it read does not undo the login, the
// logout or the cart change that another request saved meanwhile, and a
// value deleted between two Saves of one request is removed.
func TestStoreSaveKeepsAConcurrentRequestsChanges(t *testing.T) {
	m := standard(t, "node1", "")
	st := store(t, m, "node1", nil)
	get := func(c *http.Cookie) (*http.Request, *sessions.Session) {
		req := httptest.NewRequest("GET", "/", nil)
		req.AddCookie(c)
		gs, err := st.Get(req, "s")
		if err != nil || gs.IsNew {
			t.Fatalf("Get = %v, IsNew %v", err, gs.IsNew)
		}
		return req, gs
	}
	save := func(r *http.Request, gs *sessions.Session) {
		if err := gs.Save(r, httptest.NewRecorder()); err != nil {
			t.Fatal(err)
		}
	}
	check := func(c *http.Cookie, want map[string]any) {
		t.Helper()
		s, err := m.Find(context.Background(), c.Value)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.GetCopies(); !reflect.DeepEqual(got, want) {
			t.Errorf("session holds %v, want %v", got, want)
		}
	}

	c := savedSession(t, st, map[string]any{"cart": "book", "user": "alice"})
	pageReq, page := get(c)
	logoutReq, logout := get(c)
	delete(logout.Values, "user")
	logout.Values["cart"] = "book,pen"
	save(logoutReq, logout)
	page.Values["seen"] = "/x"
	save(pageReq, page)
	check(c, map[string]any{"cart": "book,pen", "seen": "/x"})

	c = savedSession(t, st, map[string]any{"cart": "book"})
	pageReq, page = get(c)
	loginReq, login := get(c)
	login.Values["user"] = "alice"
	save(loginReq, login)
	delete(page.Values, "cart")
	save(pageReq, page)
	check(c, map[string]any{"user": "alice"})

	req, gs := get(c)
	gs.Values["step"] = int64(1)
	save(req, gs)
	delete(gs.Values, "step")
	gs.Values["user"] = nil
	save(req, gs)
	check(c, map[string]any{})
}
