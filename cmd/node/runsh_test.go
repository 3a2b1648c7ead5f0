package main

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
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

// examples/local/run.sh (make run): "cluster up" once every node is
// ready, a second run on the same ports refuses to start, and Ctrl-C
// (SIGINT to the script's process group, as the terminal sends it) or a
// hangup (the terminal closed) stops each node once, gracefully, with the
// log prefixers alive to the end.
func TestRunScriptCtrlC(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bash not installed: run.sh cannot run")
		}
		t.Skip("bash not installed: run.sh cannot run")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if signal.Ignored(os.Interrupt) {
		// A shell ignores SIGINT in what it starts in the background, and
		// bash cannot trap a signal it inherits ignored: let the script
		// start with the default, as it does from a terminal.
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt)
		defer signal.Stop(c)
	}
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		want string
	}{
		{"ctrl-c", syscall.SIGINT, "it to die of SIGINT after stopping the nodes"},
		{"hangup", syscall.SIGHUP, "exit status 129 after stopping the nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			offset := freeOffset(t)
			cmd := exec.Command(bash, filepath.Join("..", "..", "examples", "local", "run.sh"), self, "-frequency", "100ms", "-drop-time", "1s")
			cmd.Env = nodeEnv("PORT_OFFSET=" + strconv.Itoa(offset))
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			// A file, not a pipe: Wait returns when the script has, whichever of
			// its children are left.
			out := &logFile{name: filepath.Join(t.TempDir(), "run.log")}
			f, err := os.Create(out.name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd.Stdout, cmd.Stderr = f, f
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{}) // closed once the script has exited, with waitErr
			var waitErr error
			go func() { waitErr = cmd.Wait(); close(done) }()
			t.Cleanup(func() {
				select {
				case <-done:
				default: // stop the nodes, which run in process groups of their own
					for _, pid := range childPIDs(cmd.Process.Pid) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-done
				}
				if t.Failed() {
					t.Logf("run.sh output:\n%s", out.String())
				}
			})

			waitFor(t, 60*time.Second, "cluster up", func() bool { return strings.Contains(out.String(), "cluster up") })
			for i := 1; i <= 3; i++ {
				addr := fmt.Sprintf("127.0.0.1:%d", 8080+i+offset)
				if code := httpStatus(addr, "/readyz"); code != http.StatusOK {
					t.Errorf("after cluster up, %s/readyz = %d, want 200", addr, code)
				}
			}
			if n := strings.Count(out.String(), "config.multicast=off"); n != 3 {
				t.Errorf("%d nodes started with multicast off, want 3", n)
			}

			// A second run while this one goes on refuses to start.
			again := exec.Command(bash, filepath.Join("..", "..", "examples", "local", "run.sh"), self)
			again.Env = cmd.Env
			if msg, err := again.CombinedOutput(); err == nil || !strings.Contains(string(msg), "already in use") {
				t.Errorf("a second run.sh on the same ports: %v, %s; want it refused", err, msg)
			}

			if err := syscall.Kill(-cmd.Process.Pid, tc.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
				err = waitErr
			case <-time.After(30 * time.Second):
				t.Fatalf("run.sh still running 30s after %v", tc.sig)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Errorf("run.sh ended with %v, want %s", err, tc.want)
			} else if ws := ee.Sys().(syscall.WaitStatus); tc.sig == syscall.SIGINT && ws.Signal() != syscall.SIGINT || tc.sig == syscall.SIGHUP && ws.ExitStatus() != 129 {
				t.Errorf("run.sh ended with %v, want %s", err, tc.want)
			}
			log := out.String()
			for i := 1; i <= 3; i++ {
				prefix := fmt.Sprintf("[node%d] ", i)
				if n := countLines(log, prefix, "msg=\"shutting down\""); n != 1 {
					t.Errorf("node%d logged shutting down %d times, want once", i, n)
				}
				if countLines(log, prefix, "msg=stopped") != 1 {
					t.Errorf("node%d's stopped line is missing: the node or its log prefixer died", i)
				}
			}
			for _, bad := range []string{"member failed", "second signal", "broken pipe"} {
				if strings.Contains(log, bad) {
					t.Errorf("output has %q", bad)
				}
			}
			for i := 1; i <= 3; i++ {
				if code := httpStatus(fmt.Sprintf("127.0.0.1:%d", 8080+i+offset), "/healthz"); code != 0 {
					t.Errorf("node%d still answers after run.sh ended", i)
				}
			}
		})
	}
}

// logFile is the output of a process, read as it grows.
type logFile struct{ name string }

func (f *logFile) String() string {
	b, _ := os.ReadFile(f.name)
	return string(b)
}

// freeOffset finds a PORT_OFFSET at which run.sh's nine ports are free.
func freeOffset(t *testing.T) int {
	t.Helper()
	for range 200 {
		o := 10000 + rand.IntN(40000)
		var ports []int
		for i := range 3 {
			ports = append(ports, 8081+i+o, 7946+i+o, 8946+i+o)
		}
		if portsFree(ports...) {
			return o
		}
	}
	t.Fatal("no free port range for run.sh")
	return 0
}

// countLines counts the lines of log that start with prefix and contain s.
func countLines(log, prefix, s string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) && strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// childPIDs lists the processes whose parent is pid (Linux /proc).
func childPIDs(pid int) []int {
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			if child, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
				out = append(out, child)
			}
		}
	}
	return out
}
