package membership_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/membership"
)

// testConfig is DefaultLocalConfig with a route and the test's log output.
func testConfig(t testing.TB, route string) membership.Config {
	c := membership.DefaultLocalConfig()
	c.Route = route
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	return c
}

// record makes c log through a recorder as well as to the test output.
func record(t testing.TB, c *membership.Config) *membership.LogRecorder {
	rec := membership.NewLogRecorder(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	c.Logger = slog.New(rec)
	return rec
}

// start starts a node and stops it when the test ends.
func start(t testing.TB, c membership.Config) *membership.Node {
	t.Helper()
	n, err := membership.New(c)
	if err != nil {
		t.Fatalf("New(%s): %v", c.Route, err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// startCluster starts size nodes named node1..nodeN, each seeded with the
// first node's address, and waits until everyone sees everyone.
func startCluster(t testing.TB, size int, mutate func(i int, c *membership.Config)) []*membership.Node {
	t.Helper()
	nodes := make([]*membership.Node, size)
	for i := range nodes {
		c := testConfig(t, fmt.Sprintf("node%d", i+1))
		if i > 0 {
			c.Join = []string{nodes[0].Addr().String()}
		}
		if mutate != nil {
			mutate(i, &c)
		}
		nodes[i] = start(t, c)
	}
	waitConverged(t, nodes...)
	return nodes
}

// waitFor polls cond until it returns nil or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive returns the names of the members n sees alive, sorted.
func alive(n *membership.Node) []string {
	var out []string
	for _, m := range n.Members() {
		if m.State == membership.StateAlive {
			out = append(out, m.Name)
		}
	}
	return out
}

func routes(nodes ...*membership.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Route())
	}
	slices.Sort(out)
	return out
}

// waitConverged waits until every node sees exactly nodes as alive. A
// node that missed the gossip of a join (a datagram lost while many nodes
// start at once) learns of it at its next push and pull, PushPullInterval
// (at least 5 s) later: the wait allows for a few.
func waitConverged(t testing.TB, nodes ...*membership.Node) {
	t.Helper()
	want := routes(nodes...)
	waitFor(t, 30*time.Second, func() error {
		for _, n := range nodes {
			if got := alive(n); !slices.Equal(got, want) {
				return fmt.Errorf("%s sees %v alive, want %v", n.Route(), got, want)
			}
		}
		return nil
	})
}

// nextEvent returns the next event of sub about route, skipping others.
func nextEvent(t testing.TB, sub *membership.Subscription, route string, timeout time.Duration) membership.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				t.Fatalf("subscription closed while waiting for an event about %s", route)
			}
			if ev.Member.Name == route {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event about %s within %v", route, timeout)
		}
	}
}

func TestClusterForms(t *testing.T) {
	leaktest.Check(t)
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d nodes", size), func(t *testing.T) {
			nodes := startCluster(t, size, func(i int, c *membership.Config) {
				c.ReplicationAddr = fmt.Sprintf("127.0.0.1:%d", 9000+i)
				c.Manager = "delta"
			})
			for _, n := range nodes {
				for _, m := range n.Members() {
					if m.Meta.Route != m.Name || m.Meta.Domain != "cohort" || m.Meta.Manager != "delta" ||
						m.Meta.Protocol != membership.ProtocolVersion || m.Meta.Started.IsZero() ||
						!strings.HasPrefix(m.Meta.ReplicationAddr, "127.0.0.1:90") {
						t.Errorf("%s sees member %s with metadata %+v", n.Route(), m.Name, m.Meta)
					}
				}
			}
		})
	}
}

