package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cohort-cluster/cohort/internal/testlog"
	"github.com/cohort-cluster/cohort/membership"
	"io"
	"log/slog"
	"net"
	"net/http"
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

// runMainEnv makes the test binary run the node's main instead of the
// tests, so that tests can start real node processes.
const runMainEnv = "CMD_NODE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// nodeEnv is the environment of a node process: this one's, less any
// COHORT_ setting, plus extra.
func nodeEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COHORT_") {
			env = append(env, kv)
		}
	}
	return append(append(env, runMainEnv+"=1"), extra...)
}

// proc is a node process.
type proc struct {
	cmd  *exec.Cmd
	log  *testlog.Buffer
	done chan struct{}
	err  error // once done
}

// startProc starts the node binary with args; stderr nil means a log
// buffer. Cleanup kills the process if it is still running.
func startProc(t *testing.T, stderr io.Writer, env []string, args ...string) *proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: exec.Command(self, args...), log: &testlog.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = nodeEnv(env...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if stderr != nil {
		p.cmd.Stderr = stderr
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s log:\n%s", strings.Join(args, " "), p.log.String())
		}
	})
	return p
}

// wait waits up to d for the process to exit.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("process still running after %s", d)
		return nil
	}
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handedOut holds the ports freePort has returned: a port is free until
// the node given it binds it, so the kernel may offer it again meanwhile.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// freePort returns a port free for TCP and UDP on 127.0.0.1, and free
// too at port+1000 when both is set (for a derived replication port). It
// never returns a port, or a derived one, that it returned before.
func freePort(t *testing.T, both bool) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = make(map[int]bool)
	}
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if handedOut.ports[p] || both && handedOut.ports[p+1000] {
			continue
		}
		if portsFree(p) && (!both || p+1000 <= 65535 && portsFree(p+1000)) {
			handedOut.ports[p] = true
			if both {
				handedOut.ports[p+1000] = true
			}
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// portsFree reports whether TCP and UDP port p on 127.0.0.1 are free.
func portsFree(ports ...int) bool {
	for _, p := range ports {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		_ = l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		_ = u.Close()
	}
	return true
}

func httpStatus(addr, path string) int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func ready(addr string) func() bool {
	return func() bool { return httpStatus(addr, "/readyz") == http.StatusOK }
}

// nodeArgs are the flags of a fast node on 127.0.0.1 without multicast.
func nodeArgs(route string, httpPort, bindPort int, extra ...string) []string {
	return append([]string{
		"-route", route, "-http", fmt.Sprintf("127.0.0.1:%d", httpPort), "-bind", fmt.Sprintf("127.0.0.1:%d", bindPort),
		"-multicast", "off", "-frequency", "100ms", "-drop-time", "1s",
	}, extra...)
}

// jsonLines decodes a JSON log, failing on a line that is not one record.
func jsonLines(t *testing.T, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		if n := topLevelCount(sc.Bytes(), "route"); n != 1 {
			t.Errorf("log line has route %d times, want once: %s", n, sc.Text())
		}
		out = append(out, rec)
	}
	return out
}

// topLevelCount counts the keys named key in a JSON object; a decoder to
// a map keeps only the last of duplicates.
func topLevelCount(obj []byte, key string) int {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0
	}
	n := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return n
		}
		if tok == key {
			n++
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return n
		}
	}
	return n
}

