package e2e

import (
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startHAProxy starts HAProxy with examples/failover/haproxy.cfg.tmpl in
// front of the 3 nodes on a free port and returns its base URL.
func startHAProxy(tb testing.TB, nodes []nodeSpec) string {
	tb.Helper()
	exe, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal("haproxy not found; .ci/run installs it")
		}
		tb.Skip("needs haproxy (apt-get install haproxy)")
	}
	tmpl, err := os.ReadFile("../examples/failover/haproxy.cfg.tmpl")
	if err != nil {
		tb.Fatal(err)
	}
	port := freePort(tb)
	r := strings.NewReplacer("@PORT@", strconv.Itoa(port), "@NODE1@", nodes[0].http, "@NODE2@", nodes[1].http, "@NODE3@", nodes[2].http)
	dir := tb.TempDir()
	conf := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(r.Replace(string(tmpl))), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-f", conf, "-db")
	log, _ := os.Create(filepath.Join(dir, "haproxy.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if dir := os.Getenv("COHORT_DEBUG_FAILOVER"); dir != "" {
			b, _ := os.ReadFile(filepath.Join(filepath.Dir(conf), "haproxy.log"))
			_ = os.WriteFile(filepath.Join(dir, "haproxy.log"), b, 0o644)
		}
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("haproxy not serving: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// result is one request of the failover client.
type result struct {
	start, end time.Time
	h          hit
	err        error
}

// BenchmarkFailover kills the node serving a session 20 times behind each
// balancer, with a client counting in the session all the while, and
// reports the time from SIGKILL to the first successful response, the
// failed requests per kill and the increments lost. Run it with
// -benchtime 1x: one iteration is 20 kills.
func BenchmarkFailover(b *testing.B) {
	for _, lb := range []string{"httpd", "haproxy"} {
		b.Run(lb, func(b *testing.B) {
			for b.Loop() {
				failoverKills(b, lb, 20)
			}
		})
	}
}

func failoverKills(b *testing.B, lb string, kills int) {
	specs := newSpecs(b, 3)
	join := seeds(specs)
	args := []string{"-manager", "delta", "-send-mode", "ack"}
	procs := map[string]*proc{}
	for _, sp := range specs {
		procs[sp.route] = startNode(b, sp, join, args...)
	}
	for _, r := range []string{"node1", "node2", "node3"} {
		waitState(b, r, "alive", procs["node1"], procs["node2"], procs["node3"])
	}
	var base string
	if lb == "httpd" {
		base = startApache(b, specs, false)
	} else {
		base = startHAProxy(b, specs)
	}

	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		jar, _ := cookiejar.New(nil)
		client := &http.Client{Jar: jar, Timeout: 15 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			h, err := getCounter(client, base+"/counter")
			mu.Lock()
			results = append(results, result{start: start, end: time.Now(), h: h, err: err})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	lastOK := func() (hit, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		for i := len(results) - 1; i >= 0; i-- {
			if results[i].err == nil {
				return results[i].h, results[i].end
			}
		}
		return hit{}, time.Time{}
	}
	for h, _ := lastOK(); h.count < 5; h, _ = lastOK() {
		time.Sleep(10 * time.Millisecond)
	}

	var firstOK []time.Duration
	var killLog []struct {
		node string
		at   time.Time
	}
	for range kills {
		h, _ := lastOK()
		victim := procs[h.node]
		killed := time.Now()
		killLog = append(killLog, struct {
			node string
			at   time.Time
		}{h.node, killed})
		_ = victim.cmd.Process.Kill()
		<-victim.done
		for {
			h2, at := lastOK()
			if at.After(killed) && h2.node != h.node {
				firstOK = append(firstOK, at.Sub(killed))
				break
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatalf("no successful request within 30s of killing %s", h.node)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		// The node comes back; the next kill waits until every node sees
		// it alive.
		for _, sp := range specs {
			if sp.route == h.node {
				procs[sp.route] = startNode(b, sp, join, args...)
			}
		}
		waitReady(b, procs[h.node])
		for _, r := range []string{"node1", "node2", "node3"} {
			waitState(b, r, "alive", procs["node1"], procs["node2"], procs["node3"])
		}
		// One failure at a time: the balancer sees the node back (HAProxy
		// checks every 500 ms; httpd retries a member in error after 1 s)
		// before the next kill.
		time.Sleep(1200 * time.Millisecond)
	}
	close(stop)
	<-done

	failed, lost, prev := 0, 0, 0
	for i, r := range results {
		if r.err != nil {
			failed++
			if os.Getenv("COHORT_DEBUG_FAILOVER") != "" && failed <= 5 {
				b.Logf("failed %s-%s: %v", r.start.Format("15:04:05.000"), r.end.Format("05.000"), r.err)
			}
			continue
		}
		if r.h.count <= prev {
			lost += prev - r.h.count + 1
			b.Logf("count %d after %d: %+v", r.h.count, prev, r.h)
			if os.Getenv("COHORT_DEBUG_FAILOVER") != "" {
				for _, k := range killLog {
					b.Logf("kill %s at %s", k.node, k.at.Format("15:04:05.000"))
				}
				for _, q := range results[max(0, i-40):min(len(results), i+5)] {
					b.Logf("  %s-%s %d %s %v", q.start.Format("15:04:05.000"), q.end.Format("05.000"), q.h.count, q.h.node, q.err)
				}
			}
		}
		prev = r.h.count
	}
	slices.Sort(firstOK)
	var sum time.Duration
	for _, d := range firstOK {
		sum += d
	}
	b.ReportMetric(float64(kills), "kills")
	b.ReportMetric(float64(len(results)), "requests")
	b.ReportMetric(float64(failed)/float64(kills), "failed/kill")
	b.ReportMetric(float64(lost), "lost-increments")
	b.ReportMetric(float64(sum.Milliseconds())/float64(len(firstOK)), "first-ok-mean-ms")
	b.ReportMetric(float64(firstOK[len(firstOK)*9/10].Milliseconds()), "first-ok-p90-ms")
	b.ReportMetric(float64(firstOK[len(firstOK)-1].Milliseconds()), "first-ok-max-ms")
}
