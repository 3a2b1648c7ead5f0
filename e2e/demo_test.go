package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freeRange returns a port base such that base..base+23 are free on
// 127.0.0.1, for scripts that lay their ports out from a base.
func freeRange(t testing.TB) int {
	t.Helper()
	for range 20 {
		base := freePort(t) // below the ephemeral range, as every port here
		ok := true
		for p := base; p <= base+23 && ok; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free range of ports")
	return 0
}

// demoTools skips (or, in CI, fails) a test of demo.sh without the tools
// it needs.
func demoTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"curl", "haproxy", "/usr/sbin/apache2"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found; .ci/run installs it", tool)
			}
			t.Skipf("the failover demo needs %s", tool)
		}
	}
}

// TestFailoverDemo runs examples/failover/demo.sh with the real balancers:
// it exits 0 only when the count goes on after the kill, behind Apache
// httpd and behind HAProxy, and the restarted node has the state.
func TestFailoverDemo(t *testing.T) {
	demoTools(t)
	// A TMPDIR with a space in it, as on a machine whose user names or
	// home directories have one: the script's work directory goes into
	// httpd's configuration.
	tmp := filepath.Join(t.TempDir(), "tmp dir")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "../examples/failover/demo.sh", "-frequency", "200ms", "-drop-time", "1s", "both")
	cmd.Env = append(os.Environ(), "BIN="+nodeBinary(t), fmt.Sprintf("BASE=%d", freeRange(t)), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	t.Logf("demo.sh:\n%s", out)
	if err != nil {
		t.Fatalf("demo.sh: %v", err)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("demo.sh left %d files in TMPDIR", len(left))
	}
	for _, want := range []string{
		"== apache: kill -9", "== haproxy: kill -9", "the cookie's route changed",
		"failure detection: ", "asked directly: count=9", "== done",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestFailoverDemoCleanup stops demo.sh behind Apache httpd midway, with
// Ctrl-C (SIGINT to its process group, as the terminal sends it: httpd and
// the nodes get it too) or by stopping httpd under it: either way the
// script cleans up, leaving no node or httpd running and no work directory.
func TestFailoverDemoCleanup(t *testing.T) {
	demoTools(t)
	if signal.Ignored(os.Interrupt) {
		// Started in the background by a shell, this process ignores SIGINT
		// and so would the script: let it start with the default.
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt)
		defer signal.Stop(c)
	}
	for _, tc := range []struct {
		name string
		stop func(t *testing.T, script int, tmp string)
	}{
		{"ctrl-c", func(t *testing.T, script int, _ string) {
			if err := syscall.Kill(-script, syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
		}},
		{"balancer-dies", func(t *testing.T, _ int, tmp string) {
			pidFiles, _ := filepath.Glob(filepath.Join(tmp, "*", "httpd.pid"))
			if len(pidFiles) != 1 {
				t.Fatalf("httpd pid files %q, want one", pidFiles)
			}
			b, err := os.ReadFile(pidFiles[0])
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { demoCleanup(t, tc.stop) })
	}
}

func demoCleanup(t *testing.T, stop func(t *testing.T, script int, tmp string)) {
	tmp := t.TempDir()
	base := freeRange(t)
	out := filepath.Join(t.TempDir(), "demo.log")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("bash", "../examples/failover/demo.sh", "-frequency", "200ms", "-drop-time", "1s", "apache")
	cmd.Env = append(os.Environ(), "BIN="+nodeBinary(t), fmt.Sprintf("BASE=%d", base), "TMPDIR="+tmp)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}) // closed once the script has exited
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// Whatever the script left in its process group goes too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	log := func() string { b, _ := os.ReadFile(out); return string(b) }
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(log(), "a session counts through the balancer") {
		if time.Now().After(deadline) {
			t.Fatalf("demo.sh did not get to the balancer:\n%s", log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop(t, cmd.Process.Pid, tmp)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("demo.sh still running 60s after it was stopped:\n%s", log())
	}
	left, _ := os.ReadDir(tmp)
	for _, e := range left {
		t.Errorf("demo.sh left %s behind in TMPDIR", e.Name())
	}
	// The nodes were killed with SIGKILL or stopped on their own: their
	// ports close at once; httpd's a moment after its last worker.
	for _, p := range []int{base, base + 1, base + 2, base + 3} {
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(end) {
				t.Errorf("%s still answers after demo.sh ended", addr)
				break
			}
		}
	}
	if t.Failed() {
		t.Logf("demo.sh:\n%s", log())
	}
}
