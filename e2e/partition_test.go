package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// testNet is a set of network namespaces, one per node, joined by a
// bridge in the host namespace (the cluster network), plus one
// point-to-point link from the host to each namespace (the client
// network), so a node can be cut from its peers while the test still
// reaches its HTTP port. The test creates it and removes it.
type testNet struct {
	t      *testing.T
	tag    string // unique per run, keeps interface names short
	subnet int    // third octet of the addresses
}

// newTestNet builds the networks for n nodes. It needs root and ip(8): in
// CI they are there and the test fails without them; elsewhere it skips.
func newTestNet(t *testing.T, n int) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the partition test needs root to create network namespaces; CI runs as root")
		}
		t.Skip("the partition test needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the ip command (iproute2) is needed: %v", err)
	}
	pid := os.Getpid()
	tn := &testNet{t: t, tag: fmt.Sprint(pid % 10000), subnet: 10 + pid%200}
	t.Cleanup(tn.remove)
	tn.ip("link", "add", tn.bridge(), "type", "bridge")
	tn.ip("link", "set", tn.bridge(), "up")
	for i := 1; i <= n; i++ {
		ns := tn.ns(i)
		tn.ip("netns", "add", ns)
		tn.ip("-n", ns, "link", "set", "lo", "up")
		// Cluster network: a veth from the namespace to the bridge.
		tn.ip("link", "add", tn.port(i), "type", "veth", "peer", "name", tn.port(i)+"p")
		tn.ip("link", "set", tn.port(i)+"p", "netns", ns)
		tn.ip("link", "set", tn.port(i), "master", tn.bridge(), "up")
		tn.ip("-n", ns, "addr", "add", tn.clusterIP(i)+"/24", "dev", tn.port(i)+"p")
		tn.ip("-n", ns, "link", "set", tn.port(i)+"p", "up")
		// Client network: a /30 from the host to the namespace.
		h := "h" + tn.tag + "n" + fmt.Sprint(i)
		tn.ip("link", "add", h, "type", "veth", "peer", "name", h+"p")
		tn.ip("link", "set", h+"p", "netns", ns)
		tn.ip("addr", "add", fmt.Sprintf("10.232.%d.%d/30", tn.subnet, 4*i+1), "dev", h)
		tn.ip("link", "set", h, "up")
		tn.ip("-n", ns, "addr", "add", tn.clientIP(i)+"/30", "dev", h+"p")
		tn.ip("-n", ns, "link", "set", h+"p", "up")
	}
	return tn
}

func (tn *testNet) bridge() string         { return "cbr" + tn.tag }
func (tn *testNet) ns(i int) string        { return fmt.Sprintf("cohort%sn%d", tn.tag, i) }
func (tn *testNet) port(i int) string      { return fmt.Sprintf("c%sn%d", tn.tag, i) }
func (tn *testNet) clusterIP(i int) string { return fmt.Sprintf("10.231.%d.%d", tn.subnet, i) }
func (tn *testNet) clientIP(i int) string  { return fmt.Sprintf("10.232.%d.%d", tn.subnet, 4*i+2) }
func (tn *testNet) cut(i int)              { tn.ip("link", "set", tn.port(i), "down") }
func (tn *testNet) restore(i int)          { tn.ip("link", "set", tn.port(i), "up") }
func (tn *testNet) spec(i int) nodeSpec {
	return nodeSpec{
		route: fmt.Sprintf("node%d", i), netns: tn.ns(i),
		http: tn.clientIP(i) + ":8080", bind: tn.clusterIP(i) + ":7946", repl: tn.clusterIP(i) + ":8946",
	}
}

func (tn *testNet) ip(args ...string) {
	tn.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tn.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// remove deletes the namespaces (and with them every veth) and the bridge.
func (tn *testNet) remove() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, "cohort"+tn.tag+"n") {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
	_ = exec.Command("ip", "link", "del", tn.bridge()).Run()
}

type sessionView struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Node    string `json:"node"`
}

