package compare

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/gorilla/sessions"
	"go.uber.org/goleak"
)

// clients is about how many client goroutines drive each case, each with
// its own session: enough that every case keeps the two cores busy. With
// 24, the cases that wait on a round trip (to Redis, to the peers in ack
// mode) left a third of the CPU idle and measured the clients' patience
// rather than the server's capacity.
const clients = 96

// sessionName is the gorilla session name, and so the cookie name.
const sessionName = "s"

// body is the small fixed body the application writes.
var body = []byte("ok\n")

// opener starts a store for the parent benchmark p: it fails or skips sb,
// the sub-benchmark that first needs it, and registers its cleanups on p,
// so the store lives until every sub-benchmark has run.
type opener func(sb, p *testing.B, log *slog.Logger) sessions.Store

// BenchmarkCompare measures requests/s of one gorilla/sessions application
// over real loopback HTTP with five stores, side by side: boj/redistore on
// a redis-server child process, web.NewStore over node 1 of a 3-node Delta
// and of a 3-node Backup cluster in ack mode (real peers over real
// replication channels), web.NewStore over a Standard manager, and
// gorilla's CookieStore. "read" reads the session value count, "write"
// increments it and saves the session. x-redis is a case's req/s over the
// redis case's for the same operation in this run. Goal: delta-3-ack
// ≥ 3x redis on reads and on writes. With COHORT_PLOT_DIR set, the figures
// are drawn in $COHORT_PLOT_DIR/compare.png.
//
//	go test -run '^$' -bench Compare -benchtime 2s ./internal/compare/
func BenchmarkCompare(b *testing.B) {
	leaks := goleak.IgnoreCurrent()
	b.Cleanup(func() { goleak.VerifyNone(b, leaks) })
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))

	cases := []struct {
		name string
		open opener
	}{
		{"redis", openRedis}, // first: the others' x-redis divides by it
		{"delta-3-ack", openCluster(manager.KindDelta)},
		{"backup-3-ack", openCluster(manager.KindBackup)},
		{"standard", openStandard},
		{"cookie", openCookie},
	}
	var figs figures
	for _, c := range cases {
		// Started on first use, so a -bench filter skips its cost.
		var srv *server
		get := func(sb *testing.B) *server {
			if srv == nil {
				srv = newServer(b.Cleanup, app(c.open(sb, b, quiet)))
			}
			return srv
		}
		for _, op := range []string{"read", "write"} {
			b.Run(c.name+"/"+op, func(sb *testing.B) {
				rps := drive(sb, get(sb), op)
				figs.set(c.name, op, rps) // each round overwrites; the last is the longest
				if base := figs.get("redis", op); base > 0 {
					sb.ReportMetric(rps/base, "x-redis")
				}
			})
		}
	}
	// Without -v, neither a skipped sub-benchmark's reason nor this
	// benchmark's own log is printed: say it on stdout, beside the results.
	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Printf("BenchmarkCompare: redis cases skipped, no x-redis: %v\n", err)
	}
	if dir := os.Getenv("COHORT_PLOT_DIR"); dir != "" && len(figs.rows) > 0 {
		path := filepath.Join(dir, "compare.png")
		if err := writePlot(path, figs, "redis"); err != nil {
			b.Fatalf("plot: %v", err)
		}
		fmt.Printf("BenchmarkCompare: wrote %s\n", path)
	}
}

// app is the application under test: a handler written against the
// gorilla/sessions API. /read reads count, /write increments it and saves
// the session. A request that sent a cookie but got a new session answers
// 500, so a store that loses sessions fails the benchmark instead of
// measuring an empty read.
func app(store sessions.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := store.Get(r, sessionName)
		if err != nil {
			http.Error(w, "get: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if s.IsNew && r.Header.Get("Cookie") != "" {
			http.Error(w, "session lost", http.StatusInternalServerError)
			return
		}
		n, _ := s.Values["count"].(int)
		switch r.URL.Path {
		case "/read":
			if n < 1 {
				http.Error(w, fmt.Sprintf("read: count %v (%T), want an int ≥ 1", s.Values["count"], s.Values["count"]), http.StatusInternalServerError)
				return
			}
		case "/write":
			s.Values["count"] = n + 1
			if err := s.Save(r, w); err != nil {
				http.Error(w, "save: "+err.Error(), http.StatusInternalServerError)
				return
			}
		default:
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	})
}

// server is an httptest.Server and a client tuned to keep one loopback
// connection per client goroutine alive.
type server struct {
	srv    *httptest.Server
	client *http.Client
}

func newServer(cleanup func(func()), h http.Handler) *server {
	srv := httptest.NewServer(h)
	tr := &http.Transport{
		MaxIdleConns:        4 * clients,
		MaxIdleConnsPerHost: 4 * clients,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return &server{srv: srv, client: &http.Client{Transport: tr}}
}

// drive runs b.N requests to /op from about clients goroutines, and
// reports and returns req/s. Each goroutine's first request goes to
// /write without a cookie, so its session exists and holds count; it keeps
// the latest session cookie it is sent.
func drive(b *testing.B, srv *server, op string) float64 {
	b.Helper()
	var failures atomic.Int64
	var failure atomic.Pointer[error]
	fail := func(err error) {
		failures.Add(1)
		failure.CompareAndSwap(nil, &err)
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism(max(1, (clients+procs-1)/procs))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cookie := ""
		url := srv.srv.URL + "/write"
		for pb.Next() {
			req, err := http.NewRequest(http.MethodGet, url, nil)
			if err != nil {
				fail(err)
				return
			}
			if cookie != "" {
				req.Header.Set("Cookie", cookie)
			}
			resp, err := srv.client.Do(req)
			if err != nil {
				fail(err)
				continue
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				fail(fmt.Errorf("%s: status %s: %s", url, resp.Status, msg))
				continue
			}
			if len(resp.Header["Set-Cookie"]) > 0 {
				for _, c := range resp.Cookies() {
					if c.Name == sessionName {
						cookie = sessionName + "=" + c.Value
					}
				}
			}
			url = srv.srv.URL + "/" + op
		}
	})
	elapsed := b.Elapsed()
	b.StopTimer()
	if n := failures.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed; first: %v", n, b.N, *failure.Load())
	}
	rps := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rps, "req/s")
	return rps
}