func TestCrashIsReportedFailed(t *testing.T) {
	leaktest.Check(t)
	var rec *membership.LogRecorder
	nodes := startCluster(t, 3, func(i int, c *membership.Config) {
		if i == 0 {
			rec = record(t, c)
		}
	})
	subs := []*membership.Subscription{nodes[0].Subscribe(), nodes[1].Subscribe()}
	for _, s := range subs {
		defer s.Close()
		// The subscription starts with the members alive now.
		for range 2 {
			if ev := <-s.C; ev.Type != membership.EventJoin {
				t.Fatalf("initial event %v, want join", ev.Type)
			}
		}
	}
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		ev := nextEvent(t, s, "node3", 10*time.Second)
		if ev.Type != membership.EventFail || ev.Member.State != membership.StateDead {
			t.Errorf("node%d got %v (%v) for node3, want fail (dead)", i+1, ev.Type, ev.Member.State)
		}
	}
	waitConverged(t, nodes[:2]...)
	if st := stateOf(nodes[0], "node3"); st != membership.StateDead {
		t.Errorf("Members() lists node3 as %v, want dead", st)
	}
	if got := rec.Records("member failed"); len(got) != 1 || got[0].Level != slog.LevelWarn || got[0].Attrs["peer"] != "node3" {
		t.Errorf("node1 logged %+v, want one warning about node3", got)
	}
}

func stateOf(n *membership.Node, route string) membership.State {
	for _, m := range n.Members() {
		if m.Name == route {
			return m.State
		}
	}
	return -1
}

func TestGracefulLeaveIsReportedLeft(t *testing.T) {
	leaktest.Check(t)
	nodes := startCluster(t, 3, nil)
	subs := []*membership.Subscription{nodes[0].Subscribe(), nodes[1].Subscribe()}
	for _, s := range subs {
		defer s.Close()
	}
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		ev := nextEvent(t, s, "node3", 10*time.Second)
		for ev.Type == membership.EventJoin || ev.Type == membership.EventUpdate { // the snapshot, then the leaving flag
			ev = nextEvent(t, s, "node3", 10*time.Second)
		}
		if ev.Type != membership.EventLeave || ev.Member.State != membership.StateLeft {
			t.Errorf("node%d got %v (%v) for node3, want leave (left)", i+1, ev.Type, ev.Member.State)
		}
	}
	if err := nodes[2].Leave(time.Second); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Leave after Leave = %v, want ErrClosed", err)
	}
}

// leaveWarning is what a node logs when no peer confirmed its leave.
const leaveWarning = "leave not confirmed by any peer; a peer that missed it reports this node failed"

// TestUnconfirmedLeaveIsNotAnError leaves with too short a timeout for any
// peer to confirm: Leave logs a warning and succeeds.
func TestUnconfirmedLeaveIsNotAnError(t *testing.T) {
	leaktest.Check(t)
	var rec *membership.LogRecorder
	nodes := startCluster(t, 2, func(i int, c *membership.Config) {
		if i == 1 {
			rec = record(t, c)
		}
	})
	if err := nodes[1].Leave(time.Nanosecond); err != nil {
		t.Fatalf("Leave(1ns) = %v, want nil", err)
	}
	if got := rec.Records(leaveWarning); len(got) != 1 || got[0].Level != slog.LevelWarn || got[0].Attrs["err"] == "" {
		t.Errorf("logged %+v, want one warning with the error", got)
	}
	if err := nodes[1].Leave(time.Second); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Leave after Leave = %v, want ErrClosed", err)
	}
}

// TestEveryNodeLeavesAtOnce stops a whole cluster at once, as an operator
// stopping every process does: no one is left to confirm the last leaves,
// which is no error, and no node logs itself as a member that left or
// joins the others again on its way out.
func TestEveryNodeLeavesAtOnce(t *testing.T) {
	leaktest.Check(t)
	recs := make([]*membership.LogRecorder, 3)
	nodes := startCluster(t, 3, func(i int, c *membership.Config) {
		recs[i] = record(t, c)
		c.RejoinInterval = 50 * time.Millisecond // rejoin often while leaving, if it did
	})
	joined := make([]int, len(nodes))
	for i, rec := range recs {
		joined[i] = len(rec.Records("joined the cluster through seeds"))
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.Leave(time.Second) })
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Errorf("%s: Leave = %v, want nil", n.Route(), errs[i])
		}
		rec := recs[i]
		if got := rec.Records(leaveWarning); len(got) > 1 {
			t.Errorf("%s warned %d times about its leave, want at most once", n.Route(), len(got))
		}
		for _, r := range rec.Records("member left") {
			if r.Attrs["peer"] == n.Route() {
				t.Errorf("%s logged itself as a member that left: %+v", n.Route(), r)
			}
		}
		if got := len(rec.Records("joined the cluster through seeds")); got != joined[i] {
			t.Errorf("%s joined the cluster again while leaving", n.Route())
		}
	}
}

