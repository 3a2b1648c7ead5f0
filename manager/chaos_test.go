package manager

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

// chaosUser is one client of TestRandomCrashesLoseNoWrite: its cookie,
// the node its balancer sends it to, and what its session may hold.
type chaosUser struct {
	id   string // the id its cookie holds; "" before its first session
	node string
	// ok are the counts its session may hold: the count of the last
	// confirmed write, and the counts of the writes since that a peer
	// did not confirm (done on their node, maybe not elsewhere).
	ok []int64
	// mayBeGone: an invalidation or the first commit was not confirmed
	// by every peer, so some node may or may not hold the session.
	mayBeGone bool
	n         int // its number, for the history
}

func (u *chaosUser) accepts(v int64) bool { return slices.Contains(u.ok, v) }

// chaosRun is the state of one run of TestRandomCrashesLoseNoWrite.
type chaosRun struct {
	t       *testing.T
	rc      *realCluster
	rng     *rand.Rand
	backups int // Backup: copies besides the primary
	users   []*chaosUser
	crashed []string
	stats   map[string]int
	step    int
	history []string // what each step did, for a failure's message
}

// note records what the current step did, for user u (nil: the cluster).
func (r *chaosRun) note(u *chaosUser, format string, args ...any) {
	who := "cluster"
	if u != nil {
		who = fmt.Sprintf("user %d", u.n)
	}
	r.history = append(r.history, fmt.Sprintf("step %d, %s: %s", r.step, who, fmt.Sprintf(format, args...)))
}

// fail reports a broken promise about u's session, with what the steps
// did to it and to the cluster.
func (r *chaosRun) fail(u *chaosUser, format string, args ...any) {
	r.t.Helper()
	var h []string
	for _, line := range r.history {
		if strings.Contains(line, "cluster:") || strings.Contains(line, fmt.Sprintf("user %d:", u.n)) {
			h = append(h, line)
		}
	}
	var copies []string
	if u.id != "" {
		base, _ := SplitID(u.id)
		for _, route := range r.live() {
			r.rc.nodes[route].Manager().Range(func(s *Session) bool {
				if b, _ := SplitID(s.ID()); b == base {
					owner, term := s.ownerClaim()
					v, _ := s.GetInt("count")
					copies = append(copies, fmt.Sprintf("%s: %s count %d owner %s term %d rev %v", route, s.ID(), v, owner, term, s.Rev()))
					return false
				}
				return true
			})
		}
	}
	r.t.Errorf("%s\nhistory:\n%s\ncopies now:\n%s", fmt.Sprintf(format, args...), strings.Join(h, "\n"), strings.Join(copies, "\n"))
}

// TestRandomCrashesLoseNoWrite drives 4 real nodes in sync mode (Delta,
// Backup with one backup, Backup with two) with a random schedule of
// requests from 12 clients (each a read, an increment and a commit, on
// the node its balancer picks, which moves it now and then and after its
// node dies), logouts, route rebinds, node crashes and restarts, and
// checks every read against what the confirmed writes left: no confirmed
// increment is lost, no session lost or brought back after a logout, and
// every node settles on one copy per holder (Delta: every node; Backup:
// the primary and its backups, naming the same primary). A crash comes
// only once the cluster has repaired after the last one, and leaves at
// least one node. The seed is logged; COHORT_CHAOS_SEED replays the
// schedule of a run and COHORT_CHAOS_STEPS lengthens it.
func TestRandomCrashesLoseNoWrite(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("COHORT_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("COHORT_CHAOS_SEED=%q: want an unsigned integer", s)
		}
		seed = v
	}
	steps := 150
	if s := os.Getenv("COHORT_CHAOS_STEPS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("COHORT_CHAOS_STEPS=%q: want a positive integer", s)
		}
		steps = v
	}
	for _, v := range []struct {
		name, kind string
		backups    int
	}{{"delta", KindDelta, 0}, {"backup", KindBackup, 1}, {"backup-2", KindBackup, 2}} {
		t.Run(v.name, func(t *testing.T) {
			leaktest.Check(t)
			t.Logf("seed %d (COHORT_CHAOS_SEED=%d replays its schedule)", seed, seed)
			routes := []string{"n1", "n2", "n3", "n4"}
			r := &chaosRun{
				t: t, rng: rand.New(rand.NewPCG(seed, 0x636f686f7274)), stats: map[string]int{}, backups: v.backups,
				rc: newRealClusterWith(t, v.kind, func(c *ClusterConfig) {
					c.Manager.Mode = Sync
					if v.backups > 0 {
						c.Manager.Backups = v.backups
					}
				}, routes...),
			}
			for i := range 12 {
				r.users = append(r.users, &chaosUser{n: i})
			}
			for step := range steps {
				r.step = step
				switch p := r.rng.IntN(100); {
				case p < 4 && len(r.rc.nodes) > 1:
					r.crash()
				case p < 8 && len(r.crashed) > 0:
					r.restart()
				case p < 11:
					r.logout(r.users[r.rng.IntN(len(r.users))])
				default:
					r.request(r.users[r.rng.IntN(len(r.users))])
				}
				if t.Failed() {
					t.Fatalf("at step %d of seed %d", step, seed)
				}
			}
			r.settle()
			r.checkCopies(true)
			t.Logf("%v", r.stats)
		})
	}
}