// A node whose log pipe breaks goes on and leaves the cluster when told
// to stop (its peer sees it leave, not fail); a JSON log carries route on
// every line, the start line gives durations as strings, and settings the
// manager ignores are reported; -http 0.0.0.0 is advertised with the
// -bind IP.
func TestNodeLeavesWithBrokenLogPipe(t *testing.T) {
	httpA, bindA := freePort(t, false), freePort(t, true)
	httpB, bindB := freePort(t, false), freePort(t, true)
	a := startProc(t, nil, []string{"COHORT_BACKUPS=2", "COHORT_DROPTIME=5s"}, nodeArgs("a", httpA, bindA,
		"-http", fmt.Sprintf("0.0.0.0:%d", httpA), "-log-format", "json")...)
	addrA := fmt.Sprintf("127.0.0.1:%d", httpA)
	waitFor(t, 20*time.Second, "node a ready", ready(addrA))

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := startProc(t, w, nil, nodeArgs("b", httpB, bindB, "-join", fmt.Sprintf("127.0.0.1:%d", bindA))...)
	_ = w.Close()
	go func() { _, _ = io.Copy(io.Discard, r) }()
	addrB := fmt.Sprintf("127.0.0.1:%d", httpB)
	waitFor(t, 20*time.Second, "node b ready", ready(addrB))
	waitFor(t, 10*time.Second, "a to see b", func() bool { return strings.Contains(a.log.String(), `"msg":"member joined"`) })
	_ = r.Close() // b's next log line meets a broken pipe
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.wait(t, 15*time.Second); err != nil {
		t.Errorf("node b with a broken log pipe: %v, want a clean exit", err)
	}
	waitFor(t, 10*time.Second, "a to see b leave", func() bool { return strings.Contains(a.log.String(), `"msg":"member left"`) })

	var st struct {
		Members []struct {
			Route, HTTP string
			Local       bool
		}
	}
	resp, err := http.Get("http://" + addrA + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.Local && m.HTTP != addrA {
			t.Errorf("-http 0.0.0.0:%d -bind 127.0.0.1:%d advertises HTTP %q, want %s", httpA, bindA, m.HTTP, addrA)
		}
	}

	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.wait(t, 15*time.Second); err != nil {
		t.Errorf("node a: %v", err)
	}
	var starting, ignored, mistyped bool
	for _, rec := range jsonLines(t, a.log.String()) {
		if rec["route"] != "a" {
			t.Errorf("log line with route %v, want a: %v", rec["route"], rec)
		}
		switch rec["msg"] {
		case "member failed":
			t.Errorf("a saw b fail: %v", rec)
		case "starting":
			starting = true
			cfg, _ := rec["config"].(map[string]any)
			for k, want := range map[string]any{"frequency": "100ms", "drop_time": "1s", "session_timeout": "30m0s",
				"drain_time": "0s", "max_sessions": 0.0, "log_level": "INFO", "log_format": "json"} {
				if cfg[k] != want {
					t.Errorf("starting: config.%s = %#v, want %#v", k, cfg[k], want)
				}
			}
		case "setting ignored":
			ignored = rec["flag"] == "-backups" && strings.Contains(rec["source"].(string), "COHORT_BACKUPS") && rec["reason"] != ""
		case "environment variable ignored: no flag of that name":
			mistyped = rec["variable"] == "COHORT_DROPTIME" && rec["did_you_mean"] == "COHORT_DROP_TIME"
		}
	}
	if !starting || !ignored || !mistyped {
		t.Errorf("a's log lacks the starting line (%v), the warning about COHORT_BACKUPS (%v) or the one about COHORT_DROPTIME (%v)",
			starting, ignored, mistyped)
	}
}

// A second SIGTERM during the drain stops the node at once.
func TestSecondSignalStopsNow(t *testing.T) {
	httpPort, bindPort := freePort(t, false), freePort(t, true)
	p := startProc(t, nil, nil, nodeArgs("n1", httpPort, bindPort, "-drain-time", "30s")...)
	waitFor(t, 20*time.Second, "ready", ready(fmt.Sprintf("127.0.0.1:%d", httpPort)))
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the drain", func() bool { return strings.Contains(p.log.String(), "draining") })
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	err := p.wait(t, 5*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("after a second signal: %v, want exit status 2", err)
	}
	if log := p.log.String(); !strings.Contains(log, "second signal: stopping now") || strings.Contains(log, "cohort-node:") {
		t.Errorf("log lacks the second signal line, or repeats it as an error:\n%s", log)
	}
	t.Logf("stopped %s after the second signal", time.Since(start).Round(time.Millisecond))
}