// TestLeaveWhenEveryPeerIsLeaving stops three nodes together: each has
// set its leaving flag, as Leave does first, and sees the others' flags
// before it leaves. No peer stays to hear a node's leave, so none waits
// for its messages to go out: each says so.
func TestLeaveWhenEveryPeerIsLeaving(t *testing.T) {
	leaktest.Check(t)
	recs := make([]*membership.LogRecorder, 3)
	nodes := startCluster(t, 3, func(i int, c *membership.Config) { recs[i] = record(t, c) })
	for _, n := range nodes {
		if err := membership.MarkLeaving(n, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		for _, n := range nodes {
			for _, m := range n.Members() {
				if m.Name != n.Route() && !m.Meta.Leaving {
					return fmt.Errorf("%s does not see %s leaving", n.Route(), m.Name)
				}
			}
		}
		return nil
	})
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.Leave(10 * time.Second) })
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Errorf("%s: Leave = %v, want nil", n.Route(), errs[i])
		}
		if got := recs[i].Records("left the cluster; no peer was left to tell"); len(got) != 1 || got[0].Level != slog.LevelInfo {
			t.Errorf("%s logged %+v, want one Info that no peer was left to tell", n.Route(), got)
		}
		if got := recs[i].Records(leaveWarning); len(got) != 0 {
			t.Errorf("%s warned about its leave: %+v", n.Route(), got)
		}
	}
}

// TestDuplicateRouteFailsToStart starts a second node1 while node1 is
// alive: it must fail to start, node1 must log the conflict once, and
// node1 must stay a member in its peers' eyes.
func TestDuplicateRouteFailsToStart(t *testing.T) {
	leaktest.Check(t)
	var rec *membership.LogRecorder
	nodes := startCluster(t, 2, func(i int, c *membership.Config) {
		if i == 0 {
			rec = record(t, c)
		}
	})
	sub := nodes[1].Subscribe()
	defer sub.Close()
	if ev := nextEvent(t, sub, "node1", time.Second); ev.Type != membership.EventJoin {
		t.Fatalf("first event %v, want join", ev.Type)
	}

	c := testConfig(t, "node1")
	c.Join = []string{nodes[1].Addr().String()}
	n, err := membership.New(c)
	if err == nil {
		_ = n.Close()
		t.Fatal("a second node1 started")
	}
	var ce *membership.RouteConflictError
	if !errors.As(err, &ce) || ce.Route != "node1" || ce.Addr != nodes[0].Addr().String() {
		t.Fatalf("New = %v, want a *RouteConflictError naming %s", err, nodes[0].Addr())
	}
	if want := fmt.Sprintf("membership: route \"node1\" is already used by %s", nodes[0].Addr()); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	const claim = "another node claims this node's route; peers ignore it while this node is alive"
	waitFor(t, 5*time.Second, func() error {
		if len(rec.Records(claim)) == 0 {
			return errors.New("node1 logged no conflict")
		}
		return nil
	})
	// node1 is neither failed nor left, now or once the impostor's traces
	// have had time to be gossiped.
	timeout := time.After(3 * membership.DefaultLocalConfig().DropTime)
wait:
	for {
		select {
		case ev := <-sub.C:
			if ev.Member.Name == "node1" && ev.Type != membership.EventUpdate {
				t.Errorf("node2 got %v about node1, at %s", ev.Type, ev.Member.Addr)
			}
		case <-timeout:
			break wait
		}
	}
	got := rec.Records(claim)
	if len(got) != 1 || got[0].Level != slog.LevelWarn || got[0].Attrs["addr"] == "" || got[0].Attrs["addr"] == nodes[0].Addr().String() {
		t.Errorf("node1 logged %+v, want one warning naming the other address", got)
	}
	waitConverged(t, nodes...)
}

