package web_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

// TestDashboardShowsTheJoiningTransfer opens the dashboard of the second
// node of a cluster, started, as a node starts it, once the node is ready:
// the state transfer that made it ready is among the events.
func TestDashboardShowsTheJoiningTransfer(t *testing.T) {
	leaktest.Check(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// n1 ready first, so that n2 fetches the sessions from it.
	n1 := testcluster.Start(t, nil, quiet, nil, "n1")[0]
	cfg := manager.DefaultClusterConfig()
	cfg.Membership = membership.DefaultLocalConfig()
	cfg.Membership.Route, cfg.Membership.Logger = "n2", quiet
	cfg.Membership.Join = []string{n1.Membership().Addr().String()}
	cfg.Replication.Addr = "127.0.0.1:0"
	n2, err := manager.StartCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close(context.Background())
	for deadline := time.Now().Add(20 * time.Second); !n2.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("n2 not ready after 20s")
		}
	}
	if st := n2.Stats(); st.Transfers != 1 {
		t.Fatalf("n2 made %d state transfers, want 1", st.Transfers)
	}
	dash := web.NewDashboard(n2, nil, quiet)
	defer dash.Close()
	srv := httptest.NewServer(dash)
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/cluster/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var last []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		_ = ws.SetReadDeadline(deadline)
		var snap struct {
			Events []struct{ Type, Text string }
		}
		if err := ws.ReadJSON(&snap); err != nil {
			break
		}
		last = last[:0]
		for _, e := range snap.Events {
			if e.Type == "transfer" && strings.HasPrefix(e.Text, "state transfer done") {
				return
			}
			last = append(last, e.Type+": "+e.Text)
		}
	}
	b, _ := json.Marshal(last)
	t.Fatalf("no state transfer among the events: %s", b)
}
