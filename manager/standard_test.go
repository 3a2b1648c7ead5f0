package manager

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func standardConfig(t *testing.T, clock *fakeClock) Config {
	c := DefaultConfig()
	c.Route = "node1"
	c.Types = NewTypes()
	c.Types.MustRegister("test.cart", cart{})
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	if clock != nil {
		c.Clock = clock.now
	}
	return c
}

func newStandard(t *testing.T, c Config) *Standard {
	t.Helper()
	m, err := NewStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func TestStandardLifecycle(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := standardConfig(t, clock)
	cfg.IDGracePeriod = time.Minute
	m := newStandard(t, cfg)
	var mu sync.Mutex
	events := map[string]int{}
	m.AddListener(Listener{
		Created:   func(*Session) { mu.Lock(); events["created"]++; mu.Unlock() },
		Destroyed: func(_ *Session, r Reason) { mu.Lock(); events[r.String()]++; mu.Unlock() },
		IDChanged: func(*Session, string) { mu.Lock(); events["id"]++; mu.Unlock() },
	})

	s, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base, route := SplitID(s.ID())
	if route != "node1" || len(base) < 22 {
		t.Errorf("id %q: want >=128 random bits and route node1", s.ID())
	}
	if !s.IsNew() {
		t.Error("new session is not new")
	}
	_ = s.Set("n", 1)
	_ = s.SetPrincipal("alice")
	_ = m.Commit(ctx, s)
	if s.IsNew() {
		t.Error("session still new after commit")
	}
	got, err := m.Find(ctx, s.ID())
	if err != nil || got != s {
		t.Fatalf("Find = %v, %v", got, err)
	}
	if ss, _ := m.FindByPrincipal(ctx, "alice"); len(ss) != 1 || ss[0] != s {
		t.Errorf("FindByPrincipal(alice) = %v", ss)
	}

	// ChangeID: the old id keeps working for the grace period configured.
	old := s.ID()
	newID, err := m.ChangeID(ctx, s, "")
	if err != nil || newID == old || !strings.HasSuffix(newID, ".node1") || s.ID() != newID {
		t.Fatalf("ChangeID = %q, %v (old %q)", newID, err, old)
	}
	if got, err := m.Find(ctx, old); err != nil || got != s {
		t.Errorf("old id within the grace period: %v, %v", got, err)
	}
	clock.advance(2 * time.Minute)
	m.sweep()
	if _, err := m.Find(ctx, old); !errors.Is(err, ErrNotFound) {
		t.Errorf("old id after the grace period: %v, want ErrNotFound", err)
	}
	if _, err := m.Find(ctx, newID); err != nil {
		t.Errorf("new id: %v", err)
	}

	// Expiry: idle past max inactive, gone at the next sweep.
	clock.advance(31 * time.Minute)
	m.sweep()
	if _, err := m.Find(ctx, newID); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired session: %v, want ErrNotFound", err)
	}
	if s.Valid() || s.Set("x", 1) != ErrInvalidated {
		t.Error("expired session still usable")
	}

	s2, _ := m.Create(ctx)
	if err := m.Invalidate(ctx, s2.ID()); err != nil {
		t.Fatal(err)
	}
	if m.Count() != 0 {
		t.Errorf("Count = %d after invalidate, want 0", m.Count())
	}
	// An invalidated session is told apart from an expired one for a
	// while, then is just not found.
	if _, err := m.Find(ctx, s2.ID()); !errors.Is(err, ErrRecentlyInvalidated) || !errors.Is(err, ErrNotFound) {
		t.Errorf("Find after Invalidate = %v, want ErrRecentlyInvalidated, an ErrNotFound", err)
	}
	clock.advance(2 * time.Minute)
	m.sweep()
	if _, err := m.Find(ctx, s2.ID()); err != ErrNotFound {
		t.Errorf("Find a while after Invalidate = %v, want ErrNotFound", err)
	}
	mu.Lock()
	want := map[string]int{"created": 2, "expired": 1, "invalidated": 1, "id": 1}
	for k, v := range want {
		if events[k] != v {
			t.Errorf("%s events = %d, want %d", k, events[k], v)
		}
	}
	mu.Unlock()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Create after Close = %v, want ErrClosed", err)
	}
}