func TestRestartWithSameRouteRejoins(t *testing.T) {
	leaktest.Check(t)
	nodes := startCluster(t, 3, nil)
	sub := nodes[0].Subscribe()
	defer sub.Close()
	old := nodes[2].Addr().String()

	t.Run("after the failure is detected", func(t *testing.T) {
		_ = nodes[2].Close()
		for ev := nextEvent(t, sub, "node3", 10*time.Second); ev.Type != membership.EventFail; ev = nextEvent(t, sub, "node3", 10*time.Second) {
		}
		c := testConfig(t, "node3")
		c.Join = []string{nodes[1].Addr().String()}
		n3 := start(t, c) // a new port: a new address
		if n3.Addr().String() == old {
			t.Fatalf("restarted node reused address %s", old)
		}
		ev := nextEvent(t, sub, "node3", 10*time.Second)
		if ev.Type != membership.EventJoin || ev.Member.Addr != n3.Addr().String() {
			t.Fatalf("got %v at %s, want join at %s", ev.Type, ev.Member.Addr, n3.Addr())
		}
		waitConverged(t, nodes[0], nodes[1], n3)
		nodes[2] = n3
	})

	t.Run("before the failure is detected", func(t *testing.T) {
		_ = nodes[2].Close()
		c := testConfig(t, "node3")
		c.Join = []string{nodes[1].Addr().String()}
		n3 := start(t, c)
		// The old incarnation is still alive in its peers' eyes; the new one
		// takes the route back once the old one is declared dead.
		waitFor(t, 15*time.Second, func() error {
			for _, n := range []*membership.Node{nodes[0], nodes[1]} {
				for _, m := range n.Members() {
					if m.Name == "node3" && (m.State != membership.StateAlive || m.Addr != n3.Addr().String()) {
						return fmt.Errorf("%s sees node3 %v at %s, want alive at %s", n.Route(), m.State, m.Addr, n3.Addr())
					}
				}
			}
			return nil
		})
		waitConverged(t, nodes[0], nodes[1], n3)
	})
}

// TestRestartOnNewAddressIsTakenInAtFailure restarts node3 on a new
// address before its peers have noticed the old one fail, as a pod that
// is deleted by force comes back on a new IP. The peers ignore the new
// address while the old is alive; once they declare the old one failed,
// they join the new address themselves rather than waiting for the
// restarted node's next push-pull, which comes only every 60 Frequency.
func TestRestartOnNewAddressIsTakenInAtFailure(t *testing.T) {
	leaktest.Check(t)
	slow := func(_ int, c *membership.Config) {
		c.Frequency, c.DropTime = 2*time.Second, 4*time.Second // push-pull every 2 minutes
	}
	nodes := startCluster(t, 3, slow)
	subs := []*membership.Subscription{nodes[0].Subscribe(), nodes[1].Subscribe()}
	for _, s := range subs {
		defer s.Close()
	}
	_ = nodes[2].Close()
	c := testConfig(t, "node3")
	slow(2, &c)
	c.Join = []string{nodes[1].Addr().String()}
	n3 := start(t, c)
	for i, s := range subs {
		for ev := nextEvent(t, s, "node3", 20*time.Second); ev.Type != membership.EventFail; ev = nextEvent(t, s, "node3", 20*time.Second) {
			if ev.Type == membership.EventJoin && ev.Member.Addr == n3.Addr().String() {
				break // taken in already
			}
			t.Logf("%s: %v of node3 at %s", nodes[i].Route(), ev.Type, ev.Member.Addr)
		}
	}
	waitFor(t, 5*time.Second, func() error {
		for _, n := range nodes[:2] {
			for _, m := range n.Members() {
				if m.Name == "node3" && (m.State != membership.StateAlive || m.Addr != n3.Addr().String()) {
					return fmt.Errorf("%s sees node3 %v at %s, want alive at %s", n.Route(), m.State, m.Addr, n3.Addr())
				}
			}
		}
		return nil
	})
}

