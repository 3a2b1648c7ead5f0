package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/replication"
)

type backupCluster struct {
	t     *testing.T
	net   *memNet
	k     int
	nodes map[string]*Backup
}

func newBackupCluster(t *testing.T, k int, routes ...string) *backupCluster {
	c := &backupCluster{t: t, net: newMemNet(), k: k, nodes: map[string]*Backup{}}
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

func (c *backupCluster) start(route string) *Backup {
	c.t.Helper()
	return c.startOn(route, c.net.transport(route))
}

// startOn starts node route on transport t and tells every node.
func (c *backupCluster) startOn(route string, t Transport) *Backup {
	c.t.Helper()
	m := c.startQuietly(route, t)
	for _, n := range c.nodes {
		n.PeersChanged()
	}
	return m
}

// startQuietly starts node route on transport t, telling no node of it:
// none repairs for it until told.
func (c *backupCluster) startQuietly(route string, t Transport) *Backup {
	c.t.Helper()
	cfg := DefaultBackupConfig()
	cfg.Route = route
	cfg.Backups = c.k
	cfg.SweepInterval = time.Hour
	cfg.Logger = slog.New(slog.NewTextHandler(c.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := NewBackup(cfg, t)
	if err != nil {
		c.t.Fatal(err)
	}
	c.net.add(route, m)
	c.nodes[route] = m
	_ = m.Sync(context.Background())
	return m
}

// kill removes nodes abruptly and tells the survivors.
func (c *backupCluster) kill(routes ...string) {
	for _, r := range routes {
		c.net.remove(r)
		_ = c.nodes[r].Close(context.Background())
		delete(c.nodes, r)
	}
	for _, n := range c.nodes {
		n.PeersChanged()
	}
}

// crash stops node route the way SIGKILL would, unheard: nothing it sends
// on closing (a hand-off) reaches anyone. With tell, the survivors hear
// that it failed.
func (c *backupCluster) crash(route string, tell bool) {
	c.net.mu.Lock()
	c.net.drop = func(from, _ string, _ []byte) bool { return from == route }
	c.net.mu.Unlock()
	c.net.remove(route)
	_ = c.nodes[route].Close(context.Background())
	delete(c.nodes, route)
	c.net.mu.Lock()
	c.net.drop = nil
	c.net.mu.Unlock()
	if tell {
		for _, n := range c.nodes {
			n.PeersChanged()
		}
	}
}

// copies returns how many nodes hold id.
func (c *backupCluster) copies(id string) int {
	n := 0
	for _, m := range c.nodes {
		m.st.mu.RLock()
		_, ok := m.st.byBase[baseOf(id)]
		m.st.mu.RUnlock()
		if ok {
			n++
		}
	}
	return n
}

// holdersOf describes each copy of id: holder, the owner it knows, its
// revision, and where that owner's placement puts the backups, for a
// failure message.
func (c *backupCluster) holdersOf(id string) string {
	var out []string
	for _, r := range c.routes() {
		m := c.nodes[r]
		s := m.st.get(id)
		if s == nil {
			continue
		}
		owner, term := s.ownerClaim()
		out = append(out, fmt.Sprintf("%s: owner %s term %d rev %v, placement %v", r, owner, term, s.Rev(), placement(baseOf(id), owner, m.members(), c.k)))
	}
	return strings.Join(out, "; ")
}

// createReplicated creates n sessions on m, session i with attribute
// n=i, and waits until each has 1+k copies.
func (c *backupCluster) createReplicated(m *Backup, n int) []string {
	c.t.Helper()
	var ids []string
	for i := range n {
		s, _ := m.Create(bg)
		_ = s.Set("n", i)
		if err := m.Commit(bg, s); err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, s.ID())
	}
	c.waitReplicated(ids)
	return ids
}

// waitReplicated waits until every id has exactly 1+k copies.
func (c *backupCluster) waitReplicated(ids []string) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		bad := ""
		for _, id := range ids {
			if n := c.copies(id); n != 1+c.k {
				bad = fmt.Sprintf("%s has %d copies, want %d (%s)", RedactID(id).LogValue(), n, 1+c.k, c.holdersOf(id))
				break
			}
		}
		under := int64(0)
		for r, m := range c.nodes {
			under += m.UnderReplicated()
			b := m.backup
			b.peersMu.Lock()
			seen := slices.Sorted(slices.Values(b.peers))
			b.peersMu.Unlock()
			if cur := m.t.Peers(); !slices.Equal(seen, cur) || len(b.wake) > 0 || b.repairing.Load() {
				bad = fmt.Sprintf("%s has not repaired for peers %v yet", r, cur)
			}
		}
		if bad == "" && under == 0 && c.net.idleNow() {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replication not restored: %s; under-replicated %d", bad, under)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *backupCluster) routes() []string {
	var out []string
	for r := range c.nodes {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// createEverywhere creates n sessions on every node and returns their ids
// and the count each holds.
func (c *backupCluster) createEverywhere(n int) ([]string, map[string]int64) {
	var ids []string
	want := map[string]int64{}
	for _, r := range c.routes() {
		m := c.nodes[r]
		for i := range n {
			s, _ := m.Create(bg)
			_ = s.Set("n", i)
			if err := m.Commit(bg, s); err != nil {
				c.t.Fatal(err)
			}
			ids = append(ids, s.ID())
			want[s.ID()] = int64(i)
		}
	}
	return ids, want
}

// readAll reads every session through the given node and checks its value.
func (c *backupCluster) readAll(via string, want map[string]int64) {
	c.t.Helper()
	m := c.nodes[via]
	for id, n := range want {
		s, err := m.Find(bg, id)
		if err != nil {
			c.t.Fatalf("Find(%v) on %s: %v", RedactID(id).LogValue(), via, err)
		}
		if got, _ := s.GetInt("n"); got != n {
			c.t.Fatalf("%v on %s: n=%d, want %d", RedactID(id).LogValue(), via, got, n)
		}
	}
}

func TestBackupPlacementAndFailover(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	ids, want := c.createEverywhere(40)
	c.waitReplicated(ids)
	// Each node holds about (1+k)/N of the sessions, not all of them.
	for r, m := range c.nodes {
		if n := m.Count(); n >= len(ids) || n == 0 {
			t.Errorf("%s holds %d of %d sessions", r, n, len(ids))
		}
	}

	c.kill("n3")
	c.waitReplicated(ids)
	c.readAll("n1", want) // takes over every session it lacks
	c.waitReplicated(ids)
	for _, id := range ids {
		if s := c.nodes["n1"].st.get(id); s == nil || s.ownerRoute() != "n1" {
			t.Fatalf("n1 did not become the primary of a session it served")
		}
	}
}

func TestBackupJoinRebalances(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3")
	ids, want := c.createEverywhere(50)
	c.waitReplicated(ids)
	c.start("n4")
	c.start("n5")
	c.waitReplicated(ids)
	if c.nodes["n5"].Count() == 0 {
		t.Error("n5 received no copies after joining")
	}
	c.readAll("n2", want)
	c.waitReplicated(ids)
}

func TestBackupTwoKillsWithTwoBackups(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 2, "n1", "n2", "n3", "n4", "n5")
	ids, want := c.createEverywhere(30)
	c.waitReplicated(ids)
	c.kill("n2", "n4")
	c.waitReplicated(ids)
	c.readAll("n5", want)
	c.waitReplicated(ids)
}

func TestBackupMissingSessionAnsweredAtOnce(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3")
	// With an hour's timeout, only the holders' "not here" answers can end
	// the fetch.
	c.nodes["n1"].backup.fetchTimeout = time.Hour
	if _, err := c.nodes["n1"].Find(bg, "doesnotexist.n2"); err != ErrNotFound {
		t.Fatalf("Find = %v, want ErrNotFound", err)
	}
}

func TestPlacementMovesFewSessions(t *testing.T) {
	members := []string{"n1", "n2", "n3", "n4", "n5"}
	moved := 0
	const total = 10000
	for i := range total {
		base := fmt.Sprint("session", i)
		before := placement(base, "n1", members, 1)
		after := placement(base, "n1", append(members, "n6"), 1)
		if before[0] != after[0] {
			moved++
			if after[0] != "n6" {
				t.Fatalf("adding n6 moved a backup from %s to %s", before[0], after[0])
			}
		}
	}
	// Only the sessions that now belong on n6 move: about 1/5 of them.
	if moved < total/10 || moved > total*3/10 {
		t.Errorf("%d of %d backups moved, want about 1/5", moved, total)
	}
}

// TestBackupFindByPrincipalIsClusterWide logs one user in on sessions
// created on every node: any node finds all of them, though it holds only
// its share, and invalidating them logs the user out everywhere.
func TestBackupFindByPrincipalIsClusterWide(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	var ids []string
	for _, r := range []string{"n1", "n2", "n3", "n4", "n5", "n1", "n3"} {
		m := c.nodes[r]
		s, _ := m.Create(bg)
		_ = s.SetPrincipal("alice")
		_ = m.Commit(bg, s)
		ids = append(ids, s.ID())
	}
	other, _ := c.nodes["n2"].Create(bg)
	_ = other.SetPrincipal("bob")
	_ = c.nodes["n2"].Commit(bg, other)
	c.waitReplicated(ids)
	if held := c.nodes["n4"].Count(); held >= len(ids) {
		t.Fatalf("n4 holds %d sessions: the test needs a node that holds only a share", held)
	}
	found, err := c.nodes["n4"].FindByPrincipal(bg, "alice")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range found {
		got = append(got, s.ID())
		if s.Principal() != "alice" {
			t.Errorf("%v has principal %q", RedactID(s.ID()).LogValue(), s.Principal())
		}
	}
	slices.Sort(got)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("FindByPrincipal found %d sessions, want the %d of alice", len(got), len(want))
	}
	// Log alice out everywhere.
	for _, s := range found {
		if err := c.nodes["n4"].Invalidate(bg, s.ID()); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "alice logged out on every node", func() bool {
		for _, m := range c.nodes {
			if left, _ := m.FindByPrincipal(bg, "alice"); len(left) != 0 {
				return false
			}
		}
		return true
	})
	if s, err := c.nodes["n5"].Find(bg, other.ID()); err != nil || s.Principal() != "bob" {
		t.Errorf("bob's session: %v, %v", s, err)
	}
}

// TestBackupGracefulCloseHandsOff stops a node gracefully: before it
// leaves, its primaries go to their first backups, which serve them
// without a fetch, and replication is restored to 1+k copies.
func TestBackupGracefulCloseHandsOff(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4")
	ids, want := c.createEverywhere(25)
	c.waitReplicated(ids)
	var mine []string
	for _, id := range ids {
		if s := c.nodes["n1"].st.get(id); s != nil && s.ownerRoute() == "n1" {
			mine = append(mine, id)
		}
	}
	if len(mine) == 0 {
		t.Fatal("n1 is the primary of no session")
	}
	leaving := c.nodes["n1"]
	if err := leaving.Close(bg); err != nil {
		t.Fatal(err)
	}
	c.net.remove("n1")
	delete(c.nodes, "n1")
	for _, n := range c.nodes {
		n.PeersChanged()
	}
	c.waitReplicated(ids)
	// Every session n1 served has a primary among the others, which holds it.
	for _, id := range mine {
		owners := 0
		for _, m := range c.nodes {
			if s := m.st.get(id); s != nil && s.ownerRoute() == m.cfg.Route {
				owners++
			}
		}
		if owners != 1 {
			t.Errorf("%v has %d primaries after the hand-off, want 1", RedactID(id).LogValue(), owners)
		}
	}
	if st := leaving.Stats(); st.Sent["handoff"] == 0 {
		t.Error("no hand-off sent")
	}
	c.readAll("n3", want)
}

// The backup's sweep comes before the primary's batch of access times: the
// backup keeps its copy until the batch can have come in, so the session
// survives the primary's kill -9.
func TestBackupExpiryBeforeThePrimarysAccess(t *testing.T) {
	c := newBackupCluster(t, 1, "a", "b", "c")
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for _, m := range c.nodes {
		m.h.clock = clock.now
	}
	a := c.nodes["a"]
	s, _ := a.Create(bg)
	_ = s.SetMaxInactive(10 * time.Minute)
	_ = s.Set("cart", 1)
	if err := a.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	c.waitReplicated([]string{id})
	backup := a.targets(s)[0]

	clock.advance(10*time.Minute - 2*time.Second)
	if _, err := a.Find(bg, id); err != nil { // read on the primary
		t.Fatal(err)
	}
	_ = a.Commit(bg, s)
	clock.advance(3 * time.Second)
	c.nodes[backup].sweep() // the backup sweeps first
	time.Sleep(50 * time.Millisecond)
	a.sweep() // then the primary, whose batch has the access
	time.Sleep(50 * time.Millisecond)
	if n := c.copies(id); n != 2 {
		t.Errorf("%d copies of a session accessed 1s ago, want 2 (primary+backup)", n)
	}
	// kill -9 of a: gone from the network, no hand-off.
	c.net.drop = func(from, to string, msg []byte) bool { return from == "a" || to == "a" }
	c.net.remove("a")
	dead := c.nodes["a"]
	delete(c.nodes, "a")
	t.Cleanup(func() { _ = dead.Close(bg) })
	for _, m := range c.nodes {
		m.PeersChanged()
	}
	time.Sleep(50 * time.Millisecond)
	for r, m := range c.nodes {
		if _, err := m.Find(bg, id); err != nil {
			t.Errorf("%s: session lost after primary failure: %v", r, err)
		}
	}
}

// kill -9 of a primary, then a user writes each of its sessions through a
// node that may be neither of their backups, while the survivors' repair
// runs: the serving node stays the primary, and every write ends on 1+k
// nodes.
func TestBackupKillThenServeElsewhere(t *testing.T) {
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	n1 := c.nodes["n1"]
	ids := c.createReplicated(n1, 30)
	c.net.drop = func(from, to string, msg []byte) bool { return from == "n1" || to == "n1" }
	c.net.remove("n1")
	delete(c.nodes, "n1")
	t.Cleanup(func() { _ = n1.Close(bg) })
	for _, m := range c.nodes {
		m.PeersChanged()
	}
	n2 := c.nodes["n2"]
	for i, id := range ids {
		s, err := n2.Find(bg, id)
		if err != nil {
			t.Fatalf("Find on n2: %v", err)
		}
		_ = s.Set("n", 100+i)
		_ = n2.Commit(bg, s)
	}
	c.waitReplicated(ids)
	for i, id := range ids {
		latest := 0
		for r, m := range c.nodes {
			if s := m.st.get(id); s != nil {
				if v, _ := s.GetInt("n"); v == int64(100+i) {
					latest++
				} else {
					t.Errorf("%s holds n=%d, want %d", r, v, 100+i)
				}
			}
		}
		if latest != 2 {
			t.Errorf("the write of n=%d is on %d nodes, want 2", 100+i, latest)
		}
		if s := n2.st.get(id); s == nil || s.ownerRoute() != "n2" {
			t.Errorf("n2 served and wrote the session but is not its primary")
		}
	}
}

// TestBackupTwoNodesServeAtOnce: after the primary fails, two nodes serve
// requests of each of its sessions at the same moment (a user's two tabs
// failed over to different nodes) and both claim it. Every holder must end
// agreeing on one primary, which holds the session, with its backups.
func TestBackupTwoNodesServeAtOnce(t *testing.T) {
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	n1 := c.nodes["n1"]
	ids := c.createReplicated(n1, 30)
	c.kill("n1")
	var wg sync.WaitGroup
	for _, r := range []string{"n2", "n3"} {
		m := c.nodes[r]
		wg.Go(func() {
			for _, id := range ids {
				if _, err := m.Find(bg, id); err != nil {
					t.Errorf("Find on %s: %v", r, err)
				}
			}
		})
	}
	wg.Wait()
	c.waitReplicated(ids)
	for _, id := range ids {
		var primaries []string
		owners := map[string]bool{}
		for _, r := range c.routes() {
			s := c.nodes[r].st.get(id)
			if s == nil {
				continue
			}
			owners[s.ownerRoute()] = true
			if s.ownerRoute() == r {
				primaries = append(primaries, r)
			}
		}
		if len(primaries) != 1 || len(owners) != 1 {
			t.Errorf("%v: primaries %v, holders name owners %v (%s)", RedactID(id), primaries, owners, c.holdersOf(id))
		}
	}
}

// TestBackupCopiesCappedBySmallCluster checks that a cluster with fewer
// peers than Backups reports the copies sessions really get.
func TestBackupCopiesCappedBySmallCluster(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 2, "n1", "n2")
	copies := func(want int) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("every node to report %d backup copies", want), func() bool {
			for _, m := range c.nodes {
				if m.Stats().BackupCopies != want {
					return false
				}
			}
			return true
		})
	}
	copies(1)
	c.start("n3")
	copies(2)
	c.kill("n3")
	copies(1)
}

