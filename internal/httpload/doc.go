// Package httpload drives an HTTP server from many client goroutines over
// keep-alive loopback connections, each client with its own session
// cookie, for the benchmarks that compare requests/s side by side.
//
// On a shared machine the speed of the whole machine drifts over seconds,
// so a ratio between two cases measured a minute apart carries that drift.
// Bracket measures the reference case for a short while right before and
// right after a case, so that each ratio compares neighbours in time.
package httpload