func TestFailedMemberIsReconnected(t *testing.T) {
	leaktest.Check(t)
	// node2 has no seeds: when it comes back alone on its old address, only
	// node1's reconnect of failed members can bring the two together, as
	// after a partition.
	n1 := start(t, testConfig(t, "node1"))
	c2 := testConfig(t, "node2")
	n2 := start(t, c2)
	if _, err := n1.Join(n2.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, n1, n2)
	addr := n2.Addr().String()
	_ = n2.Close()
	waitFor(t, 10*time.Second, func() error {
		if st := stateOf(n1, "node2"); st != membership.StateDead {
			return fmt.Errorf("node1 sees node2 %v, want dead", st)
		}
		return nil
	})
	c2.BindAddr = addr
	n2 = start(t, c2)
	waitConverged(t, n1, n2)
}

// TestDomainsStayApart has a node of domain other join one of domain
// cohort. The seed drops the connection unanswered; the joining node's
// error and warning say that the seed likely belongs to another domain.
func TestDomainsStayApart(t *testing.T) {
	leaktest.Check(t)
	ca := testConfig(t, "a1")
	recA := record(t, &ca)
	a := start(t, ca)
	cb := testConfig(t, "b1")
	cb.Domain = "other"
	cb.Join = []string{a.Addr().String()}
	rec := record(t, &cb)
	b := start(t, cb)
	_, err := b.Join(a.Addr().String())
	if err == nil {
		t.Error("a node of domain other joined domain cohort")
	} else if !strings.Contains(err.Error(), `likely another domain than this node's "other"`) {
		t.Errorf("Join = %v, want the other domain named as the likely cause", err)
	}
	w := rec.Records("seed closed the connection without answering; retrying")
	if len(w) != 1 || w[0].Level != slog.LevelWarn || !strings.Contains(w[0].Attrs["hint"], `another domain`) ||
		!strings.Contains(w[0].Attrs["hint"], `"other"`) {
		t.Errorf("seed warnings %+v, want one with a hint about the domain", w)
	}
	st := b.Stats()
	if !strings.Contains(st.LastJoinError, "likely another domain") || len(st.Seeds) != 1 ||
		!strings.Contains(st.Seeds[0].LastError, "likely another domain") {
		t.Errorf("b1's Stats() gives the last join error as %q and its seeds as %+v, want the domain named", st.LastJoinError, st.Seeds)
	}
	// The seed says whom it refused, once.
	r := recA.Records("refused a node of another domain")
	if len(r) != 1 || r[0].Level != slog.LevelWarn || r[0].Attrs["peer_domain"] != "other" || r[0].Attrs["domain"] != "cohort" {
		t.Errorf("a1 logged %+v, want one warning naming both domains", r)
	}
	if got := alive(a); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("a1 sees %v", got)
	}
	if got := alive(b); !slices.Equal(got, []string{"b1"}) {
		t.Errorf("b1 sees %v", got)
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	leaktest.Check(t)
	key := func(b byte) membership.Key { return membership.Key(strings.Repeat(string(rune(b)), 32)) }
	ca := testConfig(t, "a1")
	ca.Key = key('a')
	a := start(t, ca)
	for _, tc := range []struct {
		name string
		key  membership.Key
	}{
		{"other key", key('b')},
		{"no key", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t, "intruder")
			c.Key = tc.key
			c.Join = []string{a.Addr().String()}
			rec := record(t, &c)
			n := start(t, c)
			if _, err := n.Join(a.Addr().String()); err == nil {
				t.Error("join succeeded")
			} else if !strings.Contains(err.Error(), "likely another cluster key") {
				t.Errorf("Join = %v, want the key named as the likely cause", err)
			}
			if got := alive(a); !slices.Equal(got, []string{"a1"}) {
				t.Errorf("a1 sees %v", got)
			}
			// The seed's warning says the key is the likely cause.
			if w := rec.Records("seed answered but could not be read; retrying"); len(w) != 1 || !strings.Contains(w[0].Attrs["hint"], "cluster key") {
				t.Errorf("seed warnings %+v, want one with a hint about the cluster key", w)
			}
		})
	}
	cg := testConfig(t, "a2")
	cg.Key = key('a')
	cg.Join = []string{a.Addr().String()}
	waitConverged(t, a, start(t, cg))
}

