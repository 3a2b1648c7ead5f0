package compare

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/httpload"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/gorilla/sessions"
	"go.uber.org/goleak"
)

// baselineTime is how long the redis store is measured before and after
// each case's round, for the case's ratio.
const baselineTime = 500 * time.Millisecond

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
// redis store's for the same operation, measured for half a second just
// before and just after the case's round (their mean), so that the
// machine's drift over a run does not enter the ratio. Goal: delta-3-ack
// ≥ 3x redis on reads and on writes. With COHORT_PLOT_DIR set (an
// absolute path), the figures are drawn in $COHORT_PLOT_DIR/compare.png
// (compare-wrk.png with COHORT_LOADGEN=wrk, httpload).
//
//	go test -run '^$' -bench Compare -benchtime 2s -count 3 ./internal/compare/
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
	var redisSrv *httpload.Server
	for _, c := range cases {
		// Started on first use, so a -bench filter skips its cost.
		var srv *httpload.Server
		get := func(sb *testing.B) *httpload.Server {
			if srv == nil {
				srv = httpload.Start(b.Cleanup, app(c.open(sb, b, quiet)), clients, sessionName)
				if c.name == "redis" {
					redisSrv = srv
				}
			}
			return srv
		}
		for _, op := range []string{"read", "write"} {
			b.Run(c.name+"/"+op, func(sb *testing.B) {
				// The first request writes, so the session read holds count.
				srv := get(sb)
				round := func() float64 { return srv.Drive(sb, "/write", "/"+op) }
				var rps, x float64
				switch {
				case srv == redisSrv:
					rps, x = round(), 1
				case redisSrv != nil:
					rps, x = redisSrv.Bracket(sb, "/write", "/"+op, baselineTime, round)
				default:
					rps = round()
				}
				if sb.N < httpload.MinRound {
					return // a probe round, sizing b.N
				}
				figs.set(c.name, op, rps, x) // each round overwrites; the last is the longest
				if x > 0 {
					sb.ReportMetric(x, "x-redis")
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
		name, load := "compare.png", fmt.Sprintf("%d Go client goroutines in process", clients)
		if httpload.Loadgen() == "wrk" {
			name, load = "compare-wrk.png", fmt.Sprintf("wrk, %d connections", clients)
		}
		path := filepath.Join(dir, name)
		if err := writePlot(path, figs, "redis", load); err != nil {
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