// lookup asks p what it holds of session id, without touching it.
func lookup(p *proc, id string) (*sessionView, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + p.http + "/cluster/sessions/" + id)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var v sessionView
	return &v, json.NewDecoder(resp.Body).Decode(&v)
}

// counterWith requests /counter on p with the session cookie id.
func counterWith(p *proc, id string) (hit, error) {
	req, _ := http.NewRequest("GET", "http://"+p.http+"/counter", nil)
	req.AddCookie(&http.Cookie{Name: "JSESSIONID", Value: id})
	return doCounter(&http.Client{Timeout: 10 * time.Second}, req)
}

// TestPartitionHeals runs 3 Delta nodes in network namespaces, cuts one off
// while both sides change the same session (the cut-off node rebinding it,
// as after a balancer failover), then restores the link: membership heals,
// every node ends with the same id and revision, the majority's, and the
// node whose change was discarded counts it.
func TestPartitionHeals(t *testing.T) {
	tn := newTestNet(t, 3)
	specs := []nodeSpec{tn.spec(1), tn.spec(2), tn.spec(3)}
	join := seeds(specs)
	procs := make([]*proc, 3)
	for i, sp := range specs {
		procs[i] = startNode(t, sp, join, "-manager", "delta", "-send-mode", "ack")
	}
	n1, n2, n3 := procs[0], procs[1], procs[2]
	for _, r := range []string{"node1", "node2", "node3"} {
		waitState(t, r, "alive", n1, n2, n3)
	}
	for _, p := range procs {
		waitReady(t, p)
	}
	// A session with count 3, on every node.
	var h hit
	var err error
	id := ""
	for i := 1; i <= 3; i++ {
		if id == "" {
			h, err = getCounter(&http.Client{Timeout: 10 * time.Second}, "http://"+n1.http+"/counter")
		} else {
			h, err = counterWith(n1, id)
		}
		if err != nil {
			t.Fatal(err)
		}
		id = h.id
	}
	if h.count != 3 {
		t.Fatalf("count %d, want 3", h.count)
	}
	waitFor(t, "the session on node3", func() bool {
		v, err := lookup(n3, id)
		return err == nil && v.Version == 3
	})

	// Cut node3 off the cluster network.
	tn.cut(3)
	waitState(t, "node3", "dead", n1, n2)
	waitState(t, "node1", "dead", n3)
	waitState(t, "node2", "dead", n3)
	// The majority writes three times, node3 twice after rebinding.
	for want := 4; want <= 6; want++ {
		if h, err = counterWith(n1, id); err != nil || h.count != want {
			t.Fatalf("majority write: %+v, %v; want count %d", h, err, want)
		}
	}
	minorityID := ""
	for want := 4; want <= 5; want++ {
		cur := id
		if minorityID != "" {
			cur = minorityID
		}
		if h, err = counterWith(n3, cur); err != nil || h.count != want {
			t.Fatalf("minority write: %+v, %v; want count %d", h, err, want)
		}
		minorityID = h.id
	}
	if !strings.HasSuffix(minorityID, ".node3") {
		t.Fatalf("node3 did not rebind the session: %s", minorityID)
	}

	// Heal: every node converges on the majority's revision and id.
	tn.restore(3)
	for _, r := range []string{"node1", "node2", "node3"} {
		waitState(t, r, "alive", n1, n2, n3)
	}
	waitFor(t, "every node on version 6 by node1", func() bool {
		for _, p := range procs {
			v, err := lookup(p, id)
			if err != nil || v.ID != id || v.Version != 6 || v.Node != "node1" {
				return false
			}
		}
		return true
	})
	st, err := getStatus(n3.http)
	if err != nil {
		t.Fatal(err)
	}
	if st.Replication.Conflicts == 0 {
		t.Error("node3 did not count the change that was discarded")
	}
	// And the session goes on from the majority's count.
	if h, err = counterWith(n3, id); err != nil || h.count != 7 {
		t.Errorf("after healing: %+v, %v; want count 7", h, err)
	}
}

// waitFor polls cond for up to 60 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