// heldReplies holds the fetch replies (or the replies of another kind)
// sent to one node until released, as a holder's answer that comes in
// after the request gave up waiting.
type heldReplies struct {
	mu      sync.Mutex
	to      string
	kind    kind // the replies held: fetch replies when zero
	holding bool
	held    []heldMsg
}

type heldMsg struct {
	from string
	msg  []byte
}

func (h *heldReplies) drop(from, to string, msg []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.kind
	if k == 0 {
		k = kindFetchReply
	}
	if h.holding && to == h.to && len(msg) > 0 && kind(msg[0]) == k {
		h.held = append(h.held, heldMsg{from, msg})
		return true
	}
	return false
}

// deliver waits until n replies are held, then hands them to m, those of
// first before the others.
func (h *heldReplies) deliver(t *testing.T, m *Backup, n int, first string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d replies held", n), func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.held) == n
	})
	late := h.release()
	slices.SortStableFunc(late, func(a, b heldMsg) int {
		switch {
		case a.from == b.from:
			return 0
		case a.from == first:
			return -1
		case b.from == first:
			return 1
		}
		return 0
	})
	for _, r := range late {
		_ = m.Receive(r.from, r.msg)
	}
}

// release stops holding replies and returns those held.
func (h *heldReplies) release() []heldMsg {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holding = false
	return h.held
}

