package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
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

// TestFailoverDemo runs examples/failover/demo.sh with the real balancers:
// it exits 0 only when the count goes on after the kill, behind Apache
// httpd and behind HAProxy, and the restarted node has the state.
func TestFailoverDemo(t *testing.T) {
	for _, tool := range []string{"curl", "haproxy", "/usr/sbin/apache2"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found; .ci/run installs it", tool)
			}
			t.Skipf("the failover demo needs %s", tool)
		}
	}
	cmd := exec.Command("bash", "../examples/failover/demo.sh", "-frequency", "200ms", "-drop-time", "1s", "both")
	cmd.Env = append(os.Environ(), "BIN="+nodeBinary(t), fmt.Sprintf("BASE=%d", freeRange(t)))
	out, err := cmd.CombinedOutput()
	t.Logf("demo.sh:\n%s", out)
	if err != nil {
		t.Fatalf("demo.sh: %v", err)
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