// With -log-format json the error that stops the node is one JSON line.
func TestFatalErrorJSON(t *testing.T) {
	p := startProc(t, nil, nil, "-route", "n1", "-log-format", "json", "-http", "127.0.0.1:http")
	err := p.wait(t, 10*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("bad -http: %v, want exit status 2", err)
	}
	recs := jsonLines(t, p.log.String())
	if len(recs) != 1 || recs[0]["level"] != "ERROR" || !strings.Contains(fmt.Sprint(recs[0]["err"]), "-http") {
		t.Errorf("log = %q, want one JSON error record naming -http", p.log.String())
	}

	p = startProc(t, nil, nil, "-route", "n1", "-http", "127.0.0.1:http")
	_ = p.wait(t, 10*time.Second)
	if log := p.log.String(); !strings.HasPrefix(log, "cohort-node: invalid value") || strings.Count(log, "\n") != 1 {
		t.Errorf("text log = %q, want one cohort-node: line", log)
	}
}

func TestVersion(t *testing.T) {
	p := startProc(t, nil, nil, "-version")
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("-version: %v", err)
	}
	if out := p.log.String(); !strings.HasPrefix(out, "cohort-node ") || strings.Count(out, "\n") != 1 {
		t.Errorf("-version printed %q, want one cohort-node line", out)
	}
}

// A port that stays taken is retried, logged once, and named by its flag.
func TestStartClusterPortInUse(t *testing.T) {
	for _, taken := range []string{"bind", "replication"} {
		t.Run(taken, func(t *testing.T) {
			bindPort := freePort(t, true)
			held := bindPort
			if taken == "replication" {
				held += 1000
			}
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", held))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			cfg, err := parseFlags(nodeArgs("n1", freePort(t, false), bindPort), env(nil), "testhost", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var log testlog.Buffer
			logger := newLogger(cfg, &log)
			c, err := startCluster(context.Background(), cfg, logger, 700*time.Millisecond)
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("startCluster with a port taken succeeded")
			}
			// The replication port was not given: it is named as derived
			// from -bind, not as a flag the operator did not set.
			want := "flag -bind"
			if taken == "replication" {
				want = "replication port derived from -bind"
			}
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), strconv.Itoa(held)) {
				t.Errorf("error %q does not say %q and port %d", err, want, held)
			}
			if n := strings.Count(err.Error(), ":"+strconv.Itoa(held)); n != 1 {
				t.Errorf("error %q names port %d %d times, want once", err, held, n)
			}
			if !errors.Is(err, syscall.EADDRINUSE) && taken == "replication" {
				t.Errorf("error %q does not wrap the listener's EADDRINUSE", err)
			}
			if n := strings.Count(log.String(), "a port is still in use"); n != 1 {
				t.Errorf("retry logged %d times, want once:\n%s", n, log.String())
			}
		})
	}
}

