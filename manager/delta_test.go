package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/replication"
)

// deltaCluster is a set of Delta managers on one memNet.
type deltaCluster struct {
	t     *testing.T
	net   *memNet
	clock *fakeClock
	nodes map[string]*Delta
}

func newDeltaCluster(t *testing.T, routes ...string) *deltaCluster {
	t.Helper()
	c := &deltaCluster{t: t, net: newMemNet(), clock: &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, nodes: map[string]*Delta{}}
	t.Cleanup(func() {
		for _, m := range c.nodes {
			_ = m.Close(context.Background())
		}
		c.net.close()
	})
	for _, r := range routes {
		c.start(r)
	}
	return c
}

// start adds a node and runs its state transfer.
func (c *deltaCluster) start(route string) *Delta {
	c.t.Helper()
	m := c.join(route)
	if err := m.Sync(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// join adds a node that has not run its state transfer: not ready.
func (c *deltaCluster) join(route string) *Delta {
	c.t.Helper()
	return c.joinVia(route, c.net.transport(route))
}

// joinVia is join with the node's transport t.
func (c *deltaCluster) joinVia(route string, t Transport) *Delta {
	c.t.Helper()
	cfg := DefaultDeltaConfig()
	cfg.Route = route
	cfg.Clock = c.clock.now
	cfg.SweepInterval = time.Hour // tests sweep by hand
	cfg.Types = NewTypes()
	cfg.Types.MustRegister("test.cart", cart{})
	cfg.Logger = slog.New(slog.NewTextHandler(c.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := NewDelta(cfg, t)
	if err != nil {
		c.t.Fatal(err)
	}
	c.net.add(route, m)
	c.nodes[route] = m
	return m
}

// joinHolding adds node route and starts its state transfer from peer
// from, holding from's first message of kind k to it on its way. It
// returns once that message is held; release lets it go on and returns
// the transfer's outcome.
func (c *deltaCluster) joinHolding(route, from string, k kind) (d *Delta, release func() error) {
	c.t.Helper()
	hold, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.net.drop = func(f, to string, msg []byte) bool {
		if f == from && to == route && kind(msg[0]) == k {
			once.Do(func() { close(held); <-hold })
		}
		return false
	}
	d = c.join(route)
	synced := make(chan error, 1)
	go func() { synced <- d.syncFrom(bg, from) }()
	<-held
	return d, func() error {
		close(hold)
		return <-synced
	}
}

// settle waits until every queued message has been delivered.
func (c *deltaCluster) settle() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		idle := true
		c.net.mu.Lock()
		for _, p := range c.net.pairs {
			p.mu.Lock()
			if len(p.queue) > 0 {
				idle = false
			}
			p.mu.Unlock()
		}
		c.net.mu.Unlock()
		if idle {
			// Deliveries in progress finish quickly; check twice.
			time.Sleep(5 * time.Millisecond)
			if c.idle() {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatal("network did not settle")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *deltaCluster) idle() bool {
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	for _, p := range c.net.pairs {
		p.mu.Lock()
		n := len(p.queue)
		p.mu.Unlock()
		if n > 0 {
			return false
		}
	}
	return true
}

// same checks that every node holds the session at the same revision with
// the same attributes, and returns the revision.
func (c *deltaCluster) same(id string) Rev {
	c.t.Helper()
	var want Full
	first := true
	for r, m := range c.nodes {
		s := m.st.get(id)
		if s == nil {
			c.t.Fatalf("%s does not hold %s", r, id)
		}
		f := s.full()
		f.Access = 0
		if first {
			want, first = f, false
			continue
		}
		if f.Rev != want.Rev || fmt.Sprint(f.Attrs) != fmt.Sprint(want.Attrs) || f.Principal != want.Principal {
			c.t.Fatalf("%s holds %+v, another node %+v", r, f, want)
		}
	}
	return want.Rev
}

var bg = context.Background()

func TestDeltaWriteOnOneReadOnAll(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	a := c.nodes["a"]
	s, _ := a.Create(bg)
	_ = s.Set("cart", cart{Items: map[string]int{"apple": 1}})
	_ = s.SetPrincipal("alice")
	if err := a.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	// Ack mode: when Commit returns, the peers have the change.
	for _, r := range []string{"b", "c"} {
		got, err := c.nodes[r].Find(bg, s.ID())
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if ct, ok := Attr[cart](got, "cart"); !ok || ct.Items["apple"] != 1 || got.Principal() != "alice" {
			t.Errorf("%s reads cart %+v, principal %q", r, ct, got.Principal())
		}
		if ss, _ := c.nodes[r].FindByPrincipal(bg, "alice"); len(ss) != 1 {
			t.Errorf("%s FindByPrincipal = %d sessions", r, len(ss))
		}
	}
	// A change on b reaches a and c.
	sb, _ := c.nodes["b"].Find(bg, s.ID())
	_ = sb.Set("n", 2)
	_ = c.nodes["b"].Commit(bg, sb)
	c.settle()
	if rev := c.same(s.ID()); rev.N != 2 || rev.Node != "b" {
		t.Errorf("revision %+v, want version 2 by b", rev)
	}
}

func TestDeltaConcurrentWritersConverge(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	s, _ := c.nodes["a"].Create(bg)
	_ = c.nodes["a"].Commit(bg, s)
	id := s.ID()
	var wg sync.WaitGroup
	for _, r := range []string{"a", "b"} {
		wg.Go(func() {
			m := c.nodes[r]
			for i := range 200 {
				s, err := m.Find(bg, id)
				if err != nil {
					t.Error(err)
					return
				}
				_ = s.Set("last", r+fmt.Sprint(i))
				_ = s.Set(r, i)
				_ = m.Commit(bg, s)
			}
		})
	}
	wg.Wait()
	c.settle()
	c.same(id)
	conflicts := c.nodes["a"].Stats().Conflicts + c.nodes["b"].Stats().Conflicts + c.nodes["c"].Stats().Conflicts
	t.Logf("conflicts resolved: %d", conflicts)
}

// A peer's change that arrives while a request on this node is changing
// the same attributes: the request's commit goes on top of the peer's
// revision, and both nodes end with the request's values, not each with
// its own at one revision.
func TestDeltaPeerChangeDuringRequest(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.Set("last", "init")
	_ = s.Set("other", "init")
	_ = a.Commit(bg, s)
	c.settle()
	id := s.ID()

	sa, _ := a.Find(bg, id)
	_ = sa.Set("last", "from-a") // a request on a, not committed yet
	_ = sa.SetPrincipal("alice")
	sb, _ := b.Find(bg, id)
	_ = sb.Set("last", "from-b")
	_ = sb.Set("other", "from-b")
	_ = sb.SetPrincipal("bob")
	if err := b.Commit(bg, sb); err != nil { // ack: a has applied it
		t.Fatal(err)
	}
	if v, _ := sa.GetString("last"); v != "from-a" {
		t.Errorf("the request on a reads last=%q after b's change, want its own from-a", v)
	}
	if err := a.Commit(bg, sa); err != nil {
		t.Fatal(err)
	}
	c.settle()
	c.same(id)
	got := b.st.get(id)
	last, _ := got.GetString("last")
	other, _ := got.GetString("other")
	if last != "from-a" || other != "from-b" || got.Principal() != "alice" {
		t.Errorf("b holds last=%q other=%q principal=%q, want from-a, from-b, alice", last, other, got.Principal())
	}
}

func TestDeltaGapTriggersResync(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.Set("n", 1)
	_ = a.Commit(bg, s)
	var dropped atomic.Bool
	c.net.drop = func(from, to string, msg []byte) bool {
		return to == "b" && kind(msg[0]) == kindChange && !dropped.Swap(true)
	}
	_ = s.Set("n", 2)
	_ = a.Commit(bg, s) // lost on the way to b
	c.net.drop = nil
	_ = s.Set("n", 3)
	_ = a.Commit(bg, s) // b sees a gap and asks for a full copy
	c.settle()
	if rev := c.same(s.ID()); rev.N != 3 {
		t.Errorf("revision %d, want 3", rev.N)
	}
	got, _ := b.Find(bg, s.ID())
	if n, _ := got.GetInt("n"); n != 3 {
		t.Errorf("b reads n=%d, want 3", n)
	}
	if b.Stats().Resyncs == 0 {
		t.Error("no resync counted")
	}
}

func TestDeltaExpiryEverywhere(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.SetMaxInactive(10 * time.Minute)
	_ = a.Commit(bg, s)
	id := s.ID()

	// A read on b eight minutes later keeps the session alive everywhere:
	// its access time travels in b's next touch batch.
	c.clock.advance(8 * time.Minute)
	sb, _ := b.Find(bg, id)
	_ = b.Commit(bg, sb)
	for _, m := range c.nodes {
		m.sweep()
	}
	c.settle()
	c.clock.advance(5 * time.Minute) // 13 min after creation, 5 after b's read
	for _, m := range c.nodes {
		m.sweep()
	}
	c.settle()
	for r, m := range c.nodes {
		if m.Count() != 1 {
			t.Fatalf("%s expired the session early", r)
		}
	}
	c.clock.advance(6 * time.Minute) // 11 min after the last access
	// a's last access is b's word, which a later batch of b's could
	// overtake: a waits two more sweep intervals. b, which served the
	// access, expires the session on time and tells the others.
	a.sweep()
	c.settle()
	if a.Count() != 1 {
		t.Fatal("a expired on time a session last used on b")
	}
	b.sweep()
	c.settle()
	for r, m := range c.nodes {
		if m.Count() != 0 {
			t.Errorf("%s still holds the expired session", r)
		}
		if _, err := m.Find(bg, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s Find = %v, want ErrNotFound", r, err)
		}
	}
}

func TestDeltaInvalidateAndRename(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	a, b := c.nodes["a"], c.nodes["b"]
	var destroyed atomic.Int64
	for _, m := range c.nodes {
		m.AddListener(Listener{Destroyed: func(*Session, Reason) { destroyed.Add(1) }})
	}
	s, _ := a.Create(bg)
	_ = a.Commit(bg, s)
	old := s.ID()
	base, _ := SplitID(old)

	// b rebinds the session to its route: every node renames its copy.
	sb, _ := b.Find(bg, old)
	newID, err := b.ChangeID(bg, sb, base)
	if err != nil || newID != base+".b" {
		t.Fatalf("ChangeID = %q, %v", newID, err)
	}
	for r, m := range c.nodes {
		if got, err := m.Find(bg, newID); err != nil || got.ID() != newID {
			t.Errorf("%s Find(new) = %v, %v", r, got, err)
		}
		if _, err := m.Find(bg, old); err != nil {
			t.Errorf("%s: old id within the grace period: %v", r, err)
		}
	}
	if err := c.nodes["c"].Invalidate(bg, newID); err != nil {
		t.Fatal(err)
	}
	for r, m := range c.nodes {
		if m.Count() != 0 {
			t.Errorf("%s still holds the invalidated session", r)
		}
	}
	if n := destroyed.Load(); n != 3 {
		t.Errorf("Destroyed fired %d times, want once per node", n)
	}
}

func TestDeltaStateTransferDuringWrites(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a := c.nodes["a"]
	const n = 5000
	var ids []string
	for i := range n {
		s, _ := a.Create(bg)
		_ = s.Set("i", i)
		_ = a.Commit(bg, s)
		ids = append(ids, s.ID())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // writes go on during the transfer
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s, err := a.Find(bg, ids[i%n])
			if err != nil {
				t.Error(err)
				return
			}
			_ = s.Set("w", i)
			_ = a.Commit(bg, s)
		}
	})
	d := c.start("d")
	close(stop)
	wg.Wait()
	c.settle()
	if !d.Ready() || d.Stats().Transfers != 1 {
		t.Fatalf("d ready %v after %d transfers", d.Ready(), d.Stats().Transfers)
	}
	for _, id := range ids {
		c.same(id)
	}
}

func TestDeltaNotReadyDoesNotAnswer(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a")
	cfg := DefaultDeltaConfig()
	cfg.Route = "z"
	m, err := NewDelta(cfg, c.net.transport("z"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(bg)
	if _, err := m.Find(bg, "nope.a"); !errors.Is(err, ErrNotReady) {
		t.Errorf("Find before Sync = %v, want ErrNotReady", err)
	}
}

func TestDeltaListenersOnReplication(t *testing.T) {
	leaktest.Check(t)
	for _, notify := range []bool{true, false} {
		t.Run(fmt.Sprint("notify=", notify), func(t *testing.T) {
			c := newDeltaCluster(t, "a", "b")
			c.nodes["b"].h.notifyReplicated = notify
			var got []string
			var mu sync.Mutex
			c.nodes["b"].AddListener(Listener{
				Created:        func(*Session) { mu.Lock(); got = append(got, "created"); mu.Unlock() },
				AttributeAdded: func(_ *Session, n string, _ any) { mu.Lock(); got = append(got, "added "+n); mu.Unlock() },
			})
			s, _ := c.nodes["a"].Create(bg)
			_ = s.Set("x", 1)
			_ = c.nodes["a"].Commit(bg, s)
			mu.Lock()
			defer mu.Unlock()
			want := []string{"created", "added x"}
			if !notify {
				want = nil
			}
			if !slices.Equal(got, want) {
				t.Errorf("b heard %q, want %q", got, want)
			}
		})
	}
}

// TestDeltaPartitionHealsToOneRevision cuts two nodes apart while both
// change the same session, one of them rebinding it to its own route (the
// balancer failed a user over to it), then lets them resynchronise as the
// channel does on reconnection: both end with the same id and revision,
// the greater one, and the discarded change is counted.
func TestDeltaPartitionHealsToOneRevision(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.Set("count", 1)
	_ = a.Commit(bg, s)
	c.settle()
	id := s.ID()

	var cut atomic.Bool
	cut.Store(true)
	c.net.drop = func(from, to string, msg []byte) bool { return cut.Load() }
	for i := 2; i <= 4; i++ { // the majority side: three writes
		_ = s.Set("count", i)
		_ = a.Commit(bg, s)
	}
	sb, err := b.Find(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := SplitID(id)
	if _, err := b.ChangeID(bg, sb, base); err != nil { // rebound to b
		t.Fatal(err)
	}
	_ = sb.Set("count", 100)
	_ = b.Commit(bg, sb)
	if sb.ID() == id {
		t.Fatal("b did not rebind the session")
	}

	cut.Store(false)
	c.net.drop = nil
	a.resync("b")
	b.resync("a")
	c.settle()
	if a.Count() != 1 || b.Count() != 1 {
		t.Fatalf("a holds %d sessions, b %d; want one each", a.Count(), b.Count())
	}
	rev := c.same(id)
	if rev.Node != "a" || rev.N != 4 {
		t.Errorf("kept revision %+v, want version 4 by a", rev)
	}
	got := b.st.get(id)
	if got == nil || got.ID() != id {
		t.Fatalf("b's session has id %v, want %s", got, id)
	}
	if n, _ := got.GetInt("count"); n != 4 {
		t.Errorf("b reads count=%d, want 4", n)
	}
	if b.Stats().Conflicts == 0 {
		t.Error("the change discarded on b was not counted")
	}
}

// TestMaxSessionsRejects refuses sessions beyond Config.MaxSessions and
// counts them, as Tomcat's maxActiveSessions and rejectedSessions.
func TestMaxSessionsRejects(t *testing.T) {
	leaktest.Check(t)
	m := newLoneDelta(t, func(cfg *DeltaConfig) { cfg.MaxSessions = 2 })
	for range 2 {
		if _, err := m.Create(bg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Create(bg); !errors.Is(err, ErrTooManySessions) {
		t.Errorf("third Create = %v, want ErrTooManySessions", err)
	}
	if st := m.Stats(); st.Rejected != 1 || st.MaxActive != 2 {
		t.Errorf("rejected %d, max active %d; want 1, 2", st.Rejected, st.MaxActive)
	}
}

// A read on b shortly before the deadline, whose access time waits for b's
// next sweep, when a sweeps first: a expires the session, b, which saw the
// later access, keeps it and sends a full copy back, so that every node
// still holds it.
func TestDeltaExpiryWhileAccessedElsewhere(t *testing.T) {
	c := newDeltaCluster(t, "a", "b", "c")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.SetMaxInactive(10 * time.Minute)
	_ = s.Set("cart", 1)
	_ = a.Commit(bg, s)
	id := s.ID()

	c.clock.advance(10*time.Minute - 2*time.Second)
	sb, err := b.Find(bg, id) // the user reads on b: access now
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Commit(bg, sb) // read only: the access waits for b's next sweep
	c.clock.advance(3 * time.Second)
	a.sweep() // a's sweep comes first (sweeps are not aligned)
	c.settle()
	b.sweep() // b's sweep a few seconds later
	c.settle()
	c.sweepAll()

	for _, r := range []string{"a", "b", "c"} {
		if _, err := c.nodes[r].Find(bg, id); err != nil {
			t.Errorf("%s: Find = %v, 1s after the user's last access (timeout 10m)", r, err)
		}
	}
}

// A request fails over to a node that has not heard of the user's last
// access: the node that served it died before sending its batch of access
// times. The copy here looks idle past its deadline, but its last access
// is a peer's word, which a later one may overtake: the node neither
// sweeps it away nor refuses the request. A copy whose word never comes
// expires two sweep intervals past its deadline.
func TestDeltaFailoverJustAfterAnAccessElsewhere(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	var ids []string
	for range 2 {
		s, _ := b.Create(bg)
		_ = s.SetMaxInactive(10 * time.Minute)
		_ = b.Commit(bg, s)
		ids = append(ids, s.ID())
	}
	c.settle()
	used, idle := ids[0], ids[1]

	c.clock.advance(9 * time.Minute)
	s, err := b.Find(bg, used) // the user's last request on b
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Commit(bg, s)                                                        // read only: the access waits for b's next sweep
	c.net.drop = func(from, to string, msg []byte) bool { return from == "b" } // b dies
	c.clock.advance(2 * time.Minute)
	a.sweep()
	c.settle()
	if a.st.get(used) == nil {
		t.Fatal("a's sweep expired a session used on b 2 minutes ago (timeout 10m)")
	}
	if _, err := a.Find(bg, used); err != nil {
		t.Fatalf("a: Find = %v, 2 minutes after the user's last access (timeout 10m)", err)
	}

	if a.st.get(idle) == nil {
		t.Fatal("a's sweep expired a session one minute past its deadline, on b's word that may be late")
	}

	c.clock.advance(2 * a.cfg.SweepInterval)
	a.sweep()
	c.settle()
	if a.st.get(idle) != nil {
		t.Error("a still holds a session idle two sweep intervals past its deadline")
	}
}

// A node receiving its state transfer hears of an access made on a peer
// to a session that the transfer has not brought yet: it keeps it for the
// copy the transfer brings, whose access time is older.
func TestDeltaAccessDuringTransferIsKept(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = a.Commit(bg, s)
	c.settle()
	id := s.ID()

	// d joins and fetches from a; a's chunk, the session's copy in it,
	// waits until b's batch of access times has reached d.
	d, release := c.joinHolding("d", "a", kindSyncChunk)
	c.clock.advance(8 * time.Minute)
	sb, err := b.Find(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Commit(bg, sb)
	b.sweep()
	c.settle()
	if err := release(); err != nil {
		t.Fatal(err)
	}
	c.settle()
	got := d.st.get(id)
	if got == nil {
		t.Fatal("d does not hold the session after its transfer")
	}
	if at, want := got.LastAccess().UnixMilli(), sb.LastAccess().UnixMilli(); at != want {
		t.Errorf("d's copy was last accessed %v before b's read", time.Duration(want-at)*time.Millisecond)
	}
}

func (c *deltaCluster) sweepAll() {
	for _, m := range c.nodes {
		m.sweep()
	}
	c.settle()
}

// b invalidates a session (logout) while a commits a change to it (the
// user's other tab). c hears of the invalidation first, then of a's change,
// for a session it no longer holds, and a, which has not read b's
// invalidation yet, would answer c's request for a full copy: the
// invalidated session must not come back on c, nor on any node.
func TestDeltaInvalidateRacingChange(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	a, b := c.nodes["a"], c.nodes["b"]
	s, _ := a.Create(bg)
	_ = s.SetPrincipal("alice")
	_ = a.Commit(bg, s)
	c.settle()
	id := s.ID()

	// b's messages are slow to reach a (its connection is busy); they are
	// delivered later, in order.
	var mu sync.Mutex
	var held [][]byte
	c.net.drop = func(from, to string, msg []byte) bool {
		if from == "b" && to == "a" { // all of b->a, in order
			mu.Lock()
			held = append(held, msg)
			mu.Unlock()
			return true
		}
		return false
	}
	sa, _ := a.Find(bg, id) // a request on a, in flight
	if err := b.Invalidate(bg, id); err != nil {
		t.Fatal(err)
	}
	_ = sa.Set("x", 1) // the request on a ends and commits
	_ = a.Commit(bg, sa)
	c.settle()
	c.net.drop = nil
	mu.Lock()
	for _, m := range held { // b's invalidation finally reaches a
		_ = a.Receive("b", m)
	}
	mu.Unlock()
	c.settle()
	for r, m := range c.nodes {
		if got := m.st.get(id); got != nil {
			t.Errorf("%s still holds the invalidated session (rev %+v)", r, got.Rev())
		}
	}
}

// TestMaxSessionSize refuses a Set that would make a session too large
// for one replication message, keeps what the session held, and lets the
// session go on replicating; a local-only attribute is not counted.
func TestMaxSessionSize(t *testing.T) {
	leaktest.Check(t)
	m := newLoneDelta(t, func(cfg *DeltaConfig) {
		cfg.MaxSessionSize = 1000
		cfg.LocalOnly = regexp.MustCompile("^local$")
	})
	s, _ := m.Create(bg)
	if err := s.Set("a", strings.Repeat("x", 600)); err != nil {
		t.Fatal(err)
	}
	for _, set := range []func() error{
		func() error { return s.Set("b", strings.Repeat("y", 600)) },
		func() error { _, err := s.SetCopy("b", strings.Repeat("y", 600)); return err },
	} {
		err := set()
		var nd *NotDistributableError
		if !errors.Is(err, ErrSessionTooLarge) || !errors.As(err, &nd) || nd.Key != "b" || !strings.Contains(err.Error(), "MaxSessionSize") {
			t.Errorf("Set of a second 600 bytes = %v, want a NotDistributableError for b wrapping ErrSessionTooLarge", err)
		}
	}
	if _, ok := s.Get("b"); ok {
		t.Error("the refused value was stored")
	}
	// Replacing the large value counts its new size, not both.
	if err := s.Set("a", strings.Repeat("z", 900)); err != nil {
		t.Errorf("replacing a with 900 bytes: %v", err)
	}
	if err := s.Set("local", strings.Repeat("l", 5000)); err != nil {
		t.Errorf("a local-only attribute: %v", err)
	}
	if err := m.Commit(bg, s); err != nil {
		t.Errorf("commit after a refused Set: %v", err)
	}
	// Committed values still count, though a commit drops Set's encoded
	// forms: the bound holds across requests too.
	if err := s.Set("c", strings.Repeat("w", 600)); !errors.Is(err, ErrSessionTooLarge) {
		t.Errorf("Set of 600 bytes after a committed 900 = %v, want ErrSessionTooLarge", err)
	}

	cfg := DefaultDeltaConfig()
	cfg.Route, cfg.MaxSessionSize = "b", -1
	if _, err := NewDelta(cfg, newMemNet().transport("b")); err == nil || !strings.Contains(err.Error(), "MaxSessionSize") {
		t.Errorf("MaxSessionSize -1: %v, want an error naming it", err)
	}
}

// newLoneDelta starts a Delta node "a" alone on an in-memory network,
// with the default config as edit leaves it, and closes it at the test's
// end.
func newLoneDelta(t *testing.T, edit func(*DeltaConfig)) *Delta {
	t.Helper()
	net := newMemNet()
	cfg := DefaultDeltaConfig()
	cfg.Route = "a"
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	edit(&cfg)
	m, err := NewDelta(cfg, net.transport("a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(bg); net.close() })
	_ = m.Sync(bg)
	return m
}

// TestCheckAttributes returns the error SetCopies would for a new session
// holding the values, and creates no session.
func TestCheckAttributes(t *testing.T) {
	type unregistered struct{ A int }
	delta := newLoneDelta(t, func(cfg *DeltaConfig) {
		cfg.MaxSessionSize = 1000
		cfg.LocalOnly = regexp.MustCompile("^local$")
	})
	c := DefaultConfig()
	c.Route = "s"
	standard, err := NewStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standard.Close(bg) })
	for _, tc := range []struct {
		name    string
		m       interface{ CheckAttributes(map[string]any) error }
		values  map[string]any
		wantErr error  // errors.Is
		wantKey string // "": no error
	}{
		{"delta, fits", delta, map[string]any{"a": strings.Repeat("x", 600), "local": strings.Repeat("l", 5000)}, nil, ""},
		{"delta, too large", delta, map[string]any{"a": strings.Repeat("x", 600), "b": strings.Repeat("y", 600)}, ErrSessionTooLarge, "b"},
		{"delta, unregistered", delta, map[string]any{"a": "x", "z": unregistered{}}, nil, "z"},
		{"standard, unregistered", standard, map[string]any{"z": unregistered{}}, nil, "z"},
		{"standard, no bound", standard, map[string]any{"a": strings.Repeat("x", 20<<20)}, nil, ""},
	} {
		err := tc.m.CheckAttributes(tc.values)
		var nd *NotDistributableError
		if tc.wantKey == "" && err != nil || tc.wantKey != "" && (!errors.As(err, &nd) || nd.Key != tc.wantKey || tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
			t.Errorf("%s: CheckAttributes = %v, want an error for %q (%v)", tc.name, err, tc.wantKey, tc.wantErr)
		}
	}
	if n := delta.Count() + standard.Count(); n != 0 {
		t.Errorf("CheckAttributes left %d sessions", n)
	}
}

// A change of a session the joining node does not hold yet waits for the
// end of the state transfer. When the transfer does not bring the session
// (its sender did not hold it), the change must still get it: the joining
// node asks the change's maker for a full copy, instead of holding the
// change back for a transfer that is already over.
func TestDeltaChangeBufferedDuringTransferIsApplied(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "c")
	a, cn := c.nodes["a"], c.nodes["c"]
	// c creates a session whose first change a misses.
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "c" && to == "a" && kind(msg[0]) == kindChange
	}
	s, _ := cn.Create(bg)
	_ = s.Set("n", 1)
	_ = cn.Commit(bg, s)
	id := s.ID()

	// d joins and fetches from a; a's end of the transfer waits until c's
	// next change has reached d.
	d, release := c.joinHolding("d", "a", kindSyncDone)
	_ = s.Set("n", 2)
	if err := cn.Commit(bg, s); err != nil { // ack: d has it, for a session it lacks
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	c.settle()
	if !d.Ready() {
		t.Fatal("d not ready after its transfer")
	}
	got := d.st.get(id)
	if got == nil {
		t.Fatal("d lost the change made during its transfer: it does not hold the session")
	}
	if n, _ := got.GetInt("n"); n != 2 {
		t.Errorf("d reads n=%d, want 2", n)
	}
	if a.st.get(id) == nil {
		t.Error("a did not fetch the session it missed")
	}
}

// fixedPeers is a node's transport that sees only the given peers.
type fixedPeers struct {
	*memTransport
	peers []string
}

func (t fixedPeers) Peers() []string { return slices.Clone(t.peers) }

// Two nodes join at once (a scale-up, or a restart of several): one asks
// the other, still without its sessions, for the state transfer. The node
// asked must not hand over the nothing it holds as every session, which
// would make the asker ready without the cluster's sessions; the asker
// fetches them from a node that has them. Nodes that all start together
// (a new cluster) still get ready, each with none.
func TestDeltaStateTransferNotFromAJoiningNode(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a")
	a := c.nodes["a"]
	const n = 20
	for i := range n {
		s, _ := a.Create(bg)
		_ = s.Set("i", i)
		_ = a.Commit(bg, s)
	}
	c.join("j") // joining, its own transfer not begun
	for i := range 20 {
		r := fmt.Sprint("d", i)
		d := c.joinVia(r, fixedPeers{c.net.transport(r), []string{"a", "j"}})
		if err := d.Sync(bg); err != nil {
			t.Fatal(err)
		}
		if !d.Ready() || d.Count() != n {
			t.Fatalf("%s ready %v with %d sessions, want %d: it took the transfer of a node that has none yet", r, d.Ready(), d.Count(), n)
		}
	}

	fresh := newDeltaCluster(t)
	var nodes []*Delta
	for _, r := range []string{"x", "y", "z"} {
		nodes = append(nodes, fresh.join(r))
	}
	var wg sync.WaitGroup
	for _, m := range nodes {
		wg.Go(func() {
			if err := m.Sync(bg); err != nil {
				t.Errorf("%s: %v", m.Route(), err)
			}
		})
	}
	wg.Wait()
	for _, m := range nodes {
		if !m.Ready() {
			t.Errorf("%s, started with the others of a new cluster, is not ready", m.Route())
		}
	}
}

// A peer that missed an invalidation (its queue overflowed, or it was
// unreachable for a moment) is resynchronised with a full copy of every
// session: the invalidated session is not among them, and the peer must
// not keep its own copy, logged in still, which its users' next access
// would bring back to every node once the others forget the id.
func TestDeltaResyncCarriesMissedInvalidation(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	var destroyed atomic.Int64
	b.AddListener(Listener{Destroyed: func(*Session, Reason) { destroyed.Add(1) }})
	s, _ := a.Create(bg)
	_ = s.SetPrincipal("alice")
	_ = a.Commit(bg, s)
	keep, _ := a.Create(bg)
	_ = a.Commit(bg, keep)
	c.settle()
	id := s.ID()

	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "a" && to == "b" && kind(msg[0]) == kindInvalidate
	}
	if err := a.Invalidate(bg, id); err != nil {
		t.Fatal(err)
	}
	c.net.drop = nil
	a.resync("b") // as the channel asks once b may have missed frames
	c.settle()
	if got := b.st.get(id); got != nil {
		t.Fatalf("b still holds the session invalidated on a (principal %q)", got.Principal())
	}
	if _, err := b.Find(bg, id); !errors.Is(err, ErrRecentlyInvalidated) {
		t.Errorf("b Find = %v, want ErrRecentlyInvalidated", err)
	}
	if n := destroyed.Load(); n != 1 {
		t.Errorf("Destroyed fired %d times on b, want once", n)
	}
	if b.st.get(keep.ID()) == nil {
		t.Error("b lost a live session")
	}
}

// b misses a login's renewal of a session id, and catches up: it must
// not keep the pre-login copy under the old id beside the session's copy
// under the new one, whether the login's change brought b that copy
// before the catch-up or the catch-up brings it.
func TestDeltaResyncCarriesMissedRenewal(t *testing.T) {
	for _, changeReaches := range []bool{false, true} {
		t.Run(fmt.Sprintf("login change reaches b=%v", changeReaches), func(t *testing.T) {
			leaktest.Check(t)
			c := newDeltaCluster(t, "a", "b")
			a, b := c.nodes["a"], c.nodes["b"]
			s, _ := a.Create(bg)
			_ = s.Set("cart", 1)
			_ = a.Commit(bg, s)
			c.settle()
			oldID := s.ID()

			c.net.drop = func(from, to string, msg []byte) bool {
				k := kind(msg[0])
				return from == "a" && to == "b" && (k == kindRename || k == kindChange && !changeReaches)
			}
			newID, err := a.ChangeID(bg, s, "") // the login
			if err != nil {
				t.Fatal(err)
			}
			_ = s.SetPrincipal("alice")
			_ = a.Commit(bg, s)
			c.settle()
			c.net.drop = nil
			a.resync("b")
			c.settle()
			if got := b.st.get(oldID); got != nil {
				t.Fatalf("b still holds the session under its pre-login id %s (principal %q)", got.ID(), got.Principal())
			}
			got := b.st.get(newID)
			if got == nil {
				t.Fatal("b does not hold the session under its new id")
			}
			if got.ID() != newID || got.Principal() != "alice" {
				t.Errorf("b holds %s as %q, want %s as alice", got.ID(), got.Principal(), newID)
			}
			if b.Count() != 1 {
				t.Errorf("b holds %d sessions, want 1", b.Count())
			}
		})
	}
}

// A session that a peer's copy brings in while a sweep runs, idle past its
// deadline already, is expired like any other: by a sweep that fires
// Destroyed, counts it and tells the peers, never removed in passing
// without a word.
func TestDeltaSweepExpiresEverySessionItRemoves(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	x, _ := a.Create(bg)
	_ = a.Commit(bg, x)
	// b makes a session whose first change a misses.
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "b" && to == "a" && kind(msg[0]) == kindChange
	}
	y, _ := b.Create(bg)
	_ = b.Commit(bg, y)
	c.settle()
	c.net.drop = nil
	// b's full copy of y reaches a as a's sweep expires x.
	yFull, err := encodeMsg(kindFull, y.full())
	if err != nil {
		t.Fatal(err)
	}
	var destroyed []string
	var once sync.Once
	a.AddListener(Listener{Destroyed: func(s *Session, why Reason) {
		destroyed = append(destroyed, s.ID())
		once.Do(func() { _ = a.Receive("b", yFull) })
	}})
	// Past the deadline of y too, whose last access is b's word.
	c.clock.advance(DefaultConfig().MaxInactive + 2*a.cfg.SweepInterval + time.Minute)
	a.sweep()
	c.settle()
	a.sweep()
	c.settle()
	if a.Count() != 0 {
		t.Errorf("a holds %d sessions, idle past their deadline", a.Count())
	}
	if len(destroyed) != 2 || a.Stats().Expired != 2 {
		t.Errorf("a removed x and y, fired Destroyed for %d of them and counted %d expired", len(destroyed), a.Stats().Expired)
	}
	if b.st.get(y.ID()) != nil {
		t.Error("b still holds y: a removed it without telling the peers")
	}
}

// State transfer requests keep coming while the node closes (the channel
// delivers until it is closed, after the manager): none may start a
// transfer once Close waits for the manager's goroutines, nor after.
// Run with -race.
func TestDeltaSyncRequestDuringClose(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	a := c.nodes["a"]
	req, _ := encodeMsg(kindSyncRequest, struct{}{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 2000 {
			_ = a.Receive("b", req)
		}
	})
	if err := a.Close(bg); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// A node closed while it waits for its state transfer stops there: it
// does not go on asking the other peers for theirs.
func TestDeltaSyncStopsAtClose(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b", "c")
	var asked atomic.Int64
	c.net.drop = func(from, to string, msg []byte) bool {
		if kind(msg[0]) == kindSyncRequest {
			asked.Add(1)
			return true // never answered
		}
		return false
	}
	d := c.join("d")
	synced := make(chan error, 1)
	go func() { synced <- d.Sync(bg) }()
	for asked.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := d.Close(bg); err != nil {
		t.Fatal(err)
	}
	if err := <-synced; !errors.Is(err, ErrClosed) {
		t.Errorf("Sync = %v, want ErrClosed", err)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("d asked %d peers for a state transfer, want 1: it went on after Close", n)
	}
}

// A node still waiting for its state transfer cannot say whether a session
// it does not hold yet exists: an Invalidate of one (a logout through a
// session its request could not load) answers ErrNotReady, as Find does,
// not ErrNotFound, which the web layer takes for a session already gone
// and reports logged out while the session lives on every other node.
func TestDeltaInvalidateNotReady(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a")
	a := c.nodes["a"]
	s, _ := a.Create(bg)
	_ = s.SetPrincipal("alice")
	_ = a.Commit(bg, s)
	j := c.join("j")
	if err := j.Invalidate(bg, s.ID()); !errors.Is(err, ErrNotReady) {
		t.Errorf("Invalidate on a node not ready = %v, want ErrNotReady", err)
	}
	if _, err := j.Find(bg, s.ID()); !errors.Is(err, ErrNotReady) {
		t.Errorf("Find on a node not ready = %v, want ErrNotReady", err)
	}
	if err := j.Sync(bg); err != nil {
		t.Fatal(err)
	}
	if err := j.Invalidate(bg, s.ID()); err != nil {
		t.Fatalf("Invalidate once ready: %v", err)
	}
	c.settle()
	if a.st.get(s.ID()) != nil {
		t.Error("a still holds the invalidated session")
	}
	if err := j.Invalidate(bg, "nosuch.a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Invalidate of an unknown session once ready = %v, want ErrNotFound", err)
	}
}

// The peer a joining node fetches its sessions from dies before it has
// sent them: once the peer is gone from the membership, the node gives up
// on it at once and fetches them from another, instead of waiting out
// SyncTimeout first.
func TestDeltaStateTransferFromAPeerThatDies(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t, "a", "b")
	const n = 10
	for i := range n {
		s, _ := c.nodes["a"].Create(bg)
		_ = s.Set("i", i)
		_ = c.nodes["a"].Commit(bg, s)
	}
	c.settle()
	d := c.join("d")
	d.cfg.SyncTimeout = time.Hour
	// The first peer asked dies on the request: it never answers, and
	// leaves the network and d's peers.
	var once sync.Once
	c.net.drop = func(from, to string, msg []byte) bool {
		dies := false
		if from == "d" && kind(msg[0]) == kindSyncRequest {
			once.Do(func() {
				dies = true
				c.net.remove(to)
				d.PeersChanged() // as the cluster does when membership reports the failure
			})
		}
		return dies
	}
	synced := make(chan error, 1)
	go func() { synced <- d.Sync(bg) }()
	waitUntil(t, "d to get ready from the surviving peer", d.Ready)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if d.Count() != n {
		t.Errorf("d holds %d sessions, want %d", d.Count(), n)
	}
}

// A resynchronisation or a catch-up is meant for a peer in view: once
// membership has dropped that peer (it crashed while the copies were
// going), there is no one to wait for, and the copies are not retried
// for the whole SyncTimeout.
func TestDeltaResyncStopsForADroppedPeer(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t)
	tr := &failingPeer{Transport: c.net.transport("b"), peer: "gone", err: replication.ErrUnknownPeer}
	b := c.joinVia("b", tr)
	if err := b.Sync(bg); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s, _ := b.Create(bg)
		_ = s.Set("count", 1)
		if err := b.Commit(bg, s); err != nil {
			t.Fatal(err)
		}
	}
	b.cfg.SyncTimeout = time.Hour
	for name, send := range map[string]func(){
		"resync":   func() { b.resync("gone") },
		"catch-up": func() { b.catchUp("gone", c.clock.now().Add(-time.Minute), false) },
	} {
		tr.attempts.Store(0)
		done := make(chan struct{})
		go func() { defer close(done); send() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second): // a hang guard
			t.Fatalf("%s to a dropped peer still retrying after 15s (%d sends)", name, tr.attempts.Load())
		}
		if n := tr.attempts.Load(); n != 1 {
			t.Errorf("%s: %d sends to the dropped peer, want 1", name, n)
		}
	}
}

// A node asks for a state transfer as soon as it starts, and the peer it
// asks may not have it in view yet: the answer waits for it.
func TestDeltaStateTransferToAJoinerNotInViewYet(t *testing.T) {
	leaktest.Check(t)
	c := newDeltaCluster(t)
	tr := &failingPeer{Transport: c.net.transport("b"), peer: "j", err: replication.ErrUnknownPeer, failFor: 3}
	b := c.joinVia("b", tr)
	if err := b.Sync(bg); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		s, _ := b.Create(bg)
		_ = s.Set("count", 1)
		if err := b.Commit(bg, s); err != nil {
			t.Fatal(err)
		}
	}
	j := c.join("j")
	if err := j.Sync(bg); err != nil {
		t.Fatal(err)
	}
	if got := j.Count(); got != n {
		t.Errorf("the joiner holds %d sessions, want %d", got, n)
	}
	if got := tr.attempts.Load(); got <= 3 {
		t.Errorf("%d sends to the joiner, want more than the 3 refused", got)
	}
}
