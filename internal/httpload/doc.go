// Package httpload drives an HTTP server from many client goroutines over
// keep-alive loopback connections, each client with its own session
// cookie, for the benchmarks that compare requests/s side by side.
//
// With COHORT_LOADGEN=wrk the load comes from wrk instead, a load
// generator in C run as a child process, over as many connections; it
// sends each request with the cookie of one of as many sessions, in turn,
// made beforehand by the Go client. The Go client costs the shared cores
// more per request than the server does; wrk much less, so the server's
// own cost weighs more in every ratio. Each benchmark is worth reading
// both ways.
//
// On a shared machine the speed of the whole machine drifts over seconds,
// so a ratio between two cases measured a minute apart carries that drift.
// Bracket measures the reference case for a short while right before and
// right after a case, so that each ratio compares neighbours in time.
package httpload