func TestStandardRestartKeepsSessions(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := standardConfig(t, clock)
	c.File = filepath.Join(t.TempDir(), "sessions.bin")

	m1 := newStandard(t, c)
	keep, _ := m1.Create(ctx)
	_ = keep.Set("cart", cart{Items: map[string]int{"apple": 2}})
	_ = keep.SetPrincipal("alice")
	short, _ := m1.Create(ctx)
	_ = short.SetMaxInactive(time.Minute)
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}

	clock.advance(5 * time.Minute) // the short session expires while the node is down
	m2 := newStandard(t, c)
	if m2.Count() != 1 {
		t.Fatalf("%d sessions after restart, want 1 (one expired)", m2.Count())
	}
	got, err := m2.Find(ctx, keep.ID())
	if err != nil {
		t.Fatal(err)
	}
	if ct, ok := Attr[cart](got, "cart"); !ok || ct.Items["apple"] != 2 || got.Principal() != "alice" {
		t.Errorf("restored session: cart %+v, principal %q", ct, got.Principal())
	}
	if _, err := os.Stat(c.File); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("session file left behind after load: %v", err)
	}
}

func TestStandardSurvivesCorruptFile(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"garbage", []byte("not a session file")},
		{"truncated", []byte(fileMagic + "\x91")},
		{"bad checksum", append([]byte(fileMagic+"\x90"), 0, 0, 0, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := standardConfig(t, nil)
			c.File = filepath.Join(dir, tc.name+".bin")
			if err := os.WriteFile(c.File, tc.body, 0o600); err != nil {
				t.Fatal(err)
			}
			m := newStandard(t, c)
			if m.Count() != 0 {
				t.Errorf("Count = %d", m.Count())
			}
			aside, _ := filepath.Glob(c.File + ".corrupt-*")
			if len(aside) != 1 {
				t.Errorf("corrupt file not moved aside: %v", aside)
			}
			if _, err := m.Create(ctx); err != nil {
				t.Errorf("Create after a corrupt file: %v", err)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		edit  func(*Config)
		field string
	}{
		{func(c *Config) { c.Route = "" }, "Route"},
		{func(c *Config) { c.Route = "a.b" }, "Route"},
		{func(c *Config) { c.Route = `a"b` }, "Route"},
		{func(c *Config) { c.Route = "nœud" }, "Route"},
		{func(c *Config) { c.MaxInactive = -1 }, "MaxInactive"},
		{func(c *Config) { c.SweepInterval = 0 }, "SweepInterval"},
		{func(c *Config) { c.IDGracePeriod = -1 }, "IDGracePeriod"},
	} {
		c := DefaultConfig()
		c.Route = "node1"
		tc.edit(&c)
		_, err := NewStandard(c)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("NewStandard = %v, want a ConfigError for %s", err, tc.field)
		}
	}
}

// By default a renewed session's old id stops working at once: an id
// planted before a login never reaches the logged-in session.
func TestRenewedIDStopsAtOnceByDefault(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	m := newStandard(t, standardConfig(t, &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}))
	s, _ := m.Create(ctx)
	_ = m.Commit(ctx, s)
	old := s.ID()
	newID, err := m.ChangeID(ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Find(ctx, old); !errors.Is(err, ErrNotFound) {
		t.Errorf("old id after RenewID: %v, %v; want ErrNotFound", got, err)
	}
	if got, err := m.Find(ctx, newID); err != nil || got != s {
		t.Errorf("new id: %v, %v", got, err)
	}
}

