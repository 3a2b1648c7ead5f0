package e2e

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRollingRestartBehindApache restarts all three nodes, one after the
// other, with examples/rolling-restart/rolling-restart.sh, while clients
// count in their sessions through a real Apache httpd that health-checks
// /readyz: no request fails and no increment is lost.
func TestRollingRestartBehindApache(t *testing.T) {
	for _, kind := range []string{"delta", "backup"} {
		t.Run(kind, func(t *testing.T) { rollingRestart(t, kind) })
	}
}

func rollingRestart(t *testing.T, kind string) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl not found; .ci/run installs it")
		}
		t.Skip("the rolling restart script needs curl")
	}
	bin := nodeBinary(t)
	dir := t.TempDir()
	specs := newSpecs(t, 3)
	join := seeds(specs)
	var nodes []string
	for _, sp := range specs {
		pidFile := filepath.Join(dir, sp.route+".pid")
		args := []string{
			"-route", sp.route, "-http", sp.http, "-bind", sp.bind, "-replication", sp.repl,
			"-join", join, "-multicast", "off", "-frequency", "100ms", "-drop-time", "1s",
			"-manager", kind, "-send-mode", "ack", "-drain-time", "2500ms",
		}
		start := fmt.Sprintf("%s %s >>%s 2>&1 & echo $! >%s", bin, strings.Join(args, " "),
			filepath.Join(dir, sp.route+".log"), pidFile)
		stop := fmt.Sprintf("kill -TERM $(cat %s)", pidFile)
		nodes = append(nodes, "http://"+sp.http+"|"+stop+"|"+start)
		if out, err := exec.Command("bash", "-c", start).CombinedOutput(); err != nil {
			t.Fatalf("start %s: %v\n%s", sp.route, err, out)
		}
		t.Cleanup(func() { killPidFile(pidFile) })
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, sp := range specs {
				b, _ := os.ReadFile(filepath.Join(dir, sp.route+".log"))
				t.Logf("%s log:\n%s", sp.route, b)
			}
		}
	})
	for _, sp := range specs {
		waitReady(t, &proc{route: sp.route, http: sp.http})
	}
	base := startApache(t, specs, true)

	// Clients count in their sessions until told to stop.
	const clients = 4
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		requests int
	)
	stop := make(chan struct{})
	for c := range clients {
		wg.Go(func() {
			jar, _ := cookiejar.New(nil)
			client := &http.Client{Jar: jar, Timeout: 15 * time.Second}
			want := 1
			for {
				select {
				case <-stop:
					return
				default:
				}
				h, err := getCounter(client, base+"/counter")
				mu.Lock()
				requests++
				switch {
				case err != nil:
					failures = append(failures, fmt.Sprintf("client %d, count %d: %v", c, want, err))
				case h.count != want:
					failures = append(failures, fmt.Sprintf("client %d: count %d, want %d (%+v)", c, h.count, want, h))
					want = h.count + 1
				default:
					want++
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	script := exec.Command("bash", "../examples/rolling-restart/rolling-restart.sh")
	script.Args = append(script.Args, nodes...)
	script.Env = append(os.Environ(), "TIMEOUT=60")
	out, err := script.CombinedOutput()
	t.Logf("rolling-restart.sh:\n%s", out)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("rolling-restart.sh: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d requests during the rolling restart", requests)
	if requests < 100 {
		t.Errorf("only %d requests went through", requests)
	}
	for _, f := range failures {
		t.Error(f)
	}
	// Every node was restarted: each log shows two starts.
	for _, sp := range specs {
		b, _ := os.ReadFile(filepath.Join(dir, sp.route+".log"))
		if n := strings.Count(string(b), `msg=starting`); n != 2 {
			t.Errorf("%s started %d times, want 2", sp.route, n)
		}
	}
}

// killPidFile kills the process whose pid the file holds, and waits a
// little for it to go.
func killPidFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 50 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
