package web_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/cohort-cluster/cohort/web"
)

// TestDashboardShowsTheJoiningTransfer opens the dashboard of the second
// node of a cluster, started, as a node starts it, once the node is ready:
// the state transfer that made it ready is among the events.
func TestDashboardShowsTheJoiningTransfer(t *testing.T) {
	leaktest.Check(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodes := twoNodes(t, quiet)
	if st := nodes[1].Stats(); st.Transfers != 1 {
		t.Fatalf("n2 made %d state transfers, want 1", st.Transfers)
	}
	dash := web.NewDashboard(nodes[1], nil, quiet)
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
