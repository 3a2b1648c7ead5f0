package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// post sends body to url and decodes the {"reached": N} answer.
func post(t *testing.T, url, body string) int {
	t.Helper()
	resp, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var res struct {
		Reached int    `json:"reached"`
		Error   string `json:"error"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &res) != nil || res.Error != "" {
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, b)
	}
	return res.Reached
}

// TestWebSocketAcrossNodes connects a WebSocket to node 1 and reaches it
// with POST /push and POST /publish made to node 3, through the real
// binaries.
func TestWebSocketAcrossNodes(t *testing.T) {
	_, _, n1, n2, n3 := startThree(t)
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+n1.http+"/ws?user=alice", nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer conn.Close()
	if len(resp.Cookies()) == 0 || !strings.HasSuffix(resp.Cookies()[0].Value, ".node1") {
		t.Errorf("handshake cookies %v: want a session bound to node1", resp.Cookies())
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"subscribe":"news"}`)); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return string(b)
	}
	if got := read(); got != `{"subscribed":"news"}` {
		t.Fatalf("subscribe answered %q", got)
	}
	// Presence reaches node 3 shortly after the connect.
	deadline := time.Now().Add(10 * time.Second)
	for post(t, "http://"+n3.http+"/push/alice", "hello from node3") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("node3 never reached alice's socket on node1")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := read(); got != "hello from node3" {
		t.Fatalf("received %q", got)
	}
	for post(t, "http://"+n3.http+"/publish/news", "headline") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the topic never reached the subscriber on node1")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := read(); got != "headline" {
		t.Fatalf("received %q", got)
	}
	if n := post(t, "http://"+n2.http+"/push/nobody", "x"); n != 0 {
		t.Errorf("a push to a user with no socket reached %d", n)
	}
	// The node's metrics count the socket and the users online.
	resp, err = http.Get("http://" + n1.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"cohort_websocket_connections 1\n", `cohort_websocket_users_online{where="cluster"} 1` + "\n"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
