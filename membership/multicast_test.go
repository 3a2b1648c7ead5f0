package membership_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/membership"
)

// netnsChildEnv marks the test binary re-executed inside a new network
// namespace.
const netnsChildEnv = "COHORT_TEST_NETNS_CHILD"

// TestMulticastDiscovery runs real multicast beacons inside a network
// namespace of its own, where lo carries multicast and a 224.0.0.0/4 route:
// it re-executes the test binary in the namespace (which needs root), so the
// host's network is never touched.
func TestMulticastDiscovery(t *testing.T) {
	inNetns(t, "TestMulticastDiscovery", multicastScenario)
}

// inNetns runs scenario in a new network namespace, where only lo exists,
// down: it re-executes the test binary, running only the test named name,
// in the namespace (which needs root), so the host's network is never
// touched.
func inNetns(t *testing.T, name string, scenario func(t *testing.T)) {
	if os.Getenv(netnsChildEnv) == "1" {
		scenario(t)
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root to create a network namespace; CI runs as root")
		}
		t.Skip("this test needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the ip command (iproute2) is needed to configure the test namespace: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("in the namespace:\n%s", out.String())
	if err != nil {
		t.Fatalf("scenario failed: %v", err)
	}
	if !bytes.Contains(out.Bytes(), []byte("--- PASS: "+name)) {
		t.Fatal("scenario did not report a pass")
	}
}

// ipCmd runs the ip command, failing the test if it fails.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// TestMulticastUnavailable starts a node with multicast on in a network
// without a multicast route: New fails with a *MulticastError that names
// the setting to change, not the gossip address, which is not at fault.
func TestMulticastUnavailable(t *testing.T) {
	inNetns(t, "TestMulticastUnavailable", func(t *testing.T) {
		ipCmd(t, "link", "set", "lo", "up") // gossip works, multicast has no route
		c := testConfig(t, "a1")
		c.MulticastAddr = membership.DefaultMulticastAddr
		n, err := membership.New(c)
		if err == nil {
			_ = n.Close()
			t.Fatal("New succeeded without a multicast route")
		}
		var me *membership.MulticastError
		if !errors.As(err, &me) || me.Group != membership.DefaultMulticastAddr {
			t.Fatalf("New = %v (%T), want a *MulticastError for %s", err, err, membership.DefaultMulticastAddr)
		}
		for _, want := range []string{"MulticastAddr " + membership.DefaultMulticastAddr, "unavailable", "no such device", "-multicast=off", "-join"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		// The gossip port was released: a node without multicast starts.
		c.MulticastAddr = ""
		start(t, c)
	})
}

func multicastScenario(t *testing.T) {
	ipCmd(t, "link", "set", "lo", "up")
	ipCmd(t, "link", "set", "lo", "multicast", "on")
	ipCmd(t, "route", "add", "224.0.0.0/4", "dev", "lo")
	key := membership.Key(bytes.Repeat([]byte{1}, 32))
	node := func(route, domain string, key membership.Key) *membership.Node {
		c := testConfig(t, route)
		c.Domain = domain
		c.Key = key
		c.MulticastAddr = membership.DefaultMulticastAddr
		return start(t, c) // no seeds: beacons are the only way to meet
	}
	a1 := node("a1", "cohort", key)
	a2 := node("a2", "cohort", key)
	a3 := node("a3", "cohort", key)
	b1 := node("b1", "other", nil)        // another domain on the same group
	b2 := node("b2", "other", nil)        // ... which forms its own cluster
	intruder := node("x1", "cohort", nil) // right domain, no key
	wrongKey := node("x2", "cohort", membership.Key(bytes.Repeat([]byte{2}, 32)))

	waitConverged(t, a1, a2, a3)
	waitConverged(t, b1, b2)
	// Give the outsiders time to hear many beacons, then check that none of
	// them got in and that the keyed nodes counted and ignored them.
	// A keyed node rejects every beacon without its MAC before reading it;
	// an unkeyed one reads them and ignores those of other domains.
	waitFor(t, 10*time.Second, func() error {
		if s := a1.Stats(); s.BeaconsBadMAC < 3 {
			return fmt.Errorf("a1 counted %d unauthenticated beacons, want several", s.BeaconsBadMAC)
		}
		if s := b1.Stats(); s.BeaconsForeign < 3 {
			return fmt.Errorf("b1 counted %d beacons of other domains, want several", s.BeaconsForeign)
		}
		return nil
	})
	for _, n := range []*membership.Node{a1, a2, a3} {
		if got := alive(n); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
			t.Errorf("%s sees %v, want only a1-a3", n.Route(), got)
		}
	}
	for _, n := range []*membership.Node{intruder, wrongKey} {
		if got := alive(n); !slices.Equal(got, []string{n.Route()}) {
			t.Errorf("%s got into the cluster: sees %v", n.Route(), got)
		}
	}
	if s := a1.Stats(); s.BeaconsSent == 0 || s.BeaconJoins+s.BeaconsReceived == 0 {
		t.Errorf("a1 stats %+v: no beacons sent or received", s)
	}
}

// TestBeaconsFollowBindInterface runs two nodes in two network namespaces
// joined by a veth pair, each bound to its end of it, on hosts whose
// default route goes through another interface: the beacons must go out,
// and the group be joined, on the gossip address's interface, not the
// default route's, or the nodes never hear each other.
func TestBeaconsFollowBindInterface(t *testing.T) {
	const name = "TestBeaconsFollowBindInterface"
	if os.Getenv(netnsChildEnv) == "1" {
		c := testConfig(t, os.Getenv("COHORT_TEST_ROUTE"))
		c.BindAddr = os.Getenv("COHORT_TEST_BIND")
		c.MulticastAddr = membership.DefaultMulticastAddr
		n := start(t, c) // no seeds: beacons are the only way to meet
		waitFor(t, 10*time.Second, func() error {
			if got := alive(n); len(got) != 2 {
				return fmt.Errorf("%s sees %v alive, want two nodes", n.Route(), got)
			}
			return nil
		})
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("this test needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("the ip command (iproute2) is needed to configure the test namespaces: %v", err)
	}
	ns := [2]string{fmt.Sprintf("cohort-mcif%d-a", os.Getpid()), fmt.Sprintf("cohort-mcif%d-b", os.Getpid())}
	for i, n := range ns {
		ipCmd(t, "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		ipCmd(t, "-n", n, "link", "set", "lo", "up")
		// The default route, multicast's too, goes out an interface that
		// leads nowhere.
		ipCmd(t, "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
		ipCmd(t, "-n", n, "link", "set", "d0p", "up")
		ipCmd(t, "-n", n, "link", "set", "d0", "up")
		ipCmd(t, "-n", n, "addr", "add", fmt.Sprintf("10.88.%d.1/24", i), "dev", "d0")
		ipCmd(t, "-n", n, "route", "add", "default", "dev", "d0")
	}
	ipCmd(t, "-n", ns[0], "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", ns[1])
	procs := make([]*exec.Cmd, 2)
	outs := make([]*bytes.Buffer, 2)
	for i, n := range ns {
		dev := fmt.Sprintf("v%d", i)
		ipCmd(t, "-n", n, "addr", "add", fmt.Sprintf("10.77.0.%d/24", i+1), "dev", dev)
		ipCmd(t, "-n", n, "link", "set", dev, "up")
	}
	for i, n := range ns {
		cmd := exec.Command("ip", "netns", "exec", n, os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), netnsChildEnv+"=1", fmt.Sprintf("COHORT_TEST_ROUTE=n%d", i+1),
			fmt.Sprintf("COHORT_TEST_BIND=10.77.0.%d:7946", i+1))
		outs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[i] = cmd
	}
	for i, cmd := range procs {
		err := cmd.Wait()
		t.Logf("node n%d in %s:\n%s", i+1, ns[i], outs[i].String())
		if err != nil || !bytes.Contains(outs[i].Bytes(), []byte("--- PASS: "+name)) {
			t.Errorf("node n%d: %v", i+1, err)
		}
	}
}
