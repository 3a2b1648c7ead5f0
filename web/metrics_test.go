package web_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

// twoNodes starts a 2-node Delta cluster (testcluster.Start).
func twoNodes(t *testing.T, quiet *slog.Logger) []*manager.Cluster {
	t.Helper()
	return testcluster.Start(t, nil, quiet, nil, "n1", "n2")
}

// TestMetricsReportTheCluster scrapes a node of a 2-node Delta cluster
// after a replicated write and checks the figures operators graph.
func TestMetricsReportTheCluster(t *testing.T) {
	leaktest.Check(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodes := twoNodes(t, quiet)
	ctx := context.Background()
	m := nodes[0].Manager()
	s, _ := m.Create(ctx)
	_ = s.Set("count", 1)
	if err := m.Commit(ctx, s); err != nil {
		t.Fatal(err)
	}
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = "n1", quiet
	ss, err := web.New(m, wc)
	if err != nil {
		t.Fatal(err)
	}
	value := scrape(t, web.NewMetrics(nodes[0], ss))
	for _, c := range []struct {
		series string
		ok     func(float64) bool
	}{
		{`cohort_members{state="alive"}`, func(v float64) bool { return v == 2 }},
		{`cohort_ready`, func(v float64) bool { return v == 1 }},
		{`cohort_membership_join_errors_total`, func(v float64) bool { return v == 0 }},
		{`cohort_sessions{role="primary"}`, func(v float64) bool { return v == 1 }},
		{`cohort_sessions_created_total`, func(v float64) bool { return v == 1 }},
		{`cohort_replication_changes_total`, func(v float64) bool { return v == 1 }},
		{`cohort_replication_messages_sent_total{kind="change"}`, func(v float64) bool { return v == 1 }},
		{`cohort_replication_frames_sent_total{peer="n2"}`, func(v float64) bool { return v >= 1 }},
		{`cohort_replication_peer_connected{peer="n2"}`, func(v float64) bool { return v == 1 }},
		{`cohort_replication_ack_latency_seconds_count`, func(v float64) bool { return v >= 1 }},
		{`cohort_session_size_bytes_count`, func(v float64) bool { return v == 1 }},
		{`cohort_route_rebinds_total`, func(v float64) bool { return v == 0 }},
		{`cohort_replication_connections_dropped_total{reason="auth"}`, func(v float64) bool { return v == 0 }},
	} {
		if v := value(c.series); !c.ok(v) {
			t.Errorf("%s = %v", c.series, v)
		}
	}
}

// scrape reads the metrics once and returns a function that looks up one
// series' value in that scrape (-1, and an error, when it is missing).
func scrape(t *testing.T, m *web.Metrics) func(series string) float64 {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return func(series string) float64 {
		t.Helper()
		re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(series) + ` (\S+)$`)
		m := re.FindSubmatch(body)
		if m == nil {
			t.Errorf("no series %s in:\n%s", series, body)
			return -1
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
}

// TestMetricsOfStandardManager checks that a Standard node counts its
// sessions like the replicated managers do: created, refused at
// MaxSessions, invalidated, the most held at once and the life of the
// destroyed ones.
func TestMetricsOfStandardManager(t *testing.T) {
	leaktest.Check(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := manager.DefaultClusterConfig()
	cfg.Kind = manager.KindStandard
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route, cfg.Membership.Logger = "s1", quiet
	cfg.Manager.MaxSessions = 2
	c, err := manager.StartCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx := context.Background()
	m := c.Manager()
	a, err := m.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx); !errors.Is(err, manager.ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := m.Invalidate(ctx, a.ID()); err != nil {
		t.Fatal(err)
	}
	value := scrape(t, web.NewMetrics(c, nil))
	for _, w := range []struct {
		series string
		want   float64
	}{
		{`cohort_sessions{role="primary"}`, 1},
		{`cohort_sessions_created_total`, 2},
		{`cohort_sessions_rejected_total`, 1},
		{`cohort_sessions_invalidated_total`, 1},
		{`cohort_sessions_max`, 2},
	} {
		if v := value(w.series); v != w.want {
			t.Errorf("%s = %v, want %v", w.series, v, w.want)
		}
	}
	if v := value(`cohort_session_alive_max_seconds`); v < 0.01 {
		t.Errorf("cohort_session_alive_max_seconds = %v, want the invalidated session's life, at least 10ms", v)
	}
}

// TestStoreReplicatesInPlaceChanges changes a value of a gorilla session
// in place, as gorilla handlers do with slices and maps, and checks that
// the change reaches the other node.
func TestStoreReplicatesInPlaceChanges(t *testing.T) {
	leaktest.Check(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodes := twoNodes(t, quiet)
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = "n1", quiet
	store, err := web.NewStore(nodes[0].Manager(), wc)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "s")
		if list, ok := s.Values["list"].([]string); ok {
			list[0] = "changed" // in place
		} else {
			s.Values["list"] = []string{"first"}
		}
		if err := s.Save(r, w); err != nil {
			t.Error(err)
		}
		id = s.ID
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	for range 2 {
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := ""
		if s := nodes[1].Lookup(id); s != nil {
			if v, ok := manager.Attr[[]string](s, "list"); ok {
				got = v[0]
			}
		}
		if got == "changed" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2 holds %q, want the in-place change", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