// TestBackupFetchAbandonedByItsRequest: a request whose context ends while
// it fetches a session leaves no fetch behind. The holders' answers that
// come in later must not be what a later request of the session gets, once
// the session has changed on its primary.
func TestBackupFetchAbandonedByItsRequest(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	n1 := c.nodes["n1"]
	id := c.createReplicated(n1, 1)[0]
	var xr string
	for _, r := range c.routes() {
		if c.nodes[r].st.get(id) == nil {
			xr = r
			break
		}
	}
	x := c.nodes[xr]
	h := &heldReplies{to: xr, holding: true}
	c.net.drop = h.drop
	ctx, cancel := context.WithCancel(bg)
	cancel() // the client went away
	if _, err := x.Find(ctx, id); err == nil {
		t.Fatal("Find with a canceled context found the session")
	}
	late := h.release()
	if len(late) == 0 {
		t.Fatal("no fetch reply held")
	}
	for _, r := range late {
		_ = x.Receive(r.from, r.msg)
	}

	s, err := n1.Find(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Set("n", 7)
	if err := n1.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	c.waitReplicated([]string{id})
	s, err = x.Find(bg, id)
	if err != nil {
		t.Fatalf("Find on %s: %v", xr, err)
	}
	if got, _ := s.GetInt("n"); got != 7 {
		t.Fatalf("%s serves n=%d, want the primary's n=7 (%s)", xr, got, c.holdersOf(id))
	}
}

// TestBackupRenewIDMovesTheCopies: a new base (RenewID after a login) has a
// placement of its own. The renewed session is on 1+k nodes under its new
// id at once, not only after its next change; no node keeps a copy under
// the old id, which an attacker who planted it could take over; and the
// session survives a kill -9 of its primary right after the renewal.
func TestBackupRenewIDMovesTheCopies(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	n1 := c.nodes["n1"]
	old := c.createReplicated(n1, 8)
	var renewed []string
	for _, id := range old {
		newID, err := n1.ChangeID(bg, n1.st.get(id), "")
		if err != nil {
			t.Fatal(err)
		}
		renewed = append(renewed, newID)
	}
	c.waitReplicated(renewed)
	for _, id := range old {
		if n := c.copies(id); n != 0 {
			t.Errorf("%d nodes keep a copy under the old id", n)
		}
	}
	// kill -9 of n1: gone from the network, no hand-off.
	c.net.drop = func(from, to string, msg []byte) bool { return from == "n1" || to == "n1" }
	c.net.remove("n1")
	delete(c.nodes, "n1")
	t.Cleanup(func() { _ = n1.Close(bg) })
	for _, m := range c.nodes {
		m.PeersChanged()
	}
	c.waitReplicated(renewed)
	for i, id := range renewed {
		s, err := c.nodes["n2"].Find(bg, id)
		if err != nil {
			t.Fatalf("renewed session lost with its primary: %v", err)
		}
		if got, _ := s.GetInt("n"); got != int64(i) {
			t.Errorf("n=%d, want %d", got, i)
		}
		for _, r := range c.routes() {
			if _, err := c.nodes[r].Find(bg, old[i]); err != ErrNotFound {
				t.Errorf("Find of the old id on %s: %v, want ErrNotFound", r, err)
			}
		}
	}
}

// stallingTransport reports peer stalled in every Send that waits, as the
// replication channel does for a peer that let an earlier send time out:
// the message is still delivered, and answered, but not waited for.
type stallingTransport struct {
	*memTransport
	peer string
}

func (t stallingTransport) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	err := t.memTransport.Send(ctx, to, msg, mode)
	if mode != Async && slices.Contains(to, t.peer) {
		err = errors.Join(err, &replication.PeerError{Peer: t.peer, Op: "ack", Err: replication.ErrPeerStalled})
	}
	return err
}

