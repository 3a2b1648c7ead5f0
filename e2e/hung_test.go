package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHungPeerIsNotWaitedFor stops a node with SIGSTOP, which keeps its
// sockets open so that nothing refuses: the first write after it waits
// the send timeout, marks the node stalled, and later writes no longer
// wait for it; another node stopping meanwhile still leaves. With SIGCONT
// the node answers again, is waited for again, and has every change made
// meanwhile, from its queue.
func TestHungPeerIsNotWaitedFor(t *testing.T) {
	// A drop time long enough that membership does not drop the stopped
	// node during the test: only the stall path is at work.
	_, _, n1, n2, n3 := startThree(t, "-drop-time", "2m", "-send-timeout", "1s")
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: time.Minute}
	count := func() string {
		t.Helper()
		resp, err := client.Get("http://" + n1.http + "/counter")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /counter: %s %s", resp.Status, b)
		}
		return string(b)
	}
	body := count()
	id := strings.TrimSuffix(body[strings.Index(body, "id=")+3:], "\n")

	if err := n3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n3.cmd.Process.Signal(syscall.SIGCONT) })
	waitStopped(t, n3.cmd.Process.Pid)
	count() // waits the send timeout for node3
	peer := waitPeer(t, n1, "node3", func(p peerView) bool { return p.Stalled })
	if !peer.Connected {
		t.Errorf("node3 as n1 sees it: %+v, want connected (a hung process keeps its sockets)", peer)
	}
	// Past the once-a-second limit of the commit warning, so the next
	// failed commit is logged: it must fail for the stall, not a timeout.
	time.Sleep(1100 * time.Millisecond)
	for i := 3; i <= 12; i++ {
		if got, want := count(), fmt.Sprintf("count=%d ", i); !strings.HasPrefix(got, want) {
			t.Fatalf("GET /counter = %q, want %q...", got, want)
		}
	}
	if log := n1.logText(); !strings.Contains(log, "peer stalled") || strings.Count(log, "peer did not answer in time") != 1 {
		t.Errorf("n1's log: want one stall warning and commits failed for the stall:\n%s", log)
	}
	if m := metric(t, n1, `cohort_replication_peer_stalled{peer="node3"}`); m != "1" {
		t.Errorf("cohort_replication_peer_stalled for node3 = %q, want 1", m)
	}
	if st, err := states(n1); err != nil || st["node3"] != "alive" {
		t.Fatalf("n1 sees node3 as %q (%v): membership must not have dropped it yet", st["node3"], err)
	}

	// A graceful stop meanwhile: node2's flush cannot reach the hung node,
	// yet node2 still leaves, and node1 reports it left, not alive (it
	// would be, for the 2m drop time, had the flush eaten the leave's time).
	stopGracefully(t, n2, time.Minute)
	waitState(t, "node2", "left", n1)

	if err := n3.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitPeer(t, n1, "node3", func(p peerView) bool { return !p.Stalled })
	count() // count=13, waited for by every peer again
	want := sessionVersion(t, n1, id)
	deadline := time.Now().Add(20 * time.Second)
	for sessionVersion(t, n3, id) != want {
		if time.Now().After(deadline) {
			t.Fatalf("node3 holds version %d of the session, want n1's %d", sessionVersion(t, n3, id), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := metric(t, n1, `cohort_replication_peer_stalls_total{peer="node3"}`); m != "1" {
		t.Errorf("cohort_replication_peer_stalls_total for node3 = %q, want 1", m)
	}
}

// peerView is one replication peer in /cluster/status.
type peerView struct {
	Route       string `json:"route"`
	Connected   bool   `json:"connected"`
	Stalled     bool   `json:"stalled"`
	NeedsResync bool   `json:"needs_resync"`
}

// waitPeer polls p's status until its replication peer route satisfies ok.
func waitPeer(t *testing.T, p *proc, route string, ok func(peerView) bool) peerView {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last peerView
	for {
		resp, err := http.Get("http://" + p.http + "/cluster/status")
		if err == nil {
			var st struct{ Peers []peerView }
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			for _, pv := range st.Peers {
				if pv.Route == route {
					if last = pv; ok(pv) {
						return pv
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's peer %s is %+v (err %v)", p.route, route, last, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sessionVersion returns the version of session id that p holds, 0 if none.
func sessionVersion(t *testing.T, p *proc, id string) uint64 {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/cluster/sessions/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return 0
	}
	var v struct{ Version uint64 }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v.Version
}

// metric returns the value of the sample named series (name and labels,
// as written in /metrics) that p exports, "" if there is none.
func metric(t *testing.T, p *proc, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			return v
		}
	}
	return ""
}

// waitStopped waits until every thread of process pid is stopped. A
// SIGSTOP stops a process only once one of its threads runs to take it:
// on a busy machine the others may go on running, and answering, for a
// while.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second) // a hang guard
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of process %d: %v", pid, err)
		}
		running := 0
		for _, task := range tasks {
			if !threadStopped(task) {
				running++
			}
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the %d threads of process %d still not stopped after SIGSTOP", running, len(tasks), pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// threadStopped reports whether the thread whose /proc stat file is at
// path is stopped: state T, or t when traced. The state follows the
// command name, in parentheses that the name itself may contain.
func threadStopped(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'T' || b[i+2] == 't'
}