// live returns the routes of the running nodes, sorted.
func (r *chaosRun) live() []string {
	var out []string
	for route := range r.rc.nodes {
		out = append(out, route)
	}
	slices.Sort(out)
	return out
}

// nodeFor returns the node the balancer sends u to: its own while it
// runs, now and then another, and a random one after its node died.
func (r *chaosRun) nodeFor(u *chaosUser) string {
	live := r.live()
	if _, ok := r.rc.nodes[u.node]; !ok || r.rng.IntN(100) < 15 {
		u.node = live[r.rng.IntN(len(live))]
	}
	return u.node
}

// request is one request of u: find its session (or create one), check
// the count, increment it and commit. A node that picks up a session of
// another route rebinds it, as the route binder does.
func (r *chaosRun) request(u *chaosUser) {
	ctx := context.Background()
	route := r.nodeFor(u)
	m := r.rc.nodes[route].Manager()
	var s *Session
	if u.id != "" {
		var err error
		s, err = m.Find(ctx, u.id)
		switch {
		case errors.Is(err, ErrNotFound) && !u.mayBeGone:
			r.fail(u, "%s: session %s of count %v not found", route, u.id, u.ok)
			return
		case errors.Is(err, ErrNotFound):
			r.note(u, "%s: not found, as may be", route)
			u.id = "" // gone: a new one
		case err != nil:
			r.note(u, "%s: not served: %v", route, err)
			r.stats["request not served: "+err.Error()]++
			return
		}
	}
	if s == nil {
		var err error
		if s, err = m.Create(ctx); err != nil {
			r.stats["create failed"]++
			return
		}
		u.ok, u.mayBeGone = []int64{0}, false
	}
	v, _ := s.GetInt("count")
	if !u.accepts(v) {
		r.fail(u, "%s: session %s holds count %d, want one of %v", route, s.ID(), v, u.ok)
		return
	}
	if base, sroute := SplitID(s.ID()); sroute != route && r.rng.IntN(2) == 0 {
		if id, err := m.ChangeID(ctx, s, base); id != "" {
			r.note(u, "%s: rebound to %s (err %v)", route, id, err)
			u.id = id
			if err != nil {
				r.stats["rebind not confirmed"]++
			}
		}
	}
	if err := s.Set("count", v+1); err != nil {
		// The copy this request holds was dropped meanwhile (another
		// node's claim won): the handler gets the error, and nothing
		// is written.
		r.note(u, "%s: set refused: %v", route, err)
		r.stats["set refused: "+err.Error()]++
		_ = m.Commit(ctx, s)
		return
	}
	err := m.Commit(ctx, s)
	first := u.id == ""
	u.id = s.ID()
	r.note(u, "%s: %s count %d -> %d, owner %s (err %v)", route, u.id, v, v+1, s.ownerRoute(), err)
	if err != nil {
		r.stats["commit not confirmed"]++
		u.ok = append(u.ok, v+1)
		u.mayBeGone = u.mayBeGone || first
		return
	}
	u.ok, u.mayBeGone = []int64{v + 1}, false
	r.stats["writes confirmed"]++
}

