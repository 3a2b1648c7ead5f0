package httpload

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// LoadgenEnv names the environment variable that picks the load
// generator: "go" (the default) drives the server from client goroutines
// in the benchmark's own process; "wrk" runs wrk (Debian package wrk), a
// load generator in C, as a child process. The Go client's CPU shares the
// cores with the server and is counted in cpu-us/op; wrk's, much smaller
// per request, is not counted.
const LoadgenEnv = "COHORT_LOADGEN"

// Loadgen is the load generator LoadgenEnv picks: "go" or "wrk". It
// says which on stdout, once, beside the results.
func Loadgen() string {
	switch v := os.Getenv(LoadgenEnv); v {
	case "", "go":
		sayLoadgen.Do(func() { fmt.Println("httpload: load generator: Go client, in process") })
		return "go"
	case "wrk":
		sayLoadgen.Do(func() { fmt.Println("httpload: load generator: wrk, 2 threads, child process") })
		return "wrk"
	default:
		panic(fmt.Sprintf("httpload: %s=%q: want go or wrk", LoadgenEnv, v))
	}
}

func useWrk() bool { return Loadgen() == "wrk" }

var sayLoadgen sync.Once

// wrkMinRound is the shortest wrk run.
const wrkMinRound = 200 * time.Millisecond

// wrkThreads is wrk's thread count: one per core of this machine's two.
const wrkThreads = 2

// wrkState is what a Server keeps between wrk runs: the cookies of its
// sessions, made once, and its last rate, to size a timed run.
type wrkState struct {
	mu      sync.Mutex
	first   string
	cookies []string
	rate    float64
}

// wrkCookies makes s.clients sessions, each by one request to first from
// the Go client, and returns their cookies (none if first sets none).
func (s *Server) wrkCookies(first string) ([]string, error) {
	w := &s.wrk
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cookies != nil && w.first == first {
		return w.cookies, nil
	}
	cookies := make([]string, 0, s.clients)
	for range s.clients {
		c := &session{s: s, url: s.URL + first, path: first}
		if err := c.do(); err != nil {
			return nil, err
		}
		if c.cookie != "" {
			cookies = append(cookies, c.cookie)
		}
	}
	w.first, w.cookies = first, cookies
	return cookies, nil
}

// wrkResult is what one wrk run reports.
type wrkResult struct {
	requests int
	elapsed  time.Duration
	errors   int // connect, read, write, timeout, and non-2xx/3xx statuses
}

// runWrk sends requests to path for about d over s.clients connections,
// each request with the cookie of one of the sessions made by a request
// to first, in turn.
func (s *Server) runWrk(first, path string, d time.Duration) (wrkResult, error) {
	cookies, err := s.wrkCookies(first)
	if err != nil {
		return wrkResult{}, err
	}
	dir, err := os.MkdirTemp("", "httpload-wrk-")
	if err != nil {
		return wrkResult{}, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "cohort.lua")
	if err := os.WriteFile(script, wrkScript(path, cookies), 0o600); err != nil {
		return wrkResult{}, err
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		return wrkResult{}, err
	}
	// wrk's -d counts whole seconds: it is only the longest a run may
	// take. An interrupt ends the run after d; wrk then reports what it
	// did in the time it ran.
	cmd := exec.Command("wrk", "-t", strconv.Itoa(wrkThreads), "-c", strconv.Itoa(s.clients), "-d", "1h",
		"-s", script, u.Scheme+"://"+u.Host+"/")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w", err)
	}
	time.Sleep(d)
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, stderr.String())
	}
	return parseWrk(out.String())
}

// wrkScript is the Lua script of a run: every request a GET of path with
// the next cookie of cookies; done prints one line parseWrk reads.
func wrkScript(path string, cookies []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "local path = %q\nlocal cookies = {\n", path)
	for _, c := range cookies {
		fmt.Fprintf(&b, "  %q,\n", c)
	}
	b.WriteString(`}
local i = 0
function init(args)
  i = math.random(#cookies + 1)
end
function request()
  if #cookies == 0 then
    return wrk.format("GET", path)
  end
  i = i % #cookies + 1
  return wrk.format("GET", path, { ["Cookie"] = cookies[i] })
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("httpload-wrk %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
`)
	return b.Bytes()
}

// parseWrk reads the line the script's done prints: requests, duration in
// microseconds, errors.
func parseWrk(out string) (wrkResult, error) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "httpload-wrk" {
			continue
		}
		var v [3]int
		for i := range v {
			n, err := strconv.Atoi(f[i+1])
			if err != nil {
				return wrkResult{}, fmt.Errorf("wrk: bad summary %q: %w", line, err)
			}
			v[i] = n
		}
		return wrkResult{requests: v[0], elapsed: time.Duration(v[1]) * time.Microsecond, errors: v[2]}, nil
	}
	return wrkResult{}, fmt.Errorf("wrk: no summary in its output:\n%s", out)
}

// driveWrk is Drive with wrk: requests for as long as b.N take at the
// server's last rate, CPU counted for this process (the server) only.
func (s *Server) driveWrk(b *testing.B, first, path string) float64 {
	b.Helper()
	if _, err := exec.LookPath("wrk"); err != nil {
		b.Fatalf("%s=wrk: %v (Debian package wrk)", LoadgenEnv, err)
	}
	rate, err := s.wrkRate(first, path)
	if err != nil {
		b.Fatal(err)
	}
	cpu0, cpuOK := cpuTime()
	b.ResetTimer()
	// At least wrkMinRound: a probe round of a few requests still runs
	// long enough to measure.
	d := max(wrkMinRound, time.Duration(float64(b.N)/rate*float64(time.Second)))
	r, err := s.wrkRound(first, path, d)
	b.StopTimer()
	cpu1, cpuOK1 := cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	rps := float64(r.requests) / r.elapsed.Seconds()
	b.ReportMetric(rps, "req/s")
	if cpu := (cpu1 - cpu0).Seconds(); cpuOK && cpuOK1 {
		b.ReportMetric(cpu*1e6/float64(r.requests), "cpu-us/op")
		b.ReportMetric(cpu/r.elapsed.Seconds()/float64(runtime.GOMAXPROCS(0)), "cpu-busy")
	}
	return rps
}

// baselineWrk is Baseline with wrk.
func (s *Server) baselineWrk(first, path string, d time.Duration) (float64, error) {
	r, err := s.wrkRound(first, path, d)
	if err != nil {
		return 0, err
	}
	return float64(r.requests) / r.elapsed.Seconds(), nil
}

// wrkRate is the server's last rate, measured over half a second the
// first time.
func (s *Server) wrkRate(first, path string) (float64, error) {
	s.wrk.mu.Lock()
	rate := s.wrk.rate
	s.wrk.mu.Unlock()
	if rate > 0 {
		return rate, nil
	}
	r, err := s.wrkRound(first, path, 500*time.Millisecond)
	if err != nil {
		return 0, err
	}
	return float64(r.requests) / r.elapsed.Seconds(), nil
}

// wrkRound is runWrk that fails on any failed request and keeps the rate.
func (s *Server) wrkRound(first, path string, d time.Duration) (wrkResult, error) {
	r, err := s.runWrk(first, path, d)
	if err != nil {
		return r, err
	}
	if r.errors > 0 || r.requests == 0 || r.elapsed <= 0 {
		return r, fmt.Errorf("httpload: wrk: %d of %d requests failed", r.errors, r.requests)
	}
	s.wrk.mu.Lock()
	s.wrk.rate = float64(r.requests) / r.elapsed.Seconds()
	s.wrk.mu.Unlock()
	return r, nil
}