// TestBackupFetchCountsAStalledHolderOnce: after its primary failed, a
// session is fetched from its holders, one of which the channel reports
// stalled. That holder is not waited for, but it is slow, not dead: its
// "not here" comes in, and must not end the fetch before the backup that
// holds the session answers.
func TestBackupFetchCountsAStalledHolderOnce(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4")
	n1 := c.nodes["n1"]
	var id, backup, x, stalled string
	for id == "" {
		s, _ := n1.Create(bg)
		_ = s.Set("n", 1)
		if err := n1.Commit(bg, s); err != nil {
			t.Fatal(err)
		}
		c.waitReplicated([]string{s.ID()})
		backup = n1.targets(s)[0]
		// x, a node without a copy, asks the backup and one more node.
		for _, r := range []string{"n2", "n3", "n4"} {
			if r == backup {
				continue
			}
			others := slices.DeleteFunc([]string{"n2", "n3", "n4"}, func(o string) bool { return o == r })
			if h := placement(baseOf(s.ID()), "", others, 2); slices.Contains(h, backup) {
				x, id = r, s.ID()
				stalled = slices.DeleteFunc(h, func(o string) bool { return o == backup })[0]
				break
			}
		}
	}
	// x restarts on a transport that reports the other holder stalled.
	_ = c.nodes[x].Close(bg)
	c.net.remove(x)
	delete(c.nodes, x)
	c.startOn(x, stallingTransport{c.net.transport(x), stalled})
	waitUntil(t, "the network idle", c.net.idleNow)
	// kill -9 of n1, before any repair has run.
	h := &heldReplies{to: x, holding: true}
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "n1" || to == "n1" || h.drop(from, to, msg)
	}
	c.net.remove("n1")
	delete(c.nodes, "n1")
	t.Cleanup(func() { _ = n1.Close(bg) })

	m := c.nodes[x]
	call := m.ask(id)
	if call == nil {
		t.Fatal("no holder asked")
	}
	// The stalled holder's "not here" comes in first, the backup's copy
	// last.
	h.deliver(t, m, 2, stalled)
	full, err := m.await(bg, id, call)
	if err != nil || full == nil {
		t.Fatalf("fetch on %s (backup %s, stalled %s): %v, %v", x, backup, stalled, full, err)
	}
}

