// Package compare holds benchmarks that set Cohort's session stores beside
// the stores a Go application would otherwise use; it has no API.
//
// # Overview
//
// BenchmarkCompare serves one small gorilla/sessions application
// (store.Get(r, "s"), then session.Values["count"] read, or incremented and
// saved) over real loopback HTTP with five stores, in one run:
//
//   - redis: github.com/boj/redistore on a redis-server child process,
//   - delta-3-ack: web.NewStore over node 1 of a 3-node Delta cluster in
//     ack mode, whose peers are real nodes over real replication channels,
//   - backup-3-ack: the same with a Backup cluster, one backup per session,
//   - standard: web.NewStore over a Standard manager (no replication),
//   - cookie: gorilla's sessions.NewCookieStore.
//
// Each store has a read and a write sub-benchmark, driven by about 96
// client goroutines that each hold their own session cookie. Each reports
// req/s and x-redis, its req/s over the redis store's for the same
// operation in the same run (redis runs first).
//
// # Usage
//
//	go test -run '^$' -bench Compare -benchtime 2s ./internal/compare/
//	COHORT_PLOT_DIR=/tmp go test -run '^$' -bench Compare -benchtime 2s ./internal/compare/
//	COHORT_LOADGEN=wrk COHORT_PLOT_DIR=/tmp go test -run '^$' -bench Compare -benchtime 2s ./internal/compare/
//
// The second form also writes a bar chart of the figures to
// $COHORT_PLOT_DIR/compare.png; the third drives the app with wrk
// instead of the in-process Go client (internal/httpload) and draws
// compare-wrk.png. The redis case needs redis-server on the
// PATH (Debian: apt-get install redis-server); without it that case is
// skipped with the reason, or fails when CI=true.
package compare
