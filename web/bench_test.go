package web_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/httpload"
	"github.com/cohort-cluster/cohort/internal/testcluster"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"go.uber.org/goleak"
)

// benchClients is about how many client goroutines drive each case:
// enough that every case keeps the two cores busy. With 24, the ack-mode
// write, which waits a round trip to the peers, left a third of the CPU
// idle and measured the clients' patience rather than the server's
// capacity (0.42-0.61x no-session then, against 0.58-0.66x at 96).
const benchClients = 96

// benchBody is the small fixed body every benchmark handler writes.
var benchBody = []byte("ok\n")

// baselineTime is how long the no-session handler is measured before and
// after each case's round, for the case's ratio.
const baselineTime = 500 * time.Millisecond

// BenchmarkMiddleware measures requests/s over real loopback HTTP through
// the session middleware, side by side: the bare handler, the Standard
// manager, and node 1 of a 3-node Delta cluster in ack mode whose peers
// are real nodes over real replication channels. "read" handlers read the
// session attribute count, "write" handlers increment it. Each client
// goroutine holds its own session. x-no-session is a case's req/s over
// the no-session handler's, measured for half a second just before and
// just after the case's round (their mean), so that the machine's drift
// over a run does not enter the ratio. Goal: delta-3-ack/write ≥ 0.8x.
//
//	go test -run '^$' -bench Middleware -benchtime 2s -count 3 ./web/
func BenchmarkMiddleware(b *testing.B) {
	leaks := goleak.IgnoreCurrent()
	b.Cleanup(func() { goleak.VerifyNone(b, leaks) })
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Servers and clusters live as long as the parent benchmark: a
	// sub-benchmark's own cleanups run after each of its b.N rounds. They
	// are started on first use, so a -bench filter skips their cost; a
	// sub-benchmark fails its own b, and registers cleanups on the parent.
	bare := httpload.Start(b.Cleanup, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(benchBody)
	}), benchClients, "JSESSIONID")
	var standardSrv, deltaSrv *httpload.Server
	standardServer := func(sb *testing.B) *httpload.Server {
		if standardSrv == nil {
			m := benchStandard(sb, b.Cleanup, quiet)
			standardSrv = httpload.Start(b.Cleanup, sessionsHandler(sb, m, "node1", quiet), benchClients, "JSESSIONID")
		}
		return standardSrv
	}
	deltaServer := func(sb *testing.B) *httpload.Server {
		if deltaSrv == nil {
			nodes := benchDeltaCluster(sb, b.Cleanup, quiet, "n1", "n2", "n3")
			deltaSrv = httpload.Start(b.Cleanup, sessionsHandler(sb, nodes[0].Manager(), "n1", quiet), benchClients, "JSESSIONID")
		}
		return deltaSrv
	}

	b.Run("no-session", func(b *testing.B) {
		bare.Drive(b, "/", "/")
		b.ReportMetric(1, "x-no-session")
	})
	for _, c := range []struct {
		name   string
		server func(*testing.B) *httpload.Server
	}{
		{"standard", standardServer},
		{"delta-3-ack", deltaServer},
	} {
		for _, op := range []string{"read", "write"} {
			b.Run(c.name+"/"+op, func(b *testing.B) {
				// The first request writes, so the session read holds count.
				srv := c.server(b)
				_, x := bare.Bracket(b, "/", "/", baselineTime, func() float64 { return srv.Drive(b, "/write", "/"+op) })
				if x > 0 {
					b.ReportMetric(x, "x-no-session")
				}
			})
		}
	}
}

// discard is a ResponseWriter that keeps nothing but its header.
type discard struct{ h http.Header }

func (w *discard) Header() http.Header         { return w.h }
func (w *discard) Write(b []byte) (int, error) { return len(b), nil }
func (w *discard) WriteHeader(int)             {}