// A listener that panics is logged and skipped, as Tomcat logs a
// listener's exception: the expiry sweep, which runs on its own goroutine,
// must not take the process down, and the other listeners still hear of
// the event.
func TestPanickingListenerIsRecovered(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newStandard(t, standardConfig(t, clock))
	var created, destroyed int
	m.AddListener(Listener{
		Created:   func(*Session) { panic("created") },
		Destroyed: func(*Session, Reason) { panic("destroyed") },
	})
	m.AddListener(Listener{
		Created:   func(*Session) { created++ },
		Destroyed: func(*Session, Reason) { destroyed++ },
	})
	s, err := m.Create(ctx)
	if err != nil || s == nil {
		t.Fatalf("Create with a panicking listener = %v, %v", s, err)
	}
	clock.advance(time.Hour)
	m.sweep()
	if created != 1 || destroyed != 1 {
		t.Errorf("the listener after the panicking one heard %d creations, %d destructions; want 1, 1", created, destroyed)
	}
	if m.Count() != 0 {
		t.Errorf("Count = %d after the sweep, want 0", m.Count())
	}
}

// A listener removed with the function Listen returned hears of no later
// event, and the manager no longer holds it; the others still hear them.
func TestRemovedListenerIsNotCalled(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newStandard(t, standardConfig(t, clock))
	var removedHeard, keptHeard, added int
	remove := m.Listen(Listener{
		Created:        func(*Session) { removedHeard++ },
		Destroyed:      func(*Session, Reason) { removedHeard++ },
		AttributeAdded: func(*Session, string, any) { added++ },
	})
	m.AddListener(Listener{
		Created:   func(*Session) { keptHeard++ },
		Destroyed: func(*Session, Reason) { keptHeard++ },
	})
	s, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if removedHeard != 1 || keptHeard != 1 || !m.h.attrListeners.Load() {
		t.Fatalf("before the removal: heard %d and %d creations, attribute listeners %v; want 1, 1, true", removedHeard, keptHeard, m.h.attrListeners.Load())
	}
	remove()
	remove() // does nothing
	if n := len(m.h.listeners); n != 1 {
		t.Fatalf("the manager holds %d listeners after one of two was removed", n)
	}
	if m.h.attrListeners.Load() {
		t.Error("no attribute listener left, but the manager still decodes values for one")
	}
	_ = s.Set("n", 1)
	if err := m.Invalidate(ctx, s.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Hour)
	m.sweep()
	if removedHeard != 1 || added != 0 {
		t.Errorf("the removed listener heard %d events after its removal", removedHeard-1+added)
	}
	if keptHeard != 4 {
		t.Errorf("the other listener heard %d events, want 4", keptHeard)
	}
}

// Once Close has saved the sessions, a logout or a renewal (RenewID after
// a login) can no longer be recorded in the file: it must fail, not
// report success and be undone by the next start, which would bring back a
// logged-out session, or the pre-login id of a logged-in one.
func TestStandardRefusesChangesAfterClose(t *testing.T) {
	leaktest.Check(t)
	ctx := context.Background()
	c := standardConfig(t, nil)
	c.File = filepath.Join(t.TempDir(), "sessions.bin")
	m1 := newStandard(t, c)
	out, _ := m1.Create(ctx)
	renewed, _ := m1.Create(ctx)
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m1.Invalidate(ctx, out.ID()); !errors.Is(err, ErrClosed) {
		t.Errorf("Invalidate after Close = %v, want ErrClosed", err)
	}
	if id, err := m1.ChangeID(ctx, renewed, ""); !errors.Is(err, ErrClosed) || id != "" {
		t.Errorf("ChangeID after Close = %q, %v; want \"\", ErrClosed", id, err)
	}
	m2 := newStandard(t, c)
	if _, err := m2.Find(ctx, renewed.ID()); err != nil {
		t.Errorf("the session under the id it was saved with: %v", err)
	}
}