// A second node with a route already in use stops with an error that
// names -route, the setting to change.
func TestStartClusterRouteTaken(t *testing.T) {
	first := freePort(t, true)
	cfg, err := parseFlags(nodeArgs("n1", freePort(t, false), first), env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c, err := startCluster(context.Background(), cfg, newLogger(cfg, io.Discard), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	join := fmt.Sprintf("127.0.0.1:%d", first)
	cfg2, err := parseFlags(nodeArgs("n1", freePort(t, false), freePort(t, true), "-join", join), env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := startCluster(context.Background(), cfg2, newLogger(cfg2, io.Discard), time.Second)
	if err == nil {
		_ = c2.Close(context.Background())
		t.Fatal("a second node with route n1 started")
	}
	if !strings.Contains(err.Error(), `flag -route "n1"`) || !strings.Contains(err.Error(), join) || !errors.As(err, new(*membership.RouteConflictError)) {
		t.Errorf("error %q does not name -route and the node that has the route", err)
	}
}

// Every line of the node's logger carries route once, also through a
// component's logger that adds its own.
func TestLoggerRoute(t *testing.T) {
	var buf bytes.Buffer
	logger := newLogger(&config{Route: "n1", LogFormat: "json", LogLevel: slog.LevelInfo}, &buf)
	logger.Info("plain")
	logger.With("component", "membership", "route", "n1").Info("component")
	logger.With("component", "cluster").Info("cluster")
	slog.NewLogLogger(logger.Handler(), slog.LevelWarn).Print("from log.Logger")
	recs := jsonLines(t, buf.String())
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4:\n%s", len(recs), buf.String())
	}
	for _, rec := range recs {
		if rec["route"] != "n1" {
			t.Errorf("record %v: route %v, want n1", rec["msg"], rec["route"])
		}
	}

	// A route inside a group is the group's: the node's is still added.
	buf.Reset()
	logger.WithGroup("peer").With("route", "n2").Info("grouped")
	var rec struct {
		Route string
		Peer  struct{ Route string }
	}
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec.Route != "n1" || rec.Peer.Route != "n2" {
		t.Errorf("grouped record %s: %v; want route n1 and peer.route n2", buf.Bytes(), err)
	}

	// Durations read as in the text format, from any component.
	buf.Reset()
	logger.With("component", "membership", "route", "n1").Info("timed", "drop_time", 1500*time.Millisecond)
	var timed struct {
		DropTime string `json:"drop_time"`
	}
	if err := json.Unmarshal(buf.Bytes(), &timed); err != nil || timed.DropTime != "1.5s" {
		t.Errorf("timed record %s: %v; want drop_time \"1.5s\"", buf.Bytes(), err)
	}
}

// A standard node with -session-file keeps its sessions across a graceful
// restart: the count goes on where it stopped.
func TestStandardSessionFileSurvivesRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sessions")
	httpPort, bindPort := freePort(t, false), freePort(t, true)
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	args := nodeArgs("s1", httpPort, bindPort, "-manager", "standard", "-session-file", file)
	var cookie string
	count := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/counter", nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		for _, k := range resp.Cookies() {
			cookie = k.Name + "=" + k.Value
		}
		body, _ := io.ReadAll(resp.Body)
		n, _, _ := strings.Cut(string(body), " ")
		return n
	}
	stop := func(p *proc) {
		t.Helper()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.wait(t, 15*time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
	}

	p := startProc(t, nil, nil, args...)
	waitFor(t, 20*time.Second, "node ready", ready(addr))
	// It has no replication channel, and tells no one an address for one.
	if st := getStatus(t, addr); len(st.Members) != 1 || st.Members[0].Replication != "" {
		t.Errorf("status members %+v, want s1 alone without a replication address", st.Members)
	}
	if a, b := count(), count(); a != "count=1" || b != "count=2" {
		t.Fatalf("counts %q %q, want count=1 count=2", a, b)
	}
	stop(p)
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("no session file after a graceful stop: %v", err)
	}

	p = startProc(t, nil, nil, args...)
	waitFor(t, 20*time.Second, "node ready again", ready(addr))
	if got := count(); got != "count=3" {
		t.Errorf("after the restart: %q, want count=3", got)
	}
	stop(p)
}

// statusMembers are the members in a node's GET /cluster/status.
type statusMembers struct {
	Members []struct{ Route, Address, State, Replication, HTTP string }
}

// getStatus reads the members in the node's GET /cluster/status.
func getStatus(t *testing.T, addr string) statusMembers {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusMembers
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// brokenListener is a listener whose Accept fails for good, as one does
// when the kernel runs out of memory for new connections (ENOBUFS).
type brokenListener struct{ net.Listener }

func (l brokenListener) Accept() (net.Conn, error) {
	return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: syscall.ENOBUFS}
}