// earlyAnswers is a stallingTransport whose Send runs answered once the
// peers have handled msg, before it reports the stalled peer: answers
// that come in while the sender still waits for the channel.
type earlyAnswers struct {
	stallingTransport
	answered func(msg []byte)
}

func (t earlyAnswers) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	err := t.stallingTransport.Send(ctx, to, msg, mode)
	t.answered(msg)
	return err
}

// TestBackupFindByPrincipalCountsAStalledPeerOnce: a user's session is
// left on one node, its backup, by a kill -9 of its primary, and another
// node asks for the user's sessions ("log out everywhere") while the
// channel reports a third peer stalled. That peer is not waited for, but
// it is slow, not dead: its empty answer comes in, and must not end the
// query before the backup that holds the session answers.
func TestBackupFindByPrincipalCountsAStalledPeerOnce(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4", "n5")
	n1 := c.nodes["n1"]
	s, _ := n1.Create(bg)
	_ = s.SetPrincipal("alice")
	if err := n1.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	c.waitReplicated([]string{id})
	backup := n1.targets(s)[0]
	others := slices.DeleteFunc(c.routes(), func(r string) bool { return r == "n1" || r == backup })
	x, stalled := others[0], others[1]

	// x restarts on a transport that reports the stalled peer, and on
	// which the answers of that peer and of the third one come in before
	// Send returns; the backup's is held for the test.
	h := &heldReplies{to: x, kind: kindPrincipalReply, holding: true}
	last := make(chan heldMsg, 1)
	var m *Backup
	answered := func(msg []byte) {
		if kind(msg[0]) != kindPrincipalQuery {
			return
		}
		for _, r := range h.release() {
			if r.from == backup {
				last <- r
			} else {
				_ = m.Receive(r.from, r.msg)
			}
		}
	}
	_ = c.nodes[x].Close(bg)
	c.net.remove(x)
	delete(c.nodes, x)
	m = c.startOn(x, earlyAnswers{stallingTransport{c.net.transport(x), stalled}, answered})
	m.backup.fetchTimeout = time.Minute
	c.waitReplicated([]string{id})
	// kill -9 of n1, before any repair has run: the backup holds the only
	// copy.
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "n1" || to == "n1" || h.drop(from, to, msg)
	}
	c.net.remove("n1")
	delete(c.nodes, "n1")
	t.Cleanup(func() { _ = n1.Close(bg) })

	type result struct {
		found []*Session
		err   error
	}
	res := make(chan result, 1)
	go func() {
		found, err := m.FindByPrincipal(bg, "alice")
		res <- result{found, err}
	}()
	r := <-last
	// Counted twice, the stalled peer's answer would end the query now,
	// without the backup's.
	var got result
	select {
	case got = <-res:
	case <-time.After(200 * time.Millisecond):
		_ = m.Receive(r.from, r.msg)
		got = <-res
	}
	if len(got.found) != 1 || got.found[0].ID() != id {
		t.Fatalf("FindByPrincipal on %s (backup %s, stalled %s) found %d sessions, want alice's one (err %v)", x, backup, stalled, len(got.found), got.err)
	}
}

