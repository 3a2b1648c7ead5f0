package compare

import (
	"context"
	"log/slog"
	"testing"

	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
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

// startCluster starts a Cohort cluster of kind (Delta or Backup, one
// backup) in ack mode (testcluster.Start).
func startCluster(b *testing.B, cleanup func(func()), log *slog.Logger, kind string, routes ...string) []*manager.Cluster {
	b.Helper()
	return testcluster.Start(b, cleanup, log, func(c *manager.ClusterConfig) {
		c.Kind, c.Manager.Mode, c.Manager.Backups = kind, manager.Ack, 1
	}, routes...)
}
