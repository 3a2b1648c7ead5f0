package web_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/websocket"
)

func ExampleHub_SendToUser() {
	// One node; with more, SendToUser on any of them reaches alice.
	cc := manager.DefaultClusterConfig()
	cc.Membership = membership.DefaultLocalConfig()
	cc.Membership.Route, cc.Membership.Logger = "node1", quiet()
	cc.Replication.Addr = "127.0.0.1:0"
	cluster, err := manager.StartCluster(cc)
	if err != nil {
		panic(err)
	}
	defer cluster.Close(context.Background())

	connected := make(chan *web.Conn, 1)
	hc := web.DefaultHubConfig()
	hc.Logger = quiet()
	hc.OnConnect = func(c *web.Conn) { connected <- c }
	hub, err := web.NewHub(cluster, hc)
	if err != nil {
		panic(err)
	}
	defer hub.Close()
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = "node1", quiet()
	sessions, _ := web.New(cluster.Manager(), wc)
	mux := http.NewServeMux()
	mux.Handle("GET /ws", hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") }))
	srv := httptest.NewServer(sessions.Middleware(mux))
	defer srv.Close()

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?user=alice", nil)
	if err != nil {
		panic(err)
	}
	defer ws.Close()
	c := <-connected
	fmt.Println("connected:", c.User())

	n, err := hub.SendToUser(context.Background(), "alice", []byte("hello"))
	fmt.Println("reached:", n, err)
	_, msg, _ := ws.ReadMessage()
	fmt.Println("alice received:", string(msg))
	// Output:
	// connected: alice
	// reached: 1 <nil>
	// alice received: hello
}