// staleAccessCluster is 4 nodes whose clocks tests move, and a session
// with 10 minutes of max inactivity, created on n1, read there 9 minutes
// later, and now 11 minutes old: n1's batch of access times reached its
// backup fresh but not its backup stale, whose copy, at the same
// revision, looks expired. n1 is then killed -9, before any repair; x is
// the node without a copy.
func staleAccessCluster(t *testing.T) (c *backupCluster, id, fresh, stale, x string) {
	t.Helper()
	c = newBackupCluster(t, 2, "n1", "n2", "n3", "n4")
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for _, m := range c.nodes {
		m.h.clock = clock.now
	}
	n1 := c.nodes["n1"]
	s, _ := n1.Create(bg)
	_ = s.SetMaxInactive(10 * time.Minute)
	_ = s.Set("cart", 1)
	if err := n1.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	id = s.ID()
	c.waitReplicated([]string{id})
	backups := n1.targets(s)
	fresh, stale = backups[0], backups[1]
	x = slices.DeleteFunc(c.routes(), func(r string) bool { return r == "n1" || slices.Contains(backups, r) })[0]

	clock.advance(9 * time.Minute)
	if _, err := n1.Find(bg, id); err != nil {
		t.Fatal(err)
	}
	_ = n1.Commit(bg, s)
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "n1" && to == stale && kind(msg[0]) == kindTouch
	}
	n1.flushTouches()
	waitUntil(t, "the network idle", c.net.idleNow)
	clock.advance(2 * time.Minute)
	if s := c.nodes[stale].st.get(id); s == nil || !s.expiredAt(clock.now()) {
		t.Fatalf("%s's copy: %v, want one that looks expired", stale, s)
	}

	c.net.drop = func(from, to string, msg []byte) bool { return from == "n1" || to == "n1" }
	c.net.remove("n1")
	delete(c.nodes, "n1")
	t.Cleanup(func() { _ = n1.Close(bg) })
	return c, id, fresh, stale, x
}

// TestBackupFetchTakesTheLatestAccess: a node without a copy fetches a
// session whose backups hold it at the same revision, one with an older
// access time, whose answer comes in first. The session was used 2
// minutes ago: it is found, not expired.
func TestBackupFetchTakesTheLatestAccess(t *testing.T) {
	leaktest.Check(t)
	c, id, fresh, stale, x := staleAccessCluster(t)
	h := &heldReplies{to: x, holding: true}
	c.net.drop = func(from, to string, msg []byte) bool {
		return from == "n1" || to == "n1" || h.drop(from, to, msg)
	}
	m := c.nodes[x]
	found := make(chan error, 1)
	go func() {
		_, err := m.Find(bg, id)
		found <- err
	}()
	h.deliver(t, m, 2, stale)
	if err := <-found; err != nil {
		t.Fatalf("Find on %s (fresh %s, stale %s): %v", x, fresh, stale, err)
	}
}

// TestBackupRefreshTakesTheLatestAccess: the user fails over to the
// backup whose copy has the older access time. Its refresh from the other
// holders finds the same revision, with the latest access: the session is
// served, not expired.
func TestBackupRefreshTakesTheLatestAccess(t *testing.T) {
	leaktest.Check(t)
	c, id, fresh, stale, _ := staleAccessCluster(t)
	if _, err := c.nodes[stale].Find(bg, id); err != nil {
		t.Fatalf("Find on %s (fresh %s): %v", stale, fresh, err)
	}
}

