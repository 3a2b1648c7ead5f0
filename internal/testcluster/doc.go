// Package testcluster starts in-process Cohort clusters on 127.0.0.1 for
// the tests and benchmarks of the packages above the manager: real
// membership, real replication channels, every node ready.
package testcluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
)

// Start starts a node per route, each seeded with the ones before it, with
// fast local timings and logs to log; edit, if not nil, adjusts each
// node's configuration (the kind, the send mode). It waits until every
// node is ready and has the others as channel peers. The nodes are closed
// through cleanup (tb.Cleanup when nil).
func Start(tb testing.TB, cleanup func(func()), log *slog.Logger, edit func(*manager.ClusterConfig), routes ...string) []*manager.Cluster {
	tb.Helper()
	if cleanup == nil {
		cleanup = tb.Cleanup
	}
	var nodes []*manager.Cluster
	cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, c := range nodes {
			_ = c.Close(ctx)
		}
	})
	for _, r := range routes {
		cfg := manager.DefaultClusterConfig()
		cfg.Membership = membership.DefaultLocalConfig()
		cfg.Membership.Route = r
		cfg.Membership.Logger = log.With("node", r)
		for _, c := range nodes {
			cfg.Membership.Join = append(cfg.Membership.Join, c.Membership().Addr().String())
		}
		cfg.Replication.Addr = "127.0.0.1:0"
		cfg.JoinWait = 300 * time.Millisecond
		if edit != nil {
			edit(&cfg)
		}
		c, err := manager.StartCluster(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		nodes = append(nodes, c)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, c := range nodes {
			if !c.Ready() || len(c.Channel().Peers()) != len(nodes)-1 {
				ok = false
			}
		}
		if ok {
			return nodes
		}
		if time.Now().After(deadline) {
			tb.Fatalf("cluster %v not ready with %d peers each after 20s", routes, len(nodes)-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