func TestDifferentManagersRefuseToPair(t *testing.T) {
	leaktest.Check(t)
	ca := testConfig(t, "a1")
	ca.Manager = "delta"
	rec := record(t, &ca)
	a := start(t, ca)
	cb := testConfig(t, "b1")
	cb.Manager = "backup"
	b := start(t, cb)
	for range 3 {
		_, _ = b.Join(a.Addr().String())
	}
	waitFor(t, 5*time.Second, func() error {
		if a.Stats().PeersRefused < 3 || b.Stats().PeersRefused == 0 {
			return fmt.Errorf("refusals: a1 %d, b1 %d", a.Stats().PeersRefused, b.Stats().PeersRefused)
		}
		return nil
	})
	// One warning says why; memberlist's own line for each refused
	// message says no more.
	if got := rec.Records("refusing to pair with node"); len(got) != 1 || got[0].Attrs["peer"] != "b1" {
		t.Errorf("a1 logged %+v, want one refusal of b1", got)
	}
	for _, r := range rec.All() {
		if r.Attrs["source"] == "memberlist" && r.Level >= slog.LevelWarn {
			t.Errorf("a1 logged memberlist's %q at %v", r.Msg, r.Level)
		}
	}
	if got := alive(a); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("a1 sees %v", got)
	}
	if got := alive(b); !slices.Equal(got, []string{"b1"}) {
		t.Errorf("b1 sees %v", got)
	}
}