// TestBackupSweepWaitsForThePrimarysAccesses: a backup sweeps after the
// session's deadline by the access times it has, but before the batch
// with the primary's last access arrives. The session, used a second ago,
// is not destroyed there: no Destroyed fires, the copy stays. When it
// does expire, on its primary, the backup, which never heard (the expiry
// was lost), ends its copy too, a little later.
func TestBackupSweepWaitsForThePrimarysAccesses(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "a", "b", "c")
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for _, m := range c.nodes {
		m.h.clock = clock.now
	}
	a := c.nodes["a"]
	s, _ := a.Create(bg)
	_ = s.SetMaxInactive(10 * time.Minute)
	_ = s.Set("cart", 1)
	if err := a.Commit(bg, s); err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	c.waitReplicated([]string{id})
	b := c.nodes[a.targets(s)[0]]
	var mu sync.Mutex
	var gone []string
	b.AddListener(Listener{Destroyed: func(s *Session, why Reason) {
		mu.Lock()
		defer mu.Unlock()
		gone = append(gone, why.String())
	}})
	destroyedOnB := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(gone)
	}

	clock.advance(10*time.Minute - 2*time.Second)
	if _, err := a.Find(bg, id); err != nil { // read on the primary
		t.Fatal(err)
	}
	_ = a.Commit(bg, s)
	clock.advance(3 * time.Second)
	b.sweep() // the backup sweeps first
	waitUntil(t, "the network idle", c.net.idleNow)
	if got := destroyedOnB(); len(got) != 0 {
		t.Fatalf("the backup destroyed a session used 1s ago: %v", got)
	}
	if b.st.get(id) == nil {
		t.Fatal("the backup dropped the copy of a session used 1s ago")
	}
	a.sweep() // the primary's batch
	waitUntil(t, "the network idle", c.net.idleNow)

	// The primary expires the session; its word does not reach the backup.
	c.net.drop = func(from, to string, msg []byte) bool { return kind(msg[0]) == kindExpire }
	clock.advance(11 * time.Minute)
	a.sweep()
	if a.st.get(id) != nil {
		t.Fatal("the primary kept a session idle past its deadline")
	}
	for range 3 {
		clock.advance(a.cfg.SweepInterval)
		b.sweep()
	}
	if b.st.get(id) != nil {
		t.Fatal("the backup keeps a copy whose primary expired it, sweeps later")
	}
	if got := destroyedOnB(); !slices.Equal(got, []string{"expired"}) {
		t.Errorf("Destroyed on the backup: %v, want one expiry", got)
	}
}

// A failed primary's session is taken over by the survivor that placement
// names first, but that survivor may hold no copy: it joined after the
// copies were placed, and the primary died before it moved them. The
// backup that holds the copy takes the session over itself once no
// takeover came.
func TestBackupOrphanOfAFailedPrimaryIsTakenOver(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2")
	ids := c.createReplicated(c.nodes["n1"], 20)
	// n3 joins; n2 sees it, n1 does not get to move any copy to it.
	n3 := c.startQuietly("n3", c.net.transport("n3"))
	n2 := c.nodes["n2"]
	n2.PeersChanged()
	n3.PeersChanged()
	waitUntil(t, "n2 to repair for peers n1 and n3", func() bool {
		n2.backup.peersMu.Lock()
		defer n2.backup.peersMu.Unlock()
		return slices.Equal(slices.Sorted(slices.Values(n2.backup.peers)), []string{"n1", "n3"}) && !n2.backup.repairing.Load()
	})
	orphans := 0
	for _, id := range ids {
		if placement(baseOf(id), "n1", []string{"n1", "n2", "n3"}, 1)[0] == "n3" {
			orphans++
		}
		if n3.st.get(id) != nil {
			t.Fatalf("n3 got a copy: the test needs n1 not to move any")
		}
	}
	if orphans == 0 {
		t.Fatal("no session of which n3 is the first survivor: the test needs one")
	}
	c.crash("n1", true)
	c.waitReplicated(ids)
	for _, id := range ids {
		if owner := n2.st.get(id).ownerRoute(); owner == "n1" {
			t.Fatalf("a session still names the failed n1 its primary (%s)", c.holdersOf(id))
		}
	}
}