// logout invalidates u's session on its node; u starts a new one next.
func (r *chaosRun) logout(u *chaosUser) {
	if u.id == "" {
		return
	}
	route := r.nodeFor(u)
	err := r.rc.nodes[route].Manager().Invalidate(context.Background(), u.id)
	r.note(u, "%s: logout %s (err %v)", route, u.id, err)
	switch {
	case err == nil:
		r.stats["logouts"]++
		u.id = ""
	case errors.Is(err, ErrNotConfirmed):
		r.stats["logout not confirmed"]++
		u.mayBeGone = true
	default:
		r.stats["logout not done: "+err.Error()]++
	}
}

// crash kills a random node, once the cluster has repaired after the
// last change of membership.
func (r *chaosRun) crash() {
	r.settle()
	r.checkCopies(false)
	live := r.live()
	route := live[r.rng.IntN(len(live))]
	r.rc.crash(route)
	r.note(nil, "crashed %s", route)
	r.crashed = append(r.crashed, route)
	r.stats["crashes"]++
}

// restart starts a crashed node again, with its route, and waits until
// it is ready.
func (r *chaosRun) restart() {
	i := r.rng.IntN(len(r.crashed))
	route := r.crashed[i]
	r.crashed = slices.Delete(r.crashed, i, i+1)
	r.rc.start(route)
	r.rc.waitReady(route)
	r.note(nil, "restarted %s", route)
	r.stats["restarts"]++
}

// settle waits until every running node is ready and connected to every
// other at its current address, and no crashed node is a peer any more.
func (r *chaosRun) settle() {
	r.t.Helper()
	live := r.live()
	waitUntil(r.t, fmt.Sprintf("nodes %v to see only each other", live), func() bool {
		for _, route := range live {
			c := r.rc.nodes[route]
			if !c.Ready() {
				return false
			}
			var peers []string
			for _, p := range c.Channel().Stats().Peers {
				if o := r.rc.nodes[p.Route]; o == nil || !p.Connected || p.Addr != o.Channel().Addr().String() {
					return false
				}
				peers = append(peers, p.Route)
			}
			slices.Sort(peers)
			if !slices.Equal(peers, slices.DeleteFunc(slices.Clone(live), func(o string) bool { return o == route })) {
				return false
			}
		}
		return true
	})
}

// chaosCopy is one node's copy of a session.
type chaosCopy struct {
	node, owner string
	count       int64
}

// copiesOf returns the running nodes' copies of the session of base.
func (r *chaosRun) copiesOf(base string) []chaosCopy {
	var out []chaosCopy
	for route, c := range r.rc.nodes {
		c.Manager().Range(func(s *Session) bool {
			if b, _ := SplitID(s.ID()); b == base {
				v, _ := s.GetInt("count")
				out = append(out, chaosCopy{node: route, owner: s.ownerRoute(), count: v})
				return false
			}
			return true
		})
	}
	return out
}

// checkCopies waits until every user's session is held as the manager
// promises: by every running node (Delta) or by its primary and its
// backup (Backup), each copy with a count the user's writes allow. With
// exact, every copy holds the same count and, Backup, no other node holds
// one, and every holder names the same primary, one of them.
func (r *chaosRun) checkCopies(exact bool) {
	r.t.Helper()
	live := len(r.rc.nodes)
	want := live
	if r.rc.kind == KindBackup {
		want = min(1+r.backups, live)
	}
	for _, u := range r.users {
		if u.id == "" || u.mayBeGone {
			continue
		}
		base, _ := SplitID(u.id)
		var last []chaosCopy
		held := func() bool {
			last = r.copiesOf(base)
			good := 0
			for _, c := range last {
				if u.accepts(c.count) {
					good++
				}
			}
			if !exact {
				return good >= want
			}
			if good != want || len(last) != want {
				return false
			}
			owner := last[0].owner
			for _, c := range last {
				if c.count != last[0].count || r.rc.kind == KindBackup && c.owner != owner {
					return false
				}
			}
			return r.rc.kind == KindDelta || slices.ContainsFunc(last, func(c chaosCopy) bool { return c.node == owner })
		}
		for deadline := time.Now().Add(20 * time.Second); !held(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				r.fail(u, "timed out waiting for %d copies of session %s of count %v on nodes %v; copies: %+v", want, u.id, u.ok, r.live(), last)
				r.t.FailNow()
			}
		}
		if exact {
			u.ok = []int64{last[0].count} // what the next run of checks goes by
		}
	}
}