// BenchmarkMiddlewareDirect is the session middleware's own cost, with no
// HTTP around it: the write handler called directly with the session's
// cookie, through the Standard manager, and without the middleware.
// x-no-session is ns/op over the bare handler's, from the same run.
//
//	go test -run '^$' -bench MiddlewareDirect -benchmem ./web/
func BenchmarkMiddlewareDirect(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	withSessions := sessionsHandler(b, benchStandard(b, b.Cleanup, quiet), "node1", quiet)
	benchDirect(b, "/write", withSessions, false, directCase{"standard/write", withSessions})
}

// directCase is a handler that benchDirect runs.
type directCase struct {
	name string
	h    http.Handler
}

// benchDirect calls each case's handler directly on a request to path
// carrying the cookie that create sets, after a bare handler
// (no-session) whose ns/op the cases' x-no-session divides by. With
// fresh, each call gets a copy of the request: gorilla's registry changes
// the request it is given in place.
func benchDirect(b *testing.B, path string, create http.Handler, fresh bool, cases ...directCase) {
	first := &discard{h: http.Header{}}
	create.ServeHTTP(first, httptest.NewRequest(http.MethodGet, path, nil))
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.AddCookie((&http.Response{Header: first.h}).Cookies()[0])
	bare := directCase{"no-session", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(benchBody) })}
	var bareNs float64
	for _, c := range append([]directCase{bare}, cases...) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := req
				if fresh {
					r = req.Clone(req.Context())
				}
				c.h.ServeHTTP(&discard{h: http.Header{}}, r)
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			if c.name == "no-session" {
				bareNs = ns
			} else if bareNs > 0 {
				b.ReportMetric(ns/bareNs, "x-no-session")
			}
		})
	}
}

// BenchmarkStoreDirect is the gorilla Store's own cost, as
// BenchmarkMiddlewareDirect is the middleware's: a handler that reads a
// session through Get, increments its count and Saves it (write), or
// reads it only (read), called directly with the session's cookie,
// through the Standard manager, beside the bare handler.
//
//	go test -run '^$' -bench StoreDirect -benchmem ./web/
func BenchmarkStoreDirect(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c := web.DefaultConfig()
	c.Route, c.Logger = "node1", quiet
	st, err := web.NewStore(benchStandard(b, b.Cleanup, quiet), c)
	if err != nil {
		b.Fatal(err)
	}
	handler := func(write bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			gs, _ := st.Get(r, "JSESSIONID")
			n, _ := gs.Values["count"].(int64)
			if write {
				gs.Values["count"] = n + 1
				if err := gs.Save(r, w); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
			}
			_, _ = w.Write(benchBody)
		})
	}
	benchDirect(b, "/", handler(true), true,
		directCase{"standard/read", handler(false)}, directCase{"standard/write", handler(true)})
}

// sessionHandler reads the session attribute count on /read and
// increments it on /write, then writes benchBody.
func sessionHandler(w http.ResponseWriter, r *http.Request) {
	s, err := web.Get(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	n, _ := s.GetInt("count")
	if r.URL.Path == "/write" {
		if err := s.Set("count", n+1); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	_, _ = w.Write(benchBody)
}

func sessionsHandler(b *testing.B, m manager.Manager, route string, log *slog.Logger) http.Handler {
	b.Helper()
	c := web.DefaultConfig()
	c.Route, c.Logger = route, log
	ss, err := web.New(m, c)
	if err != nil {
		b.Fatal(err)
	}
	return ss.Middleware(http.HandlerFunc(sessionHandler))
}

func benchStandard(b *testing.B, cleanup func(func()), log *slog.Logger) *manager.Standard {
	b.Helper()
	c := manager.DefaultConfig()
	c.Route, c.Logger = "node1", log
	m, err := manager.NewStandard(c)
	if err != nil {
		b.Fatal(err)
	}
	cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

// benchDeltaCluster starts a Delta cluster in ack mode (testcluster.Start).
func benchDeltaCluster(b *testing.B, cleanup func(func()), log *slog.Logger, routes ...string) []*manager.Cluster {
	b.Helper()
	return testcluster.Start(b, cleanup, log, func(c *manager.ClusterConfig) {
		c.Kind, c.Manager.Mode = manager.KindDelta, manager.Ack
	}, routes...)
}