func TestUpdateMetaReachesPeers(t *testing.T) {
	leaktest.Check(t)
	nodes := startCluster(t, 2, nil)
	sub := nodes[0].Subscribe()
	defer sub.Close()
	if ev := nextEvent(t, sub, "node2", time.Second); ev.Type != membership.EventJoin {
		t.Fatalf("first event %v, want join", ev.Type)
	}
	if err := nodes[1].UpdateMeta("127.0.0.1:9999", "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, sub, "node2", 10*time.Second)
	if ev.Type != membership.EventUpdate || ev.Member.Meta.ReplicationAddr != "127.0.0.1:9999" {
		t.Errorf("got %v with %+v, want update with the new address", ev.Type, ev.Member.Meta)
	}
}

// TestMemberUpdatesSayWhatChanged checks how a member's updates are
// logged: a new replication address as an update, the leaving flag as a
// member leaving, and a restart on the same address, before the old
// incarnation was found failed, as a restart.
func TestMemberUpdatesSayWhatChanged(t *testing.T) {
	leaktest.Check(t)
	var rec *membership.LogRecorder
	nodes := startCluster(t, 3, func(i int, c *membership.Config) {
		c.DropTime = 10 * time.Second // the restart comes long before its failure is detected
		if i == 0 {
			rec = record(t, c)
		}
	})
	logged := func(msg, peer string) {
		t.Helper()
		waitFor(t, 10*time.Second, func() error {
			for _, r := range rec.Records(msg) {
				if r.Attrs["peer"] == peer {
					return nil
				}
			}
			return fmt.Errorf("node1 did not log %q about %s", msg, peer)
		})
	}
	if err := nodes[1].UpdateMeta("127.0.0.1:9999", "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	logged("member updated", "node2")
	if err := membership.MarkLeaving(nodes[2], 5*time.Second); err != nil {
		t.Fatal(err)
	}
	logged("member leaving", "node3")

	addr := nodes[1].Addr().String()
	_ = nodes[1].Close()
	c := testConfig(t, "node2")
	c.BindAddr = addr
	c.DropTime = 10 * time.Second
	c.Join = []string{nodes[0].Addr().String()}
	nodes[1] = start(t, c)
	logged("member restarted", "node2")
	for _, r := range rec.Records("member updated") {
		if r.Attrs["peer"] == "node3" {
			t.Errorf("node3's leaving flag logged as an update: %+v", r)
		}
	}
	if got := rec.Records("member failed"); len(got) != 0 {
		t.Errorf("node1 logged failures %+v, want the restart seen as one", got)
	}
}

// Subscriptions taken while the node closes are all closed with it: none
// starts its delivery once Close waits for the node's goroutines.
func TestSubscribeDuringClose(t *testing.T) {
	leaktest.Check(t)
	for range 20 {
		n, err := membership.New(testConfig(t, "solo"))
		if err != nil {
			t.Fatal(err)
		}
		subs := make(chan *membership.Subscription, 4096)
		var wg sync.WaitGroup
		wg.Go(func() {
			defer close(subs)
			for range cap(subs) {
				subs <- n.Subscribe()
			}
		})
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		for sub := range subs {
			for range sub.C { // the initial events, if any
			}
		}
	}
}

func TestCloseStopsEverything(t *testing.T) {
	leaktest.Check(t)
	c := testConfig(t, "solo")
	n, err := membership.New(c)
	if err != nil {
		t.Fatal(err)
	}
	sub := n.Subscribe()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-sub.C; ok {
		t.Error("subscription still open after Close")
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := n.Join("127.0.0.1:1"); !errors.Is(err, membership.ErrClosed) {
		t.Errorf("Join after Close = %v, want ErrClosed", err)
	}
}

// fullMetaHost returns the longest replication host name with which a
// node named like route, in domain, still starts: metadata at the limit.
func fullMetaHost(t *testing.T, route, domain string) string {
	t.Helper()
	for k := 400; k > 0; k-- {
		c := testConfig(t, route)
		c.Domain = domain
		c.ReplicationAddr = strings.Repeat("h", k) + ":8000"
		n, err := membership.New(c)
		if err == nil {
			_ = n.Close()
			return strings.Repeat("h", k)
		}
		if ce := (*membership.ConfigError)(nil); !errors.As(err, &ce) {
			t.Fatal(err)
		}
	}
	t.Fatal("no replication address fits")
	return ""
}

// TestLeaveWithFullMetadataIsReportedLeft leaves from a node whose
// metadata is as large as New accepts: the leaving flag still fits, so
// peers report it left, not failed.
func TestLeaveWithFullMetadataIsReportedLeft(t *testing.T) {
	leaktest.Check(t)
	domain := strings.Repeat("d", 255)
	host := fullMetaHost(t, "node2", domain)
	nodes := startCluster(t, 2, func(i int, c *membership.Config) {
		c.Domain = domain
		c.ReplicationAddr = host + ":8000"
	})
	sub := nodes[0].Subscribe()
	defer sub.Close()
	if err := nodes[1].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, sub, "node2", 10*time.Second)
	for ev.Type == membership.EventJoin || ev.Type == membership.EventUpdate {
		ev = nextEvent(t, sub, "node2", 10*time.Second)
	}
	if ev.Type != membership.EventLeave {
		t.Errorf("got %v for node2, want leave", ev.Type)
	}
}

// TestUpdateMetaKeepsRoomForLeaving refuses metadata that would leave no
// room for the leaving flag, so that a later Leave is still reported as
// one.
func TestUpdateMetaKeepsRoomForLeaving(t *testing.T) {
	leaktest.Check(t)
	domain := strings.Repeat("d", 255)
	host := fullMetaHost(t, "node1", domain)
	c := testConfig(t, "node1")
	c.Domain = domain
	n := start(t, c)
	for _, k := range []int{len(host) + 1, len(host) + 2, len(host) + 3} {
		if err := n.UpdateMeta(strings.Repeat("h", k)+":8000", "", time.Second); !errors.Is(err, membership.ErrMetaTooLarge) {
			t.Errorf("UpdateMeta with a %d-byte host = %v, want ErrMetaTooLarge", k, err)
		}
	}
	if err := n.UpdateMeta(host+":8000", "", time.Second); err != nil {
		t.Errorf("UpdateMeta with the largest host New accepts: %v", err)
	}
}

// Close ends a join that waits on a seed that took the connection and
// never answers: the join fails at once instead of at TCPTimeout (here 30
// seconds, drop-time's), and Close does not wait for it.
// silentSeed listens on a loopback port and accepts one connection, which
// it holds open and never reads or writes: a seed that hangs. The accepted
// connection arrives on the channel.
func silentSeed(t *testing.T) (string, <-chan net.Conn) {
	t.Helper()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if c, err := silent.Accept(); err == nil {
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		_ = silent.Close()
		<-done
		select {
		case c := <-accepted:
			_ = c.Close()
		default:
		}
	})
	return silent.Addr().String(), accepted
}

// reached waits for the silent seed to accept a connection.
func reached(t *testing.T, accepted <-chan net.Conn) {
	t.Helper()
	select {
	case c := <-accepted:
		t.Cleanup(func() { _ = c.Close() })
	case <-time.After(10 * time.Second): // a hang guard
		t.Fatal("the join never reached the seed")
	}
}

func TestCloseEndsAJoinInFlight(t *testing.T) {
	leaktest.Check(t)
	seed, accepted := silentSeed(t)
	c := testConfig(t, "solo")
	c.DropTime = 30 * time.Second
	n, err := membership.New(c)
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() {
		_, err := n.Join(seed)
		joined <- err
	}()
	reached(t, accepted)

	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	guard := time.After(15 * time.Second) // half the join's TCP timeout
	for range 2 {
		select {
		case err := <-joined:
			if err == nil {
				t.Error("Join of a silent seed succeeded")
			}
			joined = nil
		case err := <-closed:
			if err != nil {
				t.Errorf("Close = %v", err)
			}
			closed = nil
		case <-guard:
			t.Fatalf("Close or the join still waiting on the silent seed (join done: %t, Close done: %t)", joined == nil, closed == nil)
		}
	}
}

// A start given up while its first join waits on a seed that does not
// answer ends then, not at the join's TCP timeout, and releases the port.
func TestNewContextEndsAStartInFlight(t *testing.T) {
	leaktest.Check(t)
	seed, accepted := silentSeed(t)
	c := testConfig(t, "solo")
	c.DropTime = 30 * time.Second
	c.BindAddr = freeAddr(t)
	c.Join = []string{seed}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan error, 1)
	go func() {
		n, err := membership.NewContext(ctx, c)
		if err == nil {
			_ = n.Close()
		}
		started <- err
	}()
	reached(t, accepted)
	cancel()
	select {
	case err := <-started:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("NewContext = %v, want an error that wraps context.Canceled", err)
		}
	case <-time.After(15 * time.Second): // half the join's TCP timeout
		t.Fatal("NewContext still waiting on the silent seed after its context ended")
	}
	l, err := net.Listen("tcp", c.BindAddr)
	if err != nil {
		t.Fatalf("the given-up node still holds its gossip port: %v", err)
	}
	_ = l.Close()
}

// The start's context matters only until NewContext returns.
func TestNewContextEndedAfterStart(t *testing.T) {
	leaktest.Check(t)
	ctx, cancel := context.WithCancel(t.Context())
	a, err := membership.NewContext(ctx, testConfig(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	cancel()
	b := start(t, testConfig(t, "b"))
	if _, err := b.Join(a.Addr().String()); err != nil {
		t.Fatalf("join of a node whose start context ended: %v", err)
	}
	if _, err := a.Join(b.Addr().String()); err != nil {
		t.Fatalf("join from a node whose start context ended: %v", err)
	}
	waitConverged(t, a, b)
}