// A node whose HTTP server stops on its own still stops the cluster and
// returns the server's error, rather than waiting for it a second time.
func TestServeReturnsWhenHTTPFails(t *testing.T) {
	defer func(f func(string, string) (net.Listener, error)) { listenHTTP = f }(listenHTTP)
	listenHTTP = func(network, addr string) (net.Listener, error) {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		return brokenListener{l}, nil
	}
	cfg, err := parseFlags(nodeArgs("n1", freePort(t, false), 0), env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log, err := serveWithin(t, cfg, 20*time.Second, "after its HTTP server stopped")
	if !errors.Is(err, syscall.ENOBUFS) {
		t.Errorf("serve = %v, want the accept error", err)
	}
	if !strings.Contains(log.String(), "http server stopped") {
		t.Errorf("log lacks the server's stop:\n%s", log.String())
	}
}

// serveWithin runs serve with cfg and returns its log and error, failing
// the test if it is still running after d.
func serveWithin(t *testing.T, cfg *config, d time.Duration, why string) (*testlog.Buffer, error) {
	t.Helper()
	log := new(testlog.Buffer)
	done := make(chan error, 1)
	go func() { done <- serve(context.Background(), cfg, newLogger(cfg, log)) }()
	select {
	case err := <-done:
		return log, err
	case <-time.After(d):
		t.Fatalf("serve still running, %s:\n%s", why, log.String())
		return nil, nil
	}
}

// A listener that cannot open on its address, here a TEST-NET address
// that is no host's, stops the start at once with one line that names the
// flag the address came from and what to set it to.
func TestListenErrorNamesFlag(t *testing.T) {
	const notHere = "192.0.2.1"
	free := func() string { return fmt.Sprintf("127.0.0.1:%d", freePort(t, false)) }
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"derived replication", []string{"-bind", notHere + ":7946"}, nil,
			"flag -bind: cannot listen on 192.0.2.1:8946, the replication address derived from it: 192.0.2.1 is not an IP address of this host; set it to"},
		{"derived replication from env", nil, map[string]string{"COHORT_BIND": notHere + ":7946"},
			"COHORT_BIND (flag -bind): cannot listen on 192.0.2.1:8946, the replication address derived from it: 192.0.2.1 is not"},
		{"gossip", []string{"-bind", notHere + ":7946", "-replication", free()}, nil,
			"flag -bind: cannot listen on 192.0.2.1:7946: 192.0.2.1 is not an IP address of this host; set it to"},
		{"gossip standard", []string{"-bind", notHere + ":7946", "-manager", "standard"}, nil,
			"flag -bind: cannot listen on 192.0.2.1:7946: 192.0.2.1 is not an IP address of this host; set it to"},
		{"replication", []string{"-bind", fmt.Sprintf("127.0.0.1:%d", freePort(t, false)), "-replication", notHere + ":8946"}, nil,
			"flag -replication: cannot listen on 192.0.2.1:8946: 192.0.2.1 is not an IP address of this host; set it to"},
		{"http", []string{"-bind", "127.0.0.1:0", "-http", notHere + ":8080"}, nil,
			"flag -http: cannot listen on 192.0.2.1:8080: 192.0.2.1 is not an IP address of this host; set it to an IP address of one of this host's interfaces (ip addr lists them), or 0.0.0.0:8080 for all of them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-route", "n1", "-http", free(), "-multicast", "off", "-frequency", "100ms", "-drop-time", "1s"}, tc.args...)
			cfg, err := parseFlags(args, env(tc.env), "testhost", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			_, err = serveWithin(t, cfg, portRetry/2, "retrying an address that is not this host's")
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("serve = %v\nwant one line starting %q", err, tc.want)
			}
			if !errors.Is(err, syscall.EADDRNOTAVAIL) && !strings.Contains(fmt.Sprint(errors.Unwrap(err)), "cannot assign") {
				t.Errorf("error %q does not wrap the listener's", err)
			}
		})
	}

	// The HTTP listener opened once the node is ready fails the same way.
	t.Run("http when ready", func(t *testing.T) {
		defer func(f func(string, string) (net.Listener, error)) { listenHTTP = f }(listenHTTP)
		listenHTTP = func(network, addr string) (net.Listener, error) {
			return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EADDRNOTAVAIL)}
		}
		cfg, err := parseFlags(nodeArgs("n1", freePort(t, false), 0), env(nil), "testhost", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		err = serve(context.Background(), cfg, newLogger(cfg, io.Discard))
		if want := "flag -http: cannot listen on " + cfg.HTTP + ": 127.0.0.1 is not an IP address of this host; set it to"; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("serve = %v, want %q...", err, want)
		}
	})

	// The node exits with status 2 and the error as its last line.
	t.Run("process", func(t *testing.T) {
		p := startProc(t, nil, nil, "-route", "n1", "-http", free(), "-bind", notHere+":7946", "-multicast", "off")
		err := p.wait(t, portRetry/2)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("-bind %s: %v, want exit status 2", notHere, err)
		}
		lines := strings.Split(strings.TrimSpace(p.log.String()), "\n")
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "cohort-node: flag -bind: cannot listen on 192.0.2.1:8946") {
			t.Errorf("last line %q, want the error naming -bind", last)
		}
	})
}

