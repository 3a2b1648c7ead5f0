package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// nodeBinary builds cmd/node once per test run.
// TestMain removes the binary nodeBinary built once the tests are done.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func nodeBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cohort-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "cohort-node")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/node").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freePort returns a port free on 127.0.0.1 for both TCP and UDP, below
// the kernel's ephemeral range (32768 and up on Linux). Nodes restart on
// the same ports; a port of the ephemeral range, once released, can be
// taken meanwhile by any outgoing connection of the tests running in
// parallel, while ports below it are only ever handed out here.
func freePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 200 {
		port := 10000 + rand.IntN(22000)
		if portsUsed[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			portsUsed[port] = true
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

var (
	portMu    sync.Mutex
	portsUsed = map[int]bool{} // handed out in this test process
)

// proc is one running cohort-node.
type proc struct {
	route, http, bind string
	cmd               *exec.Cmd
	done              chan struct{} // closed when the process has exited
	err               error         // its exit status, once done is closed
	log               *strings.Builder
	logMu             *sync.Mutex
}

// logText returns what the process has logged so far.
func (p *proc) logText() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

type nodeSpec struct {
	route, http, bind, repl string
	netns                   string // network namespace to run in, if any
}

func newSpecs(t testing.TB, n int) []nodeSpec {
	specs := make([]nodeSpec, n)
	for i := range specs {
		specs[i] = nodeSpec{
			route: fmt.Sprintf("node%d", i+1),
			http:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			bind:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			repl:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
	}
	return specs
}

func seeds(specs []nodeSpec) string {
	var s []string
	for _, sp := range specs {
		s = append(s, sp.bind)
	}
	return strings.Join(s, ",")
}

// startNode starts a node with fast failure detection and no multicast.
func startNode(t testing.TB, sp nodeSpec, join string, extra ...string) *proc {
	t.Helper()
	args := append([]string{
		"-route", sp.route, "-http", sp.http, "-bind", sp.bind, "-replication", sp.repl,
		"-join", join, "-multicast", "off", "-frequency", "100ms", "-drop-time", "1s",
	}, extra...)
	cmd := exec.Command(nodeBinary(t), args...)
	if sp.netns != "" {
		// ip netns exec execs the node: the process is the node itself.
		cmd = exec.Command("ip", append([]string{"netns", "exec", sp.netns, nodeBinary(t)}, args...)...)
	}
	var log strings.Builder
	mu := new(sync.Mutex)
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return log.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{route: sp.route, http: sp.http, bind: sp.bind, cmd: cmd, done: make(chan struct{}), log: &log, logMu: mu}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			mu.Lock()
			t.Logf("%s log:\n%s", sp.route, log.String())
			mu.Unlock()
		}
	})
	return p
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type status struct {
	Route   string `json:"route"`
	Manager string `json:"manager"`
	Members []struct {
		Route, Address, State string
	} `json:"members"`
	Sessions    struct{ Total, Primary, Backup int } `json:"sessions"`
	Replication struct {
		Conflicts int64 `json:"conflicts"`
	} `json:"replication"`
}

func getStatus(httpAddr string) (*status, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/cluster/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

// states returns route -> state as p reports it.
func states(p *proc) (map[string]string, error) {
	st, err := getStatus(p.http)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range st.Members {
		out[m.Route] = m.State
	}
	return out, nil
}

// waitState polls until each of procs reports route in state want.
func waitState(t testing.TB, route, want string, procs ...*proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, p := range procs {
		for {
			got, err := states(p)
			if err == nil && got[route] == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s reports %s as %q (err %v), want %q", p.route, route, got[route], err, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// startThree starts node1..node3 on free ports, seeded with each other,
// and waits until each sees all three alive.
func startThree(t testing.TB, extra ...string) (specs []nodeSpec, join string, n1, n2, n3 *proc) {
	t.Helper()
	specs = newSpecs(t, 3)
	join = seeds(specs)
	n1 = startNode(t, specs[0], join, extra...)
	n2 = startNode(t, specs[1], join, extra...)
	n3 = startNode(t, specs[2], join, extra...)
	for _, r := range []string{"node1", "node2", "node3"} {
		waitState(t, r, "alive", n1, n2, n3)
	}
	return specs, join, n1, n2, n3
}

func TestNodesFailLeaveAndRejoin(t *testing.T) {
	specs, join, n1, n2, n3 := startThree(t)
	st, err := getStatus(n1.http)
	if err != nil {
		t.Fatal(err)
	}
	if st.Route != "node1" || st.Manager != "delta" || len(st.Members) != 3 {
		t.Errorf("status = %+v", st)
	}
	checkCounter(t, n1)

	// SIGKILL: the peers declare the node dead.
	if err := n3.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-n3.done
	waitState(t, "node3", "dead", n1, n2)

	// SIGTERM: a graceful leave, reported as such, and a clean exit.
	stopGracefully(t, n2, 20*time.Second)
	waitState(t, "node2", "left", n1)

	// The killed node restarts with its route and ports and is alive again.
	n3 = startNode(t, specs[2], join)
	waitState(t, "node3", "alive", n1, n3)
	waitState(t, "node1", "alive", n3)
}

func TestBadFlagIsReported(t *testing.T) {
	out, err := exec.Command(nodeBinary(t), "-drop-time", "100ms").CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2", err)
	}
	if !strings.Contains(string(out), "-drop-time") || !strings.Contains(string(out), "at least twice -frequency") {
		t.Errorf("output %q does not name the flag and the accepted form", out)
	}
}

// stopGracefully sends p SIGTERM and checks that it exits 0 within limit.
func stopGracefully(t *testing.T, p *proc, limit time.Duration) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want 0", p.route, p.err)
		}
	case <-time.After(limit):
		t.Fatalf("%s did not exit after SIGTERM", p.route)
	}
}

// checkCounter drives /counter on p with a cookie jar and checks the exact
// body format and the count.
func checkCounter(t *testing.T, p *proc) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	var id string
	for i := 1; i <= 3; i++ {
		resp, err := c.Get("http://" + p.http + "/counter")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, ck := range resp.Cookies() {
			if ck.Name == "JSESSIONID" {
				id = ck.Value
			}
		}
		if want := fmt.Sprintf("count=%d node=%s id=%s\n", i, p.route, id); string(b) != want {
			t.Errorf("GET /counter = %q, want %q", b, want)
		}
	}
	if !strings.HasSuffix(id, "."+p.route) {
		t.Errorf("session id %q does not end with the route", id)
	}
}
