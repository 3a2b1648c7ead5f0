package web_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/sessions"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ExampleSessions_Middleware() {
	mc := manager.DefaultConfig()
	mc.Route, mc.Logger = "node1", quiet()
	m, err := manager.NewStandard(mc)
	if err != nil {
		panic(err)
	}
	defer m.Close(context.Background())
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = "node1", quiet()
	sessions, err := web.New(m, wc)
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /counter", func(w http.ResponseWriter, r *http.Request) {
		s, _ := web.Get(r)
		n, _ := s.GetInt("count")
		_ = s.Set("count", n+1)
		fmt.Fprintf(w, "count=%d", n+1)
	})
	srv := httptest.NewServer(sessions.Middleware(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	for range 3 {
		resp, _ := client.Get(srv.URL + "/counter")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(string(body))
	}
	// Output:
	// count=1
	// count=2
	// count=3
}

func ExampleStore() {
	mc := manager.DefaultConfig()
	mc.Route, mc.Logger = "node1", quiet()
	m, _ := manager.NewStandard(mc)
	defer m.Close(context.Background())
	store, _ := web.NewStore(m, web.Config{Route: "node1", Logger: quiet()})

	// A handler written for gorilla/sessions, unchanged.
	var _ sessions.Store = store
	handler := func(w http.ResponseWriter, r *http.Request) {
		session, _ := store.Get(r, "shop")
		n, _ := session.Values["visits"].(int)
		session.Values["visits"] = n + 1
		_ = session.Save(r, w)
		fmt.Fprintf(w, "visits=%d", n+1)
	}
	// Behind Store.Middleware, a read-only request of a user failed over
	// from another node gets the rebound cookie too.
	srv := httptest.NewServer(store.Middleware(http.HandlerFunc(handler)))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	for range 2 {
		resp, _ := client.Get(srv.URL)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(string(body))
	}
	// Output:
	// visits=1
	// visits=2
}