// A SIGTERM while the start waits for a port still in use stops the node
// as a SIGTERM after the start does: exit status 0, no error.
func TestSignalWhileWaitingForPort(t *testing.T) {
	bindPort := freePort(t, true)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", bindPort))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := startProc(t, nil, nil, nodeArgs("n1", freePort(t, false), bindPort)...)
	waitFor(t, 10*time.Second, "the retry", func() bool { return strings.Contains(p.log.String(), "a port is still in use; retrying") })
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// Well before the retry ends: an exit now is the signal's.
	if err := p.wait(t, portRetry/2); err != nil {
		t.Errorf("SIGTERM while waiting for the port: %v, want exit status 0", err)
	}
	if log := p.log.String(); strings.Contains(log, "cohort-node:") || !strings.Contains(log, "msg=stopped") {
		t.Errorf("log reports an error, or lacks the stop:\n%s", log)
	}
}

// SIGTERM while the first join waits on a seed that accepted the
// connection and never answers stops the node then, not at the join's TCP
// timeout (the drop-time, 60 s here).
func TestSignalWhileJoiningASilentSeed(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := silent.Accept(); err == nil {
			accepted <- c // held open, never read or written
		}
	}()
	p := startProc(t, nil, nil, nodeArgs("n1", freePort(t, false), freePort(t, true),
		"-join", silent.Addr().String(), "-drop-time", "60s")...)
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(20 * time.Second): // a hang guard
		t.Fatal("the node never joined the seed")
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// Well before the join's timeout: an exit now is the signal's.
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Errorf("SIGTERM during the first join: %v, want exit status 0", err)
	}
	if log := p.log.String(); strings.Contains(log, "cohort-node:") || !strings.Contains(log, "msg=stopped") {
		t.Errorf("log reports an error, or lacks the stop:\n%s", log)
	}
}

// A node with multicast on, on a host without a multicast route, stops
// with an error that names -multicast, not -bind: the group join fails
// as a listen does, but the gossip address is not at fault. The node runs
// in a network namespace of its own (which needs root) where only lo is up.
func TestMulticastUnavailableNamesFlag(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to create a network namespace; CI runs as root")
		}
		t.Skip("needs root to create a network namespace")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The shell brings lo up in the new namespace, then execs the node.
	cmd := exec.Command("sh", "-c", `ip link set lo up && exec "$0" "$@"`, self,
		"-route", "n1", "-http", "127.0.0.1:8080", "-bind", "127.0.0.1:7946", "-multicast", "228.0.0.4:45564")
	cmd.Env = nodeEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("node: %v, want exit status 2; output:\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "cohort-node: flag -multicast 228.0.0.4:45564: ") || !strings.Contains(last, "-multicast=off") {
		t.Errorf("last line %q, want the error naming -multicast", last)
	}
}