// A primary that restarts before its backups' repair sees it fail holds
// none of its sessions, and no repair takes them over: their backups hold
// the only copies. The catch-up the cluster runs for a restarted peer
// sends them back, and it is their primary again, with its backups where
// placement now puts them (n4 joined before the copies came back), and
// no other copy.
func TestBackupRestartedPrimaryGetsItsSessionsBack(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3")
	n1 := c.nodes["n1"]
	ids := c.createReplicated(n1, 20)
	// A copy left over where placement does not put one (a backup of an
	// earlier placement that missed its drop) goes back too, and must
	// not stay behind.
	for _, id := range ids {
		for _, r := range []string{"n2", "n3"} {
			if m := c.nodes[r]; m.st.get(id) == nil {
				m.onFull("n1", n1.st.get(id).full())
			}
		}
	}
	// n1 crashes and comes back, as one event for the others: no repair
	// runs in between. Then n4 joins.
	c.crash("n1", false)
	c.start("n1")
	c.start("n4")
	c.waitReplicated(nil) // every node repaired for n4 before the copies come
	for _, r := range []string{"n2", "n3"} {
		c.nodes[r].catchUp("n1", time.Time{}, true)
	}
	c.waitReplicated(ids)
	moved := 0
	for _, id := range ids {
		s := c.nodes["n1"].st.get(id)
		if s == nil || s.ownerRoute() != "n1" {
			t.Fatalf("restarted n1 is not the primary of its session again (%s)", c.holdersOf(id))
		}
		backup := placement(baseOf(id), "n1", c.routes(), 1)[0]
		if backup == "n4" {
			moved++
		}
		if c.nodes[backup].st.get(id) == nil {
			t.Fatalf("the backup placement names holds no copy (%s)", c.holdersOf(id))
		}
	}
	if moved == 0 {
		t.Fatal("no session whose backup is now n4: the test needs one")
	}
}

// A node asked for a session it does not hold, whose possible holders do
// not all answer (one has just died, before membership says so) and of
// which none that answered holds it, does not answer ErrNotFound: the
// silent one may hold it, and a new session in its place would lose the
// user's. Once the silent node is no longer a member, or answers, the
// answer is the holders' again.
func TestBackupFindWithASilentHolderIsNotNotFound(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3")
	n1 := c.nodes["n1"]
	ids := c.createReplicated(n1, 1)
	id := ids[0]
	// Only n1 holds it now: its backup lost its copy.
	for _, r := range []string{"n2", "n3"} {
		c.nodes[r].st.remove(id)
	}
	// n3 asks with n1 unreachable.
	_ = c.nodes["n3"].Close(bg)
	c.net.remove("n3")
	delete(c.nodes, "n3")
	n3 := c.startOn("n3", &failingPeer{Transport: c.net.transport("n3"), peer: "n1", err: replication.ErrPeerDown})
	waitUntil(t, "the network idle", c.net.idleNow)
	_, err := n3.Find(bg, id)
	if !errors.Is(err, ErrUnreachable) || errors.Is(err, ErrNotFound) {
		t.Fatalf("Find with the only holder unreachable = %v, want ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), "n1") {
		t.Errorf("error %q does not name the silent holder n1", err)
	}
	// Once n1 is no longer a member, the holders that answer decide.
	c.crash("n1", true)
	if _, err := n3.Find(bg, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Find once the silent holder is gone = %v, want ErrNotFound", err)
	}
}

// A backup copy left where placement put it neither before a change of
// membership nor after (the node missed the drop that moved it: it was
// not yet the claimer's peer, just after a restart) is dropped at the
// next repair: the holder sends it to the primary, which tells it to drop
// it once the backups placement names have a copy.
func TestBackupLeftoverCopyIsDropped(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3", "n4")
	n1 := c.nodes["n1"]
	ids := c.createReplicated(n1, 20)
	after := []string{"n1", "n2", "n3", "n4", "n5"}
	for _, id := range ids {
		base := baseOf(id)
		placed := append(placement(base, "n1", after[:4], 1), placement(base, "n1", after, 1)...)
		for _, r := range []string{"n2", "n3", "n4"} {
			if !slices.Contains(placed, r) {
				c.nodes[r].onFull("n1", n1.st.get(id).full())
				break
			}
		}
	}
	waitUntil(t, "the leftovers in place", func() bool {
		for _, id := range ids {
			if c.copies(id) != 3 {
				return false
			}
		}
		return true
	})
	c.start("n5")
	c.waitReplicated(ids)
}

// A node that another's claim took a session from, and that dropped its
// copy, may get one back from a holder whose word is stale, naming it
// the primary. It claims the session back as a repair would, and the
// live primary's answer wins: it yields and drops the copy again,
// rather than serve a stale copy as the primary.
func TestBackupStaleCopyNamingAFormerPrimaryYields(t *testing.T) {
	leaktest.Check(t)
	c := newBackupCluster(t, 1, "n1", "n2", "n3")
	n1 := c.nodes["n1"]
	id := c.createReplicated(n1, 1)[0]
	backup := n1.targets(n1.st.get(id))[0]
	other := slices.DeleteFunc([]string{"n2", "n3"}, func(r string) bool { return r == backup })[0]
	// The user moves to other, which claims the session; n1 yields.
	if _, err := c.nodes[other].Find(bg, id); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "n1 to yield", func() bool {
		s := n1.st.get(id)
		return s == nil || s.ownerRoute() == other
	})
	n1.st.remove(id) // dropped, as when placement leaves it out
	// A stale copy names n1 the primary, as before the claim.
	stale := c.nodes[other].st.get(id).full()
	stale.Owner, stale.Term = "n1", 0
	n1.onFull(backup, stale)
	waitUntil(t, "n1 to yield again", func() bool {
		s := n1.st.get(id)
		return s == nil || s.ownerRoute() == other
	})
	c.waitReplicated([]string{id})
}
