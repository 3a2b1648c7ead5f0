package httpload

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Server is a test server and a client tuned to keep one connection per
// client goroutine alive.
type Server struct {
	URL     string
	client  *http.Client
	clients int
	cookie  string
	wrk     wrkState
}

// Start serves h on 127.0.0.1 for about clients client goroutines that
// keep the cookie named cookie. cleanup (a testing.TB's Cleanup, or a
// parent benchmark's) stops it.
func Start(cleanup func(func()), h http.Handler, clients int, cookie string) *Server {
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
	return &Server{URL: srv.URL, client: &http.Client{Transport: tr}, clients: clients, cookie: cookie}
}

// session is one client goroutine: its next URL and its cookie.
type session struct {
	s      *Server
	url    string
	path   string
	cookie string
}

// do sends one request, keeps the session cookie it is sent, and moves on
// to path.
func (c *session) do() error {
	req, err := http.NewRequest(http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	resp, err := c.s.client.Do(req)
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %s: %s", c.url, resp.Status, msg)
	}
	if len(resp.Header["Set-Cookie"]) > 0 {
		for _, k := range resp.Cookies() {
			if k.Name == c.s.cookie {
				c.cookie = k.Name + "=" + k.Value
			}
		}
	}
	c.url = c.s.URL + c.path
	return nil
}

// failures counts failed requests and keeps the first error.
type failures struct {
	n     atomic.Int64
	first atomic.Pointer[error]
}

func (f *failures) add(err error) {
	f.n.Add(1)
	f.first.CompareAndSwap(nil, &err)
}

func (f *failures) err(total int) error {
	if n := f.n.Load(); n > 0 {
		return fmt.Errorf("%d of %d requests failed; first: %w", n, total, *f.first.Load())
	}
	return nil
}

// Drive runs b.N requests and reports and returns req/s. It also reports
// the process's CPU time per request (cpu-us/op: client, server and any
// in-process peers together) and the share of the cores it kept busy
// (cpu-busy): a case near 1 is bound by CPU, one well below it by waiting.
// A process outside this one, such as a redis-server, is not counted.
// Each client goroutine sends its first request to first, without a
// cookie, and the rest to path.
func (s *Server) Drive(b *testing.B, first, path string) float64 {
	b.Helper()
	if useWrk() {
		return s.driveWrk(b, first, path)
	}
	var fails failures
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism(max(1, (s.clients+procs-1)/procs))
	cpu0, cpuOK := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &session{s: s, url: s.URL + first, path: path}
		for pb.Next() {
			if err := c.do(); err != nil {
				fails.add(err)
			}
		}
	})
	elapsed := b.Elapsed()
	b.StopTimer()
	cpu1, cpuOK1 := cpuTime()
	if err := fails.err(b.N); err != nil {
		b.Fatal(err)
	}
	rps := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rps, "req/s")
	if cpu := (cpu1 - cpu0).Seconds(); cpuOK && cpuOK1 {
		b.ReportMetric(cpu*1e6/float64(b.N), "cpu-us/op")
		b.ReportMetric(cpu/elapsed.Seconds()/float64(procs), "cpu-busy")
	}
	return rps
}

// Baseline returns the req/s of s over d, with the same client goroutines
// as Drive, for a ratio measured next to the case it divides.
func (s *Server) Baseline(first, path string, d time.Duration) (float64, error) {
	if useWrk() {
		return s.baselineWrk(first, path, d)
	}
	var fails failures
	var total atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &session{s: s, url: s.URL + first, path: path}
			for time.Now().Before(deadline) {
				if err := c.do(); err != nil {
					fails.add(err)
				}
				total.Add(1)
			}
		}()
	}
	wg.Wait()
	n := int(total.Load())
	if err := fails.err(n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("httpload: no request completed")
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// MinRound is the smallest round worth a ratio: testing.B's first rounds
// only size b.N.
const MinRound = 1000

// Bracket runs round, a Drive of some case, and returns its req/s and, for
// a round of at least MinRound requests, that req/s over the mean req/s
// of base measured for d just before and just after it (0 for a shorter
// round).
func (base *Server) Bracket(b *testing.B, first, path string, d time.Duration, round func() float64) (rps, ratio float64) {
	b.Helper()
	if b.N < MinRound {
		return round(), 0
	}
	before, err := base.Baseline(first, path, d)
	if err != nil {
		b.Fatal(err)
	}
	rps = round()
	after, err := base.Baseline(first, path, d)
	if err != nil {
		b.Fatal(err)
	}
	return rps, rps / ((before + after) / 2)
}

// cpuTime is the user and system CPU time the process has used; ok is
// false if the system cannot say.
func cpuTime() (d time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
