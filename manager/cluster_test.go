package manager

import (
	"context"
	"errors"
	"fmt"
	"github.com/cohort-cluster/cohort/internal/testlog"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
)

// realCluster runs Clusters on 127.0.0.1 with real membership and real
// replication channels.
type realCluster struct {
	t     *testing.T
	kind  string
	nodes map[string]*Cluster
	edit  func(*ClusterConfig) // optional: changes each node's configuration
}

func newRealCluster(t *testing.T, kind string, routes ...string) *realCluster {
	t.Helper()
	return newRealClusterWith(t, kind, nil, routes...)
}

// newRealClusterWith is newRealCluster with each node's configuration
// changed by edit.
func newRealClusterWith(t *testing.T, kind string, edit func(*ClusterConfig), routes ...string) *realCluster {
	t.Helper()
	rc := &realCluster{t: t, kind: kind, nodes: map[string]*Cluster{}, edit: edit}
	t.Cleanup(func() {
		for _, c := range rc.nodes {
			_ = c.Close(context.Background())
		}
	})
	for _, r := range routes {
		rc.start(r)
	}
	for _, r := range routes {
		rc.waitReady(r)
	}
	rc.waitPeers(len(routes) - 1)
	return rc
}

func (rc *realCluster) start(route string) *Cluster {
	rc.t.Helper()
	cfg := DefaultClusterConfig()
	cfg.Kind = rc.kind
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route = route
	cfg.Membership.Logger = slog.New(slog.NewTextHandler(rc.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", route)
	for _, c := range rc.nodes {
		cfg.Membership.Join = append(cfg.Membership.Join, c.Membership().Addr().String())
	}
	cfg.Replication.Addr = "127.0.0.1:0"
	cfg.Manager.Types = NewTypes()
	cfg.Manager.Types.MustRegister("test.cart", cart{})
	cfg.Manager.SweepInterval = time.Hour
	cfg.Manager.ChunkBytes = 1024 // state transfers of many chunks, streamed
	cfg.JoinWait = 300 * time.Millisecond
	if rc.edit != nil {
		rc.edit(&cfg)
	}
	c, err := StartCluster(cfg)
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.nodes[route] = c
	return c
}

func (rc *realCluster) waitReady(route string) {
	rc.t.Helper()
	waitUntil(rc.t, route+" ready", rc.nodes[route].Ready)
}

// waitPeers waits until every node's channel has n peers.
func (rc *realCluster) waitPeers(n int) {
	rc.t.Helper()
	waitUntil(rc.t, fmt.Sprintf("%d peers each", n), func() bool {
		for _, c := range rc.nodes {
			if len(c.Channel().Peers()) != n {
				return false
			}
		}
		return true
	})
}

// holding counts the nodes whose copy of session id has count want.
func holding(rc *realCluster, id string, want int64) int {
	n := 0
	for _, c := range rc.nodes {
		c.Manager().Range(func(s *Session) bool {
			if s.ID() == id {
				if v, _ := s.GetInt("count"); v == want {
					n++
				}
				return false
			}
			return true
		})
	}
	return n
}

// crash stops a node the way SIGKILL would: no flush, no leave.
func (rc *realCluster) crash(route string) {
	c := rc.nodes[route]
	delete(rc.nodes, route)
	c.once.Do(func() { c.closeParts(context.Background()) })
}

// commitCount creates a session on c with count set to v and commits it.
func commitCount(t *testing.T, c *Cluster, v int64) *Session {
	t.Helper()
	ctx := context.Background()
	s, err := c.Manager().Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Set("count", v)
	if err := c.Manager().Commit(ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClusterReplicatesOverRealChannels runs each replicating kind on 3
// real nodes: a session written on one is read on the others; a node
// crashed in ack mode loses no acknowledged write; a node restarted with
// the same route gets the sessions back (Delta by state transfer, Backup
// by fetching on demand).
func TestClusterReplicatesOverRealChannels(t *testing.T) {
	for _, kind := range []string{KindDelta, KindBackup} {
		t.Run(kind, func(t *testing.T) {
			leaktest.Check(t)
			rc := newRealCluster(t, kind, "n1", "n2", "n3")
			ctx := context.Background()
			a := rc.nodes["n1"].Manager()
			s, err := a.Create(ctx)
			if err != nil {
				t.Fatal(err)
			}
			id := s.ID()
			for i := 1; i <= 10; i++ {
				if err := s.Set("count", i); err != nil {
					t.Fatal(err)
				}
				if err := s.Set("cart", cart{Items: map[string]int{"book": i}, Note: "gift"}); err != nil {
					t.Fatal(err)
				}
				if err := a.Commit(ctx, s); err != nil {
					t.Fatalf("commit %d: %v", i, err)
				}
			}
			// Acknowledged writes are on every other node (Delta) or on the
			// session's backup (Backup). Peek, without a request, which
			// would make the reading node the session's primary.
			// Ack means received, not yet applied: wait for the apply.
			want := map[string]int{KindDelta: 3, KindBackup: 2}[kind]
			waitUntil(t, fmt.Sprintf("%d nodes to hold count 10", want), func() bool { return holding(rc, id, 10) == want })
			// More sessions, so that a state transfer takes many chunks.
			for i := range 60 {
				m := rc.nodes[fmt.Sprintf("n%d", 2+i%2)].Manager()
				s, _ := m.Create(ctx)
				_ = s.Set("pad", strings.Repeat("x", 200))
				if err := m.Commit(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			// Crash n1: a request on n2 finds the session (Backup: fetches
			// it from its backup and becomes its primary) and its write
			// reaches the replicas.
			rc.crash("n1")
			b := rc.nodes["n2"].Manager()
			s2, err := b.Find(ctx, id)
			if err != nil {
				t.Fatalf("after the crash: %v", err)
			}
			n, _ := s2.GetInt("count")
			if n != 10 {
				t.Fatalf("after the crash: count %d, want 10", n)
			}
			if err := s2.Set("count", n+1); err != nil {
				t.Fatal(err)
			}
			// The ack of a peer that just died fails fast; the survivors
			// have the change, or get it once n1 is declared failed and
			// the replicas are repaired.
			_ = b.Commit(ctx, s2)
			waitUntil(t, "the survivors to hold 11", func() bool { return holding(rc, id, 11) == 2 })
			// n1 comes back with the same route and has the session again,
			// once the others know its new address.
			n1 := rc.start("n1")
			rc.waitReady("n1")
			rc.waitPeers(2)
			addr := n1.Channel().Addr().String()
			waitUntil(t, "the peers to know n1's new address", func() bool {
				for _, r := range []string{"n2", "n3"} {
					known := false
					for _, p := range rc.nodes[r].Channel().Stats().Peers {
						known = known || p.Route == "n1" && p.Addr == addr && p.Connected
					}
					if !known {
						return false
					}
				}
				return true
			})
			got, err := rc.nodes["n1"].Manager().Find(ctx, id)
			if err != nil {
				t.Fatalf("restarted n1: %v", err)
			}
			if v, _ := got.GetInt("count"); v != 11 {
				t.Errorf("restarted n1: count = %d, want 11", v)
			}
			if kind == KindDelta {
				if st := rc.nodes["n1"].Stats(); st.Transfers != 1 {
					t.Errorf("restarted n1 made %d state transfers, want 1", st.Transfers)
				}
				if got, want := rc.nodes["n1"].Manager().Count(), rc.nodes["n2"].Manager().Count(); got != want {
					t.Errorf("restarted n1 holds %d sessions, n2 %d", got, want)
				}
			}
		})
	}
}

// TestClusterGracefulCloseIsALeave checks that a closed node is seen as
// having left, and that what it committed just before reached its peers.
func TestClusterGracefulCloseIsALeave(t *testing.T) {
	leaktest.Check(t)
	rc := newRealCluster(t, KindDelta, "n1", "n2")
	ctx := context.Background()
	a := rc.nodes["n1"].Manager()
	rc.nodes["n1"].cfg.Manager.Mode = Async
	s, _ := a.Create(ctx)
	_ = s.Set("k", "v")
	if err := a.Commit(ctx, s); err != nil {
		t.Fatal(err)
	}
	c := rc.nodes["n1"]
	delete(rc.nodes, "n1")
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Ready() {
		t.Error("a closed node reports ready")
	}
	n2 := rc.nodes["n2"]
	waitUntil(t, "n2 to see n1 leave", func() bool {
		for _, m := range n2.Membership().Members() {
			if m.Name == "n1" {
				return m.State == membership.StateLeft
			}
		}
		return false
	})
	got, err := n2.Manager().Find(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := got.GetString("k"); v != "v" {
		t.Errorf("k = %q", v)
	}
	if _, err := StartCluster(ClusterConfig{Kind: "nosuch", Membership: membership.DefaultLocalConfig()}); !errors.As(err, new(*ConfigError)) {
		t.Errorf("unknown kind: %v", err)
	}
}

// TestCloseKeepsTheLeaveItsShare stops a node whose flush cannot finish,
// because a peer has stopped reading: the flush must not take the whole
// shutdown budget, or the leave is never sent and the peers report the
// node failed instead of left.
func TestCloseKeepsTheLeaveItsShare(t *testing.T) {
	leaktest.Check(t)
	rc := newRealCluster(t, KindDelta, "n1", "n2", "n3")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the cluster's cleanup closes n2
	rc.nodes["n2"].Manager().AddListener(Listener{AttributeAdded: func(_ *Session, name string, _ any) {
		if name == "hang" {
			<-release // n2's receiver stops reading from n1
		}
	}})
	ctx := context.Background()
	n1 := rc.nodes["n1"]
	n1.cfg.Replication.SendTimeout = time.Hour // only ctx bounds the flush
	s, _ := n1.Manager().Create(ctx)
	_ = s.Set("hang", "x")
	if err := n1.Manager().Commit(ctx, s); err != nil { // acknowledged on read, before n2 handles it
		t.Fatal(err)
	}
	delete(rc.nodes, "n1")
	cctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	if err := n1.Close(cctx); err != nil {
		t.Fatal(err)
	}
	n3 := rc.nodes["n3"]
	var state membership.State
	waitUntil(t, "n3 to see n1 go", func() bool {
		for _, m := range n3.Membership().Members() {
			if m.Name == "n1" {
				state = m.State
			}
		}
		return state != membership.StateAlive
	})
	if state != membership.StateLeft {
		t.Fatalf("n3 reports n1 %v, want left: the flush left the leave no time", state)
	}
}

// TestRefusedNodeIsNotReady starts a node whose seed runs under another
// cluster key, or in another domain: it must not get ready alone, which
// would give the users sent to it new, empty sessions in place of theirs.
func TestRefusedNodeIsNotReady(t *testing.T) {
	leaktest.Check(t)
	rc := newRealCluster(t, KindDelta, "n1")
	for _, tc := range []struct {
		name string
		set  func(*membership.Config)
	}{
		{"key", func(c *membership.Config) { c.Key = membership.Key("0123456789abcdef") }}, // n1 has none
		{"domain", func(c *membership.Config) { c.Domain = "other" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testlog.Buffer
			cfg := DefaultClusterConfig()
			cfg.Membership = membership.DefaultLocalConfig()
			cfg.Membership.Route = "n2"
			cfg.Membership.Join = []string{rc.nodes["n1"].Membership().Addr().String()}
			cfg.Membership.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			tc.set(&cfg.Membership)
			cfg.Replication.Addr = "127.0.0.1:0"
			cfg.JoinWait = 100 * time.Millisecond
			n2, err := StartCluster(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer n2.Close(context.Background())
			waitUntil(t, "n2 to report its seed refusing it", func() bool {
				return strings.Contains(logs.String(), "not ready: a seed answers but refuses this node")
			})
			if n2.Ready() {
				t.Fatal("a node whose seed refuses it is ready alone")
			}
			if st := n2.Membership().Stats(); len(st.Seeds) != 1 || !st.Seeds[0].Refused {
				t.Errorf("seed status %+v, want the seed refused", st.Seeds)
			}
		})
	}
}

// TestStreamToAnUnknownPeer opens a stream to a peer the channel does not
// know (it left meanwhile): the error comes back and no nil stream hides in
// a non-nil interface.
func TestStreamToAnUnknownPeer(t *testing.T) {
	leaktest.Check(t)
	rc := replication.DefaultConfig()
	rc.Route, rc.Addr = "n1", "127.0.0.1:0"
	ch, err := replication.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	for _, tr := range []streamOpener{channelTransport{ch}, countingTransport{Transport: channelTransport{ch}, c: &deltaCounters{}}} {
		if s, err := tr.openStream("gone"); err == nil || s != nil {
			t.Errorf("openStream to an unknown peer = %v, %v; want nil and an error", s, err)
		}
	}
}

// TestClusterSurvivesHugeClaims: a peer's messages whose array headers
// claim billions of elements (which msgpack alone would allocate, killing
// the node out of memory) arrive over a real channel, are refused and
// counted as malformed, and the node goes on replicating from that peer.
// So does a message of a kind this build does not know, as a newer
// build's would be.
func TestClusterSurvivesHugeClaims(t *testing.T) {
	leaktest.Check(t)
	rc := newRealCluster(t, KindDelta, "n1", "n2")
	ctx := context.Background()
	n1, n2 := rc.nodes["n1"], rc.nodes["n2"]
	for _, k := range []kind{kindTouch, kindSyncChunk, kindHandoff, kindFull, kindChange, 200} {
		msg := []byte{byte(k), 0xdd, 0xff, 0xff, 0xff, 0xff}
		err := n2.Channel().Send(ctx, []string{"n1"}, MsgType, msg, replication.Sync)
		var re *replication.RemoteError
		if !errors.As(err, &re) || !strings.Contains(re.Msg, "malformed") {
			t.Fatalf("kind %d: Send = %v, want n1's malformed-message error", k, err)
		}
	}
	if got := n1.Stats().Malformed; got != 6 {
		t.Errorf("n1 counted %d malformed messages, want 6", got)
	}
	s := commitCount(t, n2, 7)
	waitUntil(t, "n1 to hold n2's session", func() bool { return holding(rc, s.ID(), 7) == 2 })
}

// TestConcurrentCommitsOfOneSessionArriveInOrder commits one session from
// many goroutines at once over real channels: the peer gets the changes
// in revision order, so it never sees a gap and never asks for a full
// copy, and ends with every value.
func TestConcurrentCommitsOfOneSessionArriveInOrder(t *testing.T) {
	for _, mode := range []SendMode{Async, Ack} {
		t.Run(mode.String(), func(t *testing.T) {
			leaktest.Check(t)
			rc := newRealCluster(t, KindDelta, "n1", "n2")
			a := rc.nodes["n1"].Manager()
			a.(*Delta).cfg.Mode = mode
			ctx := context.Background()
			s, err := a.Create(ctx)
			if err != nil {
				t.Fatal(err)
			}
			id := s.ID()
			const writers, commits = 8, 100
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for i := 1; i <= commits; i++ {
						if err := s.Set(fmt.Sprintf("w%d", w), i); err != nil {
							t.Error(err)
							return
						}
						if err := a.Commit(ctx, s); err != nil {
							t.Errorf("commit: %v", err)
							return
						}
					}
				})
			}
			wg.Wait()
			b := rc.nodes["n2"].Manager()
			waitUntil(t, "n2 to hold every writer's last value", func() bool {
				got := 0
				b.Range(func(p *Session) bool {
					if p.ID() == id {
						for w := range writers {
							if v, _ := p.GetInt(fmt.Sprintf("w%d", w)); v == commits {
								got++
							}
						}
						return false
					}
					return true
				})
				return got == writers
			})
			if st := rc.nodes["n2"].Stats(); st.Resyncs != 0 || st.Conflicts != 0 {
				t.Errorf("n2 counted %d resyncs and %d conflicts, want none", st.Resyncs, st.Conflicts)
			}
		})
	}
}

// TestClusterBoundsSessionsByFrameSize derives the session bound from the
// channel's frame size: a value that could never be replicated is refused
// at Set, rather than dropped by the channel at every commit.
func TestClusterBoundsSessionsByFrameSize(t *testing.T) {
	leaktest.Check(t)
	cfg := DefaultClusterConfig()
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route = "n1"
	cfg.Membership.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Replication.Addr = "127.0.0.1:0"
	cfg.Replication.MaxFrameSize = 256 << 10
	c, err := StartCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	s, err := c.Manager().Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set("big", strings.Repeat("x", 200<<10)); !errors.Is(err, ErrSessionTooLarge) {
		t.Errorf("Set of 200 KiB with 256 KiB frames = %v, want ErrSessionTooLarge", err)
	}
	if err := s.Set("fits", strings.Repeat("x", 150<<10)); err != nil {
		t.Errorf("Set of 150 KiB with 256 KiB frames = %v", err)
	}
}

// TestStateTransferOfLargeSessionsFitsFrames transfers sessions each
// within the bound derived from a small frame size, though two of them
// together are larger than a frame: each chunk must still fit in one, or
// the joining node never gets its sessions and never gets ready.
func TestStateTransferOfLargeSessionsFitsFrames(t *testing.T) {
	leaktest.Check(t)
	start := func(route string, join ...string) *Cluster {
		return startLocal(t, route, func(c *ClusterConfig) { c.Replication.MaxFrameSize = 256 << 10 }, join...)
	}
	n1 := start("n1")
	waitUntil(t, "n1 ready", n1.Ready)
	for range 2 {
		s, err := n1.Manager().Create(bg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Set("big", strings.Repeat("x", 150<<10)); err != nil {
			t.Fatal(err)
		}
		if err := n1.Manager().Commit(bg, s); err != nil {
			t.Fatal(err)
		}
	}
	n2 := start("n2", n1.Membership().Addr().String())
	waitUntil(t, "n2 ready with both sessions", func() bool { return n2.Ready() && n2.Manager().Count() == 2 })
}

// TestCatchUpWithManyInvalidationsFitsTheQueue catches a peer up after a
// busy minute of logouts: the invalidations sent again must not overflow
// its queue, which would mark it for a resync, and so another round.
func TestCatchUpWithManyInvalidationsFitsTheQueue(t *testing.T) {
	leaktest.Check(t)
	start := func(route string, join ...string) *Cluster {
		return startLocal(t, route, func(c *ClusterConfig) { c.Replication.QueueSize = 64 }, join...)
	}
	n1 := start("n1")
	waitUntil(t, "n1 ready", n1.Ready)
	n2 := start("n2", n1.Membership().Addr().String())
	waitUntil(t, "n2 ready and a peer of n1", func() bool { return n2.Ready() && len(n1.ch.Peers()) == 1 })
	for range 640 {
		s, err := n1.Manager().Create(bg)
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.Manager().Commit(bg, s); err != nil {
			t.Fatal(err)
		}
		if err := n1.Manager().Invalidate(bg, s.ID()); err != nil {
			t.Fatal(err)
		}
	}
	n1.repl.resync("n2")
	for _, p := range n1.ch.Stats().Peers {
		if p.QueueFull != 0 || p.NeedsResync {
			t.Errorf("catching n2 up: %d sends refused by a full queue, needs resync %v", p.QueueFull, p.NeedsResync)
		}
	}
}

// startLocal starts a Delta cluster node on loopback, edited by edit, and
// closes it when the test ends.
func startLocal(t *testing.T, route string, edit func(*ClusterConfig), join ...string) *Cluster {
	t.Helper()
	cfg := DefaultClusterConfig()
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route = route
	cfg.Membership.Join = join
	cfg.Membership.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", route)
	cfg.Replication.Addr = "127.0.0.1:0"
	cfg.JoinWait = 300 * time.Millisecond
	edit(&cfg)
	c, err := StartCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestTouchesOfManySessionsFitFrames reads more sessions between two
// sweeps than one frame of access times holds: the touches must go in
// several messages, each within a frame, or the channel refuses them,
// the peer never hears of the accesses and is resynchronised at every
// sweep instead.
func TestTouchesOfManySessionsFitFrames(t *testing.T) {
	leaktest.Check(t)
	const frame, sessions = 16 << 10, 1000 // about 400 touches to a frame
	// n2's clock is a minute ahead, so that its reads are later accesses
	// than n1's commits.
	ahead := func() time.Time { return time.Now().Add(time.Minute) }
	n1 := startLocal(t, "n1", func(c *ClusterConfig) { c.Replication.MaxFrameSize = frame })
	waitUntil(t, "n1 ready", n1.Ready)
	n2 := startLocal(t, "n2", func(c *ClusterConfig) {
		c.Replication.MaxFrameSize = frame
		c.Manager.Clock = ahead
	}, n1.Membership().Addr().String())
	waitUntil(t, "n2 ready and a peer of n1", func() bool { return n2.Ready() && len(n1.ch.Peers()) == 1 })
	var ids []string
	for range sessions {
		s, err := n1.Manager().Create(bg)
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.Manager().Commit(bg, s); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID())
	}
	waitUntil(t, "n2 to hold every session", func() bool { return n2.Manager().Count() == sessions })
	read := time.Now().Add(30 * time.Second)
	for _, id := range ids {
		s, err := n2.Manager().Find(bg, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := n2.Manager().Commit(bg, s); err != nil { // read only: a touch
			t.Fatal(err)
		}
	}
	resyncs := n2.Stats().Sent[kindSyncChunk.String()]
	n2.repl.flushTouches()
	accessed := func() int {
		n := 0
		for _, id := range ids {
			if s := n1.Lookup(id); s != nil && s.LastAccess().After(read) {
				n++
			}
		}
		return n
	}
	waitUntil(t, "n1 to hear of n2's reads, or n2 to resync n1", func() bool {
		return accessed() == sessions || n2.Stats().Sent[kindSyncChunk.String()] > resyncs
	})
	if n := accessed(); n != sessions {
		t.Errorf("n1 heard of %d of n2's %d reads", n, sessions)
	}
	if n := n2.Stats().Sent[kindSyncChunk.String()] - resyncs; n > 0 {
		t.Errorf("n2 resynchronised n1 (%d chunks) after sending its touches", n)
	}
}

// A Backup node that restarts faster than membership declares it failed,
// at its gossip address but another replication address, comes back empty
// while its peers' placement is unchanged: the primaries must send it
// again the copies it held, or a session left idle meanwhile lives on its
// primary alone and is lost with it. (At its old replication address, the
// broken connection's resync sends them.)
func TestBackupRestartedElsewhereGetsItsCopiesBack(t *testing.T) {
	leaktest.Check(t)
	edit := func(c *ClusterConfig) {
		c.Kind = KindBackup
		c.Membership.DropTime = time.Minute // the restart is seen first
	}
	ctx := context.Background()
	n1 := startLocal(t, "n1", func(c *ClusterConfig) {
		edit(c)
		// n1's changes are older than what a new member is caught up on.
		c.Manager.Clock = func() time.Time { return time.Now().Add(-time.Minute) }
	})
	waitUntil(t, "n1 ready", n1.Ready)
	old := startLocal(t, "n2", edit, n1.Membership().Addr().String())
	waitUntil(t, "n2 ready", old.Ready)
	waitUntil(t, "n1 to have n2 as a peer", func() bool { return len(n1.Channel().Peers()) == 1 })
	s, err := n1.Manager().Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	_ = s.Set("count", 7)
	if err := n1.Manager().Commit(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "n2 to hold the copy", func() bool { return old.Lookup(id) != nil })

	started := func() time.Time {
		for _, m := range n1.Membership().Members() {
			if m.Name == "n2" && m.State == membership.StateAlive {
				return m.Meta.Started
			}
		}
		return time.Time{}
	}
	before := started()
	gossip := old.Membership().Addr().String()
	old.once.Do(func() { old.closeParts(ctx) }) // a crash: no hand-off, no leave
	n2 := startLocal(t, "n2", func(c *ClusterConfig) {
		edit(c)
		c.Membership.BindAddr = gossip // Replication.Addr stays 127.0.0.1:0
	}, n1.Membership().Addr().String())
	waitUntil(t, "n1 to see n2's new incarnation", func() bool {
		s := started()
		return !s.IsZero() && !s.Equal(before)
	})
	deadline := time.Now().Add(5 * time.Second)
	for n2.Lookup(id) == nil {
		if time.Now().After(deadline) {
			t.Fatal("n2, restarted, never got back its copy of n1's idle session")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v, _ := n2.Lookup(id).GetInt("count"); v != 7 {
		t.Errorf("n2's copy: count = %d, want 7", v)
	}
}

// A node reports ready once every peer has connected to it, and a peer
// that has nothing to send connects all the same: a Backup node, which
// has no state transfer and so hears nothing from its peers at first,
// must not wait out ConnectWait.
func TestIdleConnectedPeersDoNotDelayReadiness(t *testing.T) {
	leaktest.Check(t)
	edit := func(c *ClusterConfig) {
		c.Kind = KindBackup
		c.ConnectWait = time.Minute
	}
	n1 := startLocal(t, "n1", edit)
	waitUntil(t, "n1 ready", n1.Ready)
	n2 := startLocal(t, "n2", edit, n1.Membership().Addr().String())
	waitUntil(t, "n2 to have n1 as a peer", func() bool { return len(n2.Channel().Peers()) == 1 })
	deadline := time.Now().Add(5 * time.Second)
	for !n2.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("n2 not ready 5s after it found n1 (senders %v): it waits for a connection that is up", n2.Channel().Senders())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// StartCluster's error names the membership setting that is wrong.
func TestStartClusterNamesTheBadDuration(t *testing.T) {
	for _, tc := range []struct {
		edit  func(*membership.Config)
		field string
	}{
		{func(c *membership.Config) { c.Frequency = 0 }, "Membership.Frequency"},
		{func(c *membership.Config) { c.DropTime = 0 }, "Membership.DropTime"},
		{func(c *membership.Config) { c.DropTime = -time.Second }, "Membership.DropTime"},
	} {
		cfg := DefaultClusterConfig()
		cfg.Membership = membership.DefaultLocalConfig()
		cfg.Membership.Route = "n1"
		tc.edit(&cfg.Membership)
		c, err := StartCluster(cfg)
		if c != nil {
			_ = c.Close(context.Background())
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("StartCluster = %v, want a ConfigError for %s", err, tc.field)
		}
	}
}

// A channel listening on all interfaces is advertised at the address the
// node's gossip is advertised at, with the channel's port: peers on other
// hosts cannot dial 0.0.0.0 or ::, which is this host to each of them.
func TestUnspecifiedReplicationAddrIsAdvertisedAtTheGossipIP(t *testing.T) {
	leaktest.Check(t)
	all := func(c *ClusterConfig) { c.Replication.Addr = ":0" }
	n1 := startLocal(t, "n1", all)
	n2 := startLocal(t, "n2", all, n1.Membership().Addr().String())
	_, port, _ := net.SplitHostPort(n2.Channel().Addr().String())
	want := net.JoinHostPort("127.0.0.1", port)
	waitUntil(t, "n1 to know n2 at "+want, func() bool {
		for _, m := range n1.Membership().Members() {
			if m.Name == "n2" {
				return m.Meta.ReplicationAddr == want
			}
		}
		return false
	})
	waitUntil(t, "n1 to have n2 as a peer at "+want, func() bool {
		for _, p := range n1.Channel().Stats().Peers {
			if p.Route == "n2" {
				return p.Addr == want && p.Connected
			}
		}
		return false
	})
	if got := n2.Membership().Local().Meta.ReplicationAddr; got != want {
		t.Errorf("n2 advertises %q, want %q", got, want)
	}
}

// scanCounts counts c's sessions by visiting each, as SessionCounts once
// did: the reference for the counts it keeps.
func scanCounts(c *Cluster) [3]int {
	var n [3]int
	self := c.cfg.Membership.Route
	c.mgr.Range(func(s *Session) bool {
		n[0]++
		if o := s.ownerRoute(); o == "" || o == self {
			n[1]++
		} else {
			n[2]++
		}
		return true
	})
	return n
}

// waitCounts waits until every node's SessionCounts agree with a scan of
// its sessions, and returns them by node.
func waitCounts(t *testing.T, rc *realCluster, when string) map[string][3]int {
	t.Helper()
	got := map[string][3]int{}
	waitUntil(t, "session counts to match a scan "+when, func() bool {
		for r, c := range rc.nodes {
			total, primary, backup := c.SessionCounts()
			got[r] = [3]int{total, primary, backup}
			if want := scanCounts(c); got[r] != want {
				t.Logf("%s %s: SessionCounts %v, scan %v", when, r, got[r], want)
				return false
			}
		}
		return true
	})
	return got
}

// TestSessionCountsFollowOwnership: the counts SessionCounts keeps as
// sessions are created, change hands, are renamed, invalidated and taken
// over after a crash always end equal to a scan of the sessions.
func TestSessionCountsFollowOwnership(t *testing.T) {
	for _, kind := range []string{KindDelta, KindBackup} {
		t.Run(kind, func(t *testing.T) {
			leaktest.Check(t)
			rc := newRealCluster(t, kind, "n1", "n2", "n3")
			ctx := context.Background()
			n1, n2, n3 := rc.nodes["n1"], rc.nodes["n2"], rc.nodes["n3"]
			var ids []string
			for range 6 {
				ids = append(ids, commitCount(t, n1, 1).ID())
			}
			holders := 3 // Delta: every node
			if kind == KindBackup {
				holders = 2 // the primary and one backup
			}
			waitUntil(t, "every session's copies to arrive", func() bool {
				for _, id := range ids {
					if holding(rc, id, 1) != holders {
						return false
					}
				}
				return true
			})
			got := waitCounts(t, rc, "after the creates")
			if got["n1"] != [3]int{6, 6, 0} {
				t.Errorf("n1 after creating 6 sessions: %v, want 6 total, 6 primary", got["n1"])
			}
			if b := got["n2"][2] + got["n3"][2]; kind == KindDelta && b != 12 || kind == KindBackup && b != 6 {
				t.Errorf("backups held by n2 and n3: %d (%v, %v)", b, got["n2"], got["n3"])
			}

			// n2 serves two of them (a failover's requests), n3 renews the
			// id of a third, n1 invalidates a fourth.
			for _, id := range ids[:2] {
				s, err := n2.Manager().Find(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Set("count", int64(2))
				if err := n2.Manager().Commit(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			s, err := n3.Manager().Find(ctx, ids[2])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := n3.Manager().ChangeID(ctx, s, ""); err != nil {
				t.Fatal(err)
			}
			if err := n3.Manager().Commit(ctx, s); err != nil {
				t.Fatal(err)
			}
			if err := n1.Manager().Invalidate(ctx, ids[3]); err != nil {
				t.Fatal(err)
			}
			got = waitCounts(t, rc, "after the moves")
			if got["n2"][1] != 2 {
				t.Errorf("n2 primary of %d sessions after serving 2: %v", got["n2"][1], got["n2"])
			}

			// n1 dies: with Backup its primaries are claimed by survivors.
			rc.crash("n1")
			waitCounts(t, rc, "after n1's crash")
		})
	}
}

// TestHandOffSkipsAFailedPeer stops a Backup node gracefully just after
// another node crashed: the hand-off of its primaries does not wait for
// the crashed node, whose share goes to the node left, which ends the
// primary of every session.
func TestHandOffSkipsAFailedPeer(t *testing.T) {
	leaktest.Check(t)
	rc := newRealCluster(t, KindBackup, "n1", "n2", "n3")
	ctx := context.Background()
	n2, n3 := rc.nodes["n2"], rc.nodes["n3"]
	const sessions = 20
	for range sessions {
		commitCount(t, n3, 1)
	}
	rc.crash("n1")
	delete(rc.nodes, "n3")
	closed := make(chan error, 1)
	go func() { closed <- n3.Close(ctx) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close = %v", err)
		}
	case <-time.After(n3.repl.cfg.SyncTimeout / 2): // a hang guard
		t.Fatalf("Close still handing off after %v: waiting for the crashed node", n3.repl.cfg.SyncTimeout/2)
	}
	waitUntil(t, "n2 to be the primary of every session", func() bool {
		total, primary, _ := n2.SessionCounts()
		return total == sessions && primary == sessions
	})
}
