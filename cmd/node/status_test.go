package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
)

// TestStatusReportsJoinErrors starts a node whose only seed does not
// answer: it becomes ready alone, and GET /cluster/status says why, with
// the failed joins, the last error and the seed's state.
func TestStatusReportsJoinErrors(t *testing.T) {
	dead := refusingAddr(t)
	srv, _ := startMux(t, func(c *manager.ClusterConfig) {
		c.Membership.Join = []string{dead}
	})

	resp, err := http.Get(srv.URL + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ready bool
		Join  struct {
			Errors      int64
			LastError   string    `json:"last_error"`
			LastErrorAt time.Time `json:"last_error_at"`
			Seeds       []struct {
				Seed      string
				Failures  int
				LastError string     `json:"last_error"`
				LastOK    *time.Time `json:"last_ok"`
			}
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	j := st.Join
	if !st.Ready || j.Errors == 0 || !strings.Contains(j.LastError, dead) || j.LastErrorAt.IsZero() {
		t.Errorf("status: ready %v, join %+v; want ready with the failed joins to %s", st.Ready, j, dead)
	}
	if len(j.Seeds) != 1 || j.Seeds[0].Seed != dead || j.Seeds[0].Failures == 0 ||
		!strings.Contains(j.Seeds[0].LastError, "connection refused") || j.Seeds[0].LastOK != nil {
		t.Errorf("status: seeds %+v, want %s failing, never answered", j.Seeds, dead)
	}
}

// startMux serves the node's endpoints for a one-node Delta cluster of
// route "a", configured by tune, and returns the server and the cluster.
func startMux(t *testing.T, tune func(*manager.ClusterConfig)) (*httptest.Server, *manager.Cluster) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cluster := testcluster.Start(t, nil, quiet, tune, "a")[0]
	sessions, err := web.New(cluster.Manager(), web.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	hub, err := web.NewHub(cluster, web.DefaultHubConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hub.Close() })
	dash := web.NewDashboard(cluster, sessions, quiet)
	t.Cleanup(dash.Close)
	srv := httptest.NewServer(newMux(&config{Route: "a", Manager: "delta"}, cluster, sessions, dash, hub))
	t.Cleanup(srv.Close)
	return srv, cluster
}

// TestCounterHeadChangesNothing sends HEAD /counter, as a monitor's probe
// does: without a cookie it makes no session, with one it does not count,
// and the next GET goes on from where the last GET left.
func TestCounterHeadChangesNothing(t *testing.T) {
	srv, cluster := startMux(t, nil)
	do := func(method, cookie string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/counter", nil)
		if cookie != "" {
			req.Header.Set("Cookie", "JSESSIONID="+cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s /counter: %s", method, resp.Status)
		}
		return resp
	}
	resp := do(http.MethodHead, "")
	if n := cluster.Manager().Count(); n != 0 || len(resp.Cookies()) != 0 {
		t.Fatalf("HEAD without a cookie: %d sessions, cookies %v; want none", n, resp.Cookies())
	}
	var id string
	for _, c := range do(http.MethodGet, "").Cookies() {
		id = c.Value
	}
	do(http.MethodHead, id)
	do(http.MethodHead, id)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/counter", nil)
	req.Header.Set("Cookie", "JSESSIONID="+id)
	got, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(got.Body)
	_ = got.Body.Close()
	if want := fmt.Sprintf("count=2 node=a id=%s\n", id); string(body) != want {
		t.Errorf("GET after two HEADs: %q, want %q", body, want)
	}
}

// refusingAddr returns a 127.0.0.1 address that refuses connections for
// as long as the test runs: a TCP socket bound to it but not listening
// holds the port, so that no other test's node can take it and answer.
func refusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
