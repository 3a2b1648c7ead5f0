package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
	"github.com/gorilla/websocket"
)

// startNode starts a chat node on 127.0.0.1 with ports chosen by the
// system, joined to join if given.
func startNode(t *testing.T, route string, join ...string) *node {
	t.Helper()
	args := []string{"-route", route, "-http", "127.0.0.1:0", "-bind", "127.0.0.1:0", "-quiet"}
	if len(join) > 0 {
		args = append(args, "-join", strings.Join(join, ","))
	}
	cfg, err := parseFlags(args, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	n, err := start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

type chatClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialChat(t *testing.T, n *node, user string) *chatClient {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+n.Addr()+"/ws?user="+user, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", n.Addr(), err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	c := &chatClient{t, ws}
	if err := ws.WriteJSON(map[string]string{"subscribe": "chat"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// await reads messages until one satisfies ok, failing after 20s.
func (c *chatClient) await(what string, ok func(m map[string]any) bool) map[string]any {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var m map[string]any
		if err := c.ws.ReadJSON(&m); err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok(m) {
			return m
		}
	}
}

func TestChat(t *testing.T) {
	leaktest.Check(t)
	n1 := startNode(t, "n1")
	n2 := startNode(t, "n2", n1.cluster.Membership().Addr().String())

	resp, err := http.Get("http://" + n1.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<title>Cohort chat</title>") {
		t.Fatalf("GET / = %s, %.80q", resp.Status, body)
	}

	ann := dialChat(t, n1, "ann")
	ann.await("the subscription", func(m map[string]any) bool { return m["subscribed"] == "chat" })
	ben := dialChat(t, n2, "ben")
	// Both, in either order: ben's subscription must be in place before
	// ann's message reaches n2.
	var subscribed, both bool
	ben.await("ben's subscription, and ann and ben online seen from n2", func(m map[string]any) bool {
		users, _ := json.Marshal(m["users"])
		subscribed = subscribed || m["subscribed"] == "chat"
		both = both || m["type"] == "presence" && string(users) == `["ann","ben"]`
		return subscribed && both
	})
	ann.await("ben joining, seen from n1", func(m map[string]any) bool {
		return m["type"] == "presence" && m["user"] == "ben" && m["online"] == true
	})

	if err := ann.ws.WriteJSON(map[string]string{"text": "hello from n1"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*chatClient{ben, ann} {
		m := c.await("ann's message", func(m map[string]any) bool { return m["type"] == "message" })
		if m["user"] != "ann" || m["node"] != "n1" || m["text"] != "hello from n1" {
			t.Fatalf("message = %v", m)
		}
	}

	// ben leaves: ann is told.
	_ = ben.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	m := ann.await("ben leaving", func(m map[string]any) bool {
		return m["type"] == "presence" && m["user"] == "ben" && m["online"] == false
	})
	if users, _ := m["users"].([]any); !slices.Equal(users, []any{"ann"}) {
		t.Errorf("online after ben left = %v", m["users"])
	}

	// A name the chat refuses.
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+n1.Addr()+"/ws?user=", nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dial without a name: %v, want 401", err)
	}
}

// The page's own origin is accepted over http and https (a balancer in
// front may end TLS), as are the -failover nodes'; others are not.
func TestCheckOrigin(t *testing.T) {
	n := &node{cfg: config{failover: []string{"127.0.0.2:8081"}}}
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{"http://chat.example:8080", true},
		{"https://chat.example:8080", true},
		{"https://CHAT.example:8080", true},
		{"http://127.0.0.2:8081", true},
		{"https://127.0.0.2:8081", true},
		{"http://evil.example", false},
		{"https://chat.example:8080.evil.example", false},
		{"ftp://chat.example:8080", false},
		{"null", false},
	} {
		r := httptest.NewRequest("GET", "http://chat.example:8080/ws", nil)
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if got := n.checkOrigin(r); got != tc.ok {
			t.Errorf("checkOrigin(Origin %q) = %v, want %v", tc.origin, got, tc.ok)
		}
	}
}
