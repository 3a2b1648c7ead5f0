package compare

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/sessions"
)

// hashKey signs the cookie and redis stores' cookies (32 bytes, for HMAC-SHA256).
var hashKey = []byte("compare-benchmark-hash-key-32-by")

// openCookie returns gorilla's CookieStore, as its README sets it up: the
// session values signed in the cookie itself.
func openCookie(sb, p *testing.B, log *slog.Logger) sessions.Store {
	return sessions.NewCookieStore(hashKey)
}

// openStandard returns web.NewStore over a Standard manager: one node, no
// replication.
func openStandard(sb, p *testing.B, log *slog.Logger) sessions.Store {
	sb.Helper()
	c := manager.DefaultConfig()
	c.Route, c.Logger = "node1", log
	m, err := manager.NewStandard(c)
	if err != nil {
		sb.Fatal(err)
	}
	p.Cleanup(func() { _ = m.Close(context.Background()) })
	return cohortStore(sb, m, "node1", log)
}

// openCluster returns an opener of web.NewStore over node 1 of a 3-node
// cluster of kind in ack mode.
func openCluster(kind string) opener {
	return func(sb, p *testing.B, log *slog.Logger) sessions.Store {
		sb.Helper()
		nodes := startCluster(sb, p.Cleanup, log, kind, "n1", "n2", "n3")
		return cohortStore(sb, nodes[0].Manager(), "n1", log)
	}
}

func cohortStore(b *testing.B, m manager.Manager, route string, log *slog.Logger) sessions.Store {
	b.Helper()
	c := web.DefaultConfig()
	c.Route, c.Logger = route, log
	st, err := web.NewStore(m, c)
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// startCluster starts a cluster of kind (one backup per session for
// Backup) in ack mode on 127.0.0.1, with real membership and replication
// channels, and waits until every node is ready and sees the others as
// channel peers.
func startCluster(b *testing.B, cleanup func(func()), log *slog.Logger, kind string, routes ...string) []*manager.Cluster {
	b.Helper()
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
		cfg.Kind = kind
		cfg.Manager.Mode = manager.Ack
		cfg.Manager.Backups = 1
		cfg.Membership = membership.DefaultLocalConfig()
		cfg.Membership.Route = r
		cfg.Membership.Logger = log
		for _, c := range nodes {
			cfg.Membership.Join = append(cfg.Membership.Join, c.Membership().Addr().String())
		}
		cfg.Replication.Addr = "127.0.0.1:0"
		cfg.JoinWait = 300 * time.Millisecond
		c, err := manager.StartCluster(cfg)
		if err != nil {
			b.Fatal(err)
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
			b.Fatalf("%s cluster %v not ready with %d peers each after 20s", kind, routes, len(nodes)-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
