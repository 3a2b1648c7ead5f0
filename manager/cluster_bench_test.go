package manager

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cohort-cluster/cohort/membership"
)

// The benchmarks in this file run real clusters: real membership and real
// replication channels on 127.0.0.1, as cluster_test.go's realCluster
// does, but for a *testing.B and with every log discarded.

// benchNodes is a cluster of real nodes started by a benchmark. Node i
// has route "n<i+1>"; a crashed node's slot is nil.
type benchNodes struct {
	b     *testing.B
	kind  string
	tweak func(*ClusterConfig) // adjusts every node's config, or nil
	nodes []*Cluster
}

// benchQuiet is a logger that discards everything.
func benchQuiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// benchNoLeaks fails b if goroutines started during it outlive it. Call it
// first: cleanups run last-in first-out, so the check runs after every
// cluster's cleanup.
func benchNoLeaks(b *testing.B) {
	opt := goleak.IgnoreCurrent()
	b.Cleanup(func() { goleak.VerifyNone(b, opt) })
}

// benchStartNodes starts n nodes of kind, each joining those started
// before it, and waits until every node is ready and has n-1 peers. The
// nodes are closed when b ends if the benchmark has not closed them.
func benchStartNodes(b *testing.B, kind string, n int, tweak func(*ClusterConfig)) *benchNodes {
	b.Helper()
	bn := &benchNodes{b: b, kind: kind, tweak: tweak}
	b.Cleanup(bn.close)
	for range n {
		bn.start()
	}
	for _, c := range bn.nodes {
		benchWaitUntil(b, c.cfg.Membership.Route+" ready", 30*time.Second, c.Ready)
	}
	bn.waitPeers(n - 1)
	return bn
}

// start starts one more node, which joins every live node, and returns at
// once (it is not ready yet).
func (bn *benchNodes) start() *Cluster {
	bn.b.Helper()
	route := fmt.Sprintf("n%d", len(bn.nodes)+1)
	cfg := DefaultClusterConfig()
	cfg.Kind = bn.kind
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route = route
	cfg.Membership.Logger = benchQuiet()
	for _, c := range bn.live() {
		cfg.Membership.Join = append(cfg.Membership.Join, c.Membership().Addr().String())
	}
	cfg.Replication.Addr = "127.0.0.1:0"
	cfg.Manager.SweepInterval = time.Hour
	// The first node waits briefly for peers that do not exist; a joining
	// node waits until it finds its seeds, which it does at once, so that
	// it never concludes it is alone.
	cfg.JoinWait = 300 * time.Millisecond
	if len(cfg.Membership.Join) > 0 {
		cfg.JoinWait = 10 * time.Second
	}
	if bn.tweak != nil {
		bn.tweak(&cfg)
	}
	c, err := StartCluster(cfg)
	if err != nil {
		bn.b.Fatal(err)
	}
	bn.nodes = append(bn.nodes, c)
	return c
}

// live returns the nodes not crashed or closed.
func (bn *benchNodes) live() []*Cluster {
	var out []*Cluster
	for _, c := range bn.nodes {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// waitPeers waits until every live node's channel has n peers.
func (bn *benchNodes) waitPeers(n int) {
	bn.b.Helper()
	benchWaitUntil(bn.b, fmt.Sprintf("%d peers each", n), 30*time.Second, func() bool { return bn.peersEach(n) })
}

func (bn *benchNodes) peersEach(n int) bool {
	for _, c := range bn.live() {
		if len(c.Channel().Peers()) != n {
			return false
		}
	}
	return true
}

// crash stops node i the way SIGKILL would: no flush, no leave.
func (bn *benchNodes) crash(i int) {
	c := bn.nodes[i]
	bn.nodes[i] = nil
	c.once.Do(func() { c.closeParts(context.Background()) })
}

// close shuts every live node down gracefully, all at once. It is
// idempotent.
func (bn *benchNodes) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range bn.nodes {
		if c == nil {
			continue
		}
		bn.nodes[i] = nil
		wg.Go(func() { _ = c.Close(ctx) })
	}
	wg.Wait()
}

// settled reports whether no Backup node has a repair running or
// sessions waiting for a new backup.
func (bn *benchNodes) settled() bool {
	for _, c := range bn.live() {
		if c.repl.UnderReplicated() != 0 || c.repl.backup != nil && c.repl.backup.repairing.Load() {
			return false
		}
	}
	return true
}

// held returns the number of sessions each live node holds, and their sum.
func (bn *benchNodes) held() (per []int, total int) {
	for _, c := range bn.live() {
		n := c.Manager().Count()
		per = append(per, n)
		total += n
	}
	return per, total
}

// copies counts, over the live nodes' managers, how many nodes hold each
// session, and returns how many sessions are held by k nodes, for each k,
// and how many distinct sessions there are.
func (bn *benchNodes) copies() (byCopies map[int]int, distinct int) {
	count := make(map[string]int)
	for _, c := range bn.live() {
		c.Manager().Range(func(s *Session) bool {
			count[s.ID()]++
			return true
		})
	}
	byCopies = make(map[int]int)
	for _, k := range count {
		byCopies[k]++
	}
	return byCopies, len(count)
}

// benchWaitUntil polls cond every 5ms until it holds, failing b after
// timeout.
func benchWaitUntil(b *testing.B, what string, timeout time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchCreate creates a 1 KB session (sessionKB) on m and commits it.
func benchCreate(ctx context.Context, m Manager) (*Session, error) {
	s, err := m.Create(ctx)
	if err != nil {
		return nil, err
	}
	sessionKB(s)
	return s, m.Commit(ctx, s)
}

// benchCreateMany creates n 1 KB sessions spread evenly over nodes (node
// i of k creates n/k of them, round robin), from perNode goroutines per
// node, and returns the first error.
func benchCreateMany(nodes []*Cluster, n, perNode int) error {
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	ctx := context.Background()
	workers := len(nodes) * perNode
	for w := range workers {
		m := nodes[w%len(nodes)].Manager()
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Go(func() {
			for range share {
				if _, err := benchCreate(ctx, m); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// benchEncodedSize is the encoded size of a sessionKB session.
func benchEncodedSize(b *testing.B) int {
	cfg := DefaultConfig()
	cfg.Route, cfg.Logger = "n1", benchQuiet()
	st := newStore(cfg.host(), 0)
	s := st.newSession("n1", time.Hour)
	sessionKB(s)
	s.commit()
	raw, err := EncodeFull(s.full())
	if err != nil {
		b.Fatal(err)
	}
	return len(raw)
}

// benchCommitLoop changes one attribute of s, a 1 KB session, and commits
// it on m, once per iteration, and returns the ns per iteration.
func benchCommitLoop(b *testing.B, m Manager, s *Session) float64 {
	b.Helper()
	ctx := context.Background()
	// Boxed once, so that Set itself is measured, not the boxing.
	vals := [2]any{strings.Repeat("y", 120), strings.Repeat("z", 120)}
	i := 0
	for b.Loop() {
		if err := s.Set("attra", vals[i&1]); err != nil {
			b.Fatal(err)
		}
		if err := m.Commit(ctx, s); err != nil {
			b.Fatal(err)
		}
		i++
	}
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}

// BenchmarkCommit measures Commit of a 1-attribute change of a 1 KB
// session: on a Standard manager (no replication), and on node 1 of a
// 3-node Delta cluster in ack mode (the change goes to 2 peers, and Commit
// waits until both have read it). x-unreplicated is the Delta cost over
// the Standard cost measured just before.
func BenchmarkCommit(b *testing.B) {
	benchNoLeaks(b)
	var unreplicated float64
	b.Run("unreplicated", func(b *testing.B) {
		m := benchStandard(b)
		s, err := benchCreate(context.Background(), m)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		unreplicated = benchCommitLoop(b, m, s)
	})
	b.Run("delta-2-peers-ack", func(b *testing.B) {
		bn := benchStartNodes(b, KindDelta, 3, func(c *ClusterConfig) { c.Manager.Mode = Ack })
		defer bn.close()
		m := bn.nodes[0].Manager()
		s, err := benchCreate(context.Background(), m)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		ns := benchCommitLoop(b, m, s)
		if unreplicated > 0 {
			b.ReportMetric(ns/unreplicated, "x-unreplicated")
		}
	})
	// The same commits from 96 goroutines at once, each with its own
	// session, as a loaded server makes them: cpu-us/op is the CPU the
	// process spends per commit, both peers' receiving included, which
	// is what replication adds to a write request on a busy node.
	b.Run("unreplicated-parallel", func(b *testing.B) {
		benchCommitParallel(b, benchStandard(b))
	})
	b.Run("delta-2-peers-ack-parallel", func(b *testing.B) {
		bn := benchStartNodes(b, KindDelta, 3, func(c *ClusterConfig) { c.Manager.Mode = Ack })
		defer bn.close()
		benchCommitParallel(b, bn.nodes[0].Manager())
	})
}

// benchStandard starts a Standard manager that lives as long as b.
func benchStandard(b *testing.B) *Standard {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Route, cfg.Logger, cfg.SweepInterval = "n1", benchQuiet(), time.Hour
	m, err := NewStandard(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

// benchCommitParallel commits one changed attribute of a 1 KB session per
// iteration from 96 goroutines, each with its own session, and reports the
// process's CPU time per commit.
func benchCommitParallel(b *testing.B, m Manager) {
	b.Helper()
	ctx := context.Background()
	vals := [2]any{strings.Repeat("y", 120), strings.Repeat("z", 120)}
	b.SetParallelism((96 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	// One commit first, so that connecting to the peers is not measured.
	if _, err := benchCreate(ctx, m); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	before := benchCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		s, err := benchCreate(ctx, m)
		if err != nil {
			b.Error(err)
			return
		}
		for i := 0; pb.Next(); i++ {
			if err := s.Set("attra", vals[i&1]); err != nil {
				b.Error(err)
				return
			}
			if err := m.Commit(ctx, s); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer() // closing the cluster afterwards is not measured
	b.ReportMetric(float64((benchCPU(b)-before).Microseconds())/float64(b.N), "cpu-us/op")
}

// benchCPU is the user and system CPU time the process has used.
func benchCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStateTransferReal measures a Delta state transfer of 100k
// sessions of 1 KB over the real channel: from a joining node's
// StartCluster until it is Ready, having fetched every session from node
// 1. transfer-s includes finding the cluster through membership; sync-s
// is the transfer alone, as the node's Stats report it. Goal: at most 2 s.
func BenchmarkStateTransferReal(b *testing.B) {
	const n = 100_000
	benchNoLeaks(b)
	for b.Loop() {
		b.StopTimer()
		bn := benchStartNodes(b, KindDelta, 1, nil)
		if err := benchCreateMany(bn.nodes[:1], n, 1); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		d := bn.start()
		benchWaitUntil(b, "the joining node ready", 60*time.Second, d.Ready)
		elapsed := time.Since(start)
		b.StopTimer()
		if got := d.Manager().Count(); got != n {
			b.Errorf("BUG: the joining node holds %d sessions after its state transfer, want %d", got, n)
		}
		b.ReportMetric(elapsed.Seconds(), "transfer-s")
		b.ReportMetric(n/elapsed.Seconds(), "sessions/s")
		b.ReportMetric(d.Stats().LastTransfer.Seconds(), "sync-s")
		bn.close()
		b.StartTimer()
	}
}

// BenchmarkScaling measures, for Delta and Backup (1 backup) clusters of
// 3, 5 and 9 nodes in ack mode holding 2000 sessions of 1 KB created round
// robin over the nodes, the cost of a write on node 1 (one attribute set
// and committed, on a session node 1 is the primary of) and the sessions
// each node holds. x-3-nodes is the write cost over the same kind's 3-node
// cost; held-fraction is the mean sessions held per node over the total
// (Delta: 1; Backup: (1+backups)/N). est-KB/node is sessions/node times
// the encoded session size. Goals: Backup 9-node cost at most 1.2x its
// 3-node cost; Backup held-fraction about 2/N.
func BenchmarkScaling(b *testing.B) {
	const total = 2000
	benchNoLeaks(b)
	encoded := benchEncodedSize(b)
	for _, kind := range []string{KindDelta, KindBackup} {
		var base float64 // the 3-node ns/op
		for _, nodes := range []int{3, 5, 9} {
			b.Run(fmt.Sprintf("kind=%s/nodes=%d", kind, nodes), func(b *testing.B) {
				bn := benchStartNodes(b, kind, nodes, func(c *ClusterConfig) {
					c.Manager.Mode = Ack
					c.Manager.Backups = 1
				})
				defer bn.close()
				ctx := context.Background()
				var mine *Session // a session node 1 is the primary of
				for i := range total {
					s, err := benchCreate(ctx, bn.nodes[i%nodes].Manager())
					if err != nil {
						b.Fatal(err)
					}
					if i == 0 {
						mine = s
					}
				}
				copies := nodes
				if kind == KindBackup {
					copies = 2
				}
				benchWaitUntil(b, "every session replicated", 30*time.Second, func() bool {
					_, sum := bn.held()
					return sum == total*copies && bn.settled()
				})
				per, sum := bn.held()
				b.ReportAllocs()
				ns := benchCommitLoop(b, bn.nodes[0].Manager(), mine)
				if nodes == 3 {
					base = ns
				}
				if base > 0 {
					b.ReportMetric(ns/base, "x-3-nodes")
				}
				mean := float64(sum) / float64(len(per))
				b.ReportMetric(mean, "sessions/node")
				b.ReportMetric(mean/total, "held-fraction")
				b.ReportMetric(mean*float64(encoded)/1024, "est-KB/node")
			})
		}
	}
}

// BenchmarkRestoreReplication measures how fast a 5-node Backup cluster
// holding 100k sessions of 1 KB, each on exactly 2 nodes, restores that
// after one node crashes: from the crash until every session is again on
// exactly 2 surviving nodes and no node has a session under-replicated.
// It includes failure detection (detect-s: until every survivor dropped
// the crashed peer, about DropTime) and the repair (repair-s), bounded by
// RepairRate (20000 sessions/s per node).
func BenchmarkRestoreReplication(b *testing.B) {
	const (
		n     = 100_000
		nodes = 5
	)
	benchNoLeaks(b)
	for b.Loop() {
		b.StopTimer()
		bn := benchStartNodes(b, KindBackup, nodes, func(c *ClusterConfig) { c.Manager.Backups = 1 })
		if err := benchCreateMany(bn.nodes, n, 3); err != nil {
			b.Fatal(err)
		}
		benchWaitUntil(b, "every session on 2 nodes", 60*time.Second, func() bool {
			if _, sum := bn.held(); sum != 2*n || !bn.settled() {
				return false
			}
			byCopies, distinct := bn.copies()
			return distinct == n && byCopies[2] == n
		})
		victim := 2 // n3, not node 1, the others' first seed
		b.StartTimer()
		start := time.Now()
		bn.crash(victim)
		var detect time.Duration
		deadline := start.Add(120 * time.Second)
		for {
			if detect == 0 && bn.peersEach(nodes-2) {
				detect = time.Since(start)
			}
			if detect != 0 && bn.settled() {
				byCopies, distinct := bn.copies()
				if byCopies[2] == distinct && bn.settled() {
					break
				}
			}
			if time.Now().After(deadline) {
				per, sum := bn.held()
				byCopies, distinct := bn.copies()
				b.Fatalf("BUG: replication not restored %v after the crash: %d distinct sessions (of %d), by number of copies %v, held per node %v (sum %d), detected after %v",
					time.Since(start), distinct, n, byCopies, per, sum, detect)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		_, distinct := bn.copies()
		if distinct != n {
			b.Errorf("BUG: %d sessions lost in the crash of one node of %d with 1 backup", n-distinct, nodes)
		}
		b.ReportMetric(elapsed.Seconds(), "restore-s")
		b.ReportMetric(detect.Seconds(), "detect-s")
		b.ReportMetric((elapsed - detect).Seconds(), "repair-s")
		b.ReportMetric(float64(distinct), "sessions")
		bn.close()
		b.StartTimer()
	}
}

// BenchmarkSessionCounts measures SessionCounts, which /metrics,
// /cluster/status and the dashboard call, on a node holding 100k
// sessions, against a bare Range over them (the x-range metric): it keeps
// its counts, so it costs far less than visiting the sessions.
func BenchmarkSessionCounts(b *testing.B) {
	const n = 100_000
	benchNoLeaks(b)
	bn := benchStartNodes(b, KindDelta, 1, nil)
	defer bn.close()
	c := bn.nodes[0]
	if err := benchCreateMany(bn.nodes, n, 2); err != nil {
		b.Fatal(err)
	}
	var bare float64 // ns per bare Range
	b.Run("range", func(b *testing.B) {
		for b.Loop() {
			k := 0
			c.Manager().Range(func(*Session) bool { k++; return true })
			if k != n {
				b.Fatalf("Range saw %d sessions, want %d", k, n)
			}
		}
		bare = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(bare/1e6, "ms/scan")
	})
	b.Run("counts", func(b *testing.B) {
		for b.Loop() {
			if total, primary, _ := c.SessionCounts(); total != n || primary != n {
				b.Fatalf("SessionCounts = %d total, %d primary; want %d", total, primary, n)
			}
		}
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if bare > 0 {
			b.ReportMetric(ns/bare, "x-range")
		}
	})
}
