package membership_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

// fakeDNS is a Resolver whose answers the test changes, as a headless
// Service's do when pods come and go.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]string
	lookups int
}

func (r *fakeDNS) LookupHost(ctx context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups++
	if a, ok := r.answers[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func (r *fakeDNS) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[host] = addrs
}

func (r *fakeDNS) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups
}

// TestDNSSeeds starts two nodes on one port at 127.0.0.2 and 127.0.0.3, as
// two pods behind a headless Service, and a third node whose only seed is
// the Service's name. The name does not resolve at first; the node keeps
// re-resolving it and joins both as soon as it does.
func TestDNSSeeds(t *testing.T) {
	leaktest.Check(t)
	c1 := testConfig(t, "pod1")
	c1.BindAddr = "127.0.0.2:0"
	p1 := start(t, c1)
	port := p1.Addr().(*net.TCPAddr).Port
	c2 := testConfig(t, "pod2")
	c2.BindAddr = net.JoinHostPort("127.0.0.3", strconv.Itoa(port))
	c2.Join = []string{p1.Addr().String()}
	p2 := start(t, c2)
	waitConverged(t, p1, p2)

	dns := &fakeDNS{answers: map[string][]string{}}
	c3 := testConfig(t, "pod3")
	c3.Join = []string{"cohort-headless.test:" + strconv.Itoa(port)}
	c3.Resolver = dns
	p3 := start(t, c3)
	waitFor(t, 10*time.Second, func() error {
		if n := dns.count(); n < 2 {
			return fmt.Errorf("%d lookups, want the name re-resolved", n)
		}
		return nil
	})
	if got := alive(p3); len(got) != 1 {
		t.Fatalf("pod3 sees %v before its seed resolves", got)
	}
	if s := p3.Stats(); s.SeedLookupErrors == 0 {
		t.Errorf("Stats() = %+v, want the failed lookups counted", s)
	}
	dns.set("cohort-headless.test", "127.0.0.2", "127.0.0.3")
	waitConverged(t, p1, p2, p3)
}

// freeAddr returns a loopback address nothing listens on, for a node to
// start on later.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// TestSilentSeedsAreReported starts a node whose seeds do not answer: an
// address nothing listens on yet and a name that does not resolve. Each
// seed is warned about once, named with its error and for its own cause,
// while the node keeps retrying; the first seed's recovery is logged once.
func TestSilentSeedsAreReported(t *testing.T) {
	leaktest.Check(t)
	const warning, lookup = "seed did not answer; retrying", "seed lookup failed; retrying"
	seedAddr := freeAddr(t)
	c2 := testConfig(t, "node2")
	rec := record(t, &c2)
	c2.Join = []string{seedAddr, "cohort-seed.test:7946"}
	c2.Resolver = &fakeDNS{answers: map[string][]string{}}
	n2 := start(t, c2)

	// New made the first attempt.
	for i, msg := range []string{warning, lookup} {
		warns := rec.Records(msg)
		if len(warns) != 1 {
			t.Fatalf("%d warnings %q after New, want one: %+v", len(warns), msg, warns)
		}
		if w := warns[0]; w.Level != slog.LevelWarn || w.Attrs["seed"] != c2.Join[i] || w.Attrs["err"] == "" {
			t.Errorf("warning %+v, want seed %s with its error", w, c2.Join[i])
		}
	}
	// Stats says so too.
	st := n2.Stats()
	if st.JoinErrors == 0 || !strings.Contains(st.LastJoinError, seedAddr) || st.LastJoinErrorAt.IsZero() {
		t.Errorf("Stats() join errors %d, last %q at %v; want the failed join to %s", st.JoinErrors, st.LastJoinError, st.LastJoinErrorAt, seedAddr)
	}
	if len(st.Seeds) != 2 {
		t.Fatalf("Stats().Seeds = %+v, want both seeds", st.Seeds)
	}
	for i, ss := range st.Seeds {
		if ss.Seed != c2.Join[i] || ss.Failures == 0 || ss.LastError == "" || !ss.LastOK.IsZero() {
			t.Errorf("Stats().Seeds[%d] = %+v, want %s failing with its error", i, ss, c2.Join[i])
		}
	}
	if e := st.Seeds[1].LastError; !strings.Contains(e, "cohort-seed.test") {
		t.Errorf("lookup failure given as %q", e)
	}
	waitFor(t, 10*time.Second, func() error {
		if s := n2.Stats(); s.JoinErrors < 3 {
			return fmt.Errorf("%d join errors, want the seed retried", s.JoinErrors)
		}
		return nil
	})
	if got := len(rec.Records(warning)) + len(rec.Records(lookup)); got != 2 {
		t.Errorf("%d warnings after retries, want still 2: at most one a minute", got)
	}

	c1 := testConfig(t, "node1")
	c1.BindAddr = seedAddr
	n1 := start(t, c1)
	waitConverged(t, n1, n2)
	waitFor(t, 5*time.Second, func() error {
		if len(rec.Records("seed answered")) == 0 {
			return errors.New("no recovery logged")
		}
		return nil
	})
	if got := rec.Records("seed answered"); len(got) != 1 || got[0].Level != slog.LevelInfo || got[0].Attrs["seed"] != seedAddr {
		t.Errorf("recovery logged as %+v, want one Info naming %s", got, seedAddr)
	}
	if ss := n2.Stats().Seeds[0]; ss.Failures != 0 || ss.LastError != "" || ss.LastOK.IsZero() {
		t.Errorf("Stats().Seeds[0] = %+v after the recovery, want no failure and when it answered", ss)
	}
	if got := rec.Records("joined the cluster through seeds"); len(got) != 1 ||
		got[0].Attrs["contacted"] != "1" || got[0].Attrs["members"] != "2" {
		t.Errorf("join logged as %+v, want one with contacted=1 members=2", got)
	}
	if got := len(rec.Records(warning)) + len(rec.Records(lookup)); got != 2 {
		t.Errorf("%d warnings in all, want 2", got)
	}
}

// hangingDNS is a Resolver that answers its first lookup at once, with no
// address, and holds every later one until its context ends, as a DNS
// server that stopped answering does.
type hangingDNS struct {
	mu      sync.Mutex
	lookups int
	held    chan struct{} // receives each held lookup
}

func (r *hangingDNS) LookupHost(ctx context.Context, host string) ([]string, error) {
	r.mu.Lock()
	r.lookups++
	first := r.lookups == 1
	r.mu.Unlock()
	if first {
		return nil, errors.New("no such host")
	}
	select {
	case r.held <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestCloseDuringSeedLookup closes a node while it re-resolves a seed
// whose DNS server does not answer: Close ends the lookup rather than
// waiting for its timeout, a drop time that here is a minute.
func TestCloseDuringSeedLookup(t *testing.T) {
	leaktest.Check(t)
	c := testConfig(t, "node1")
	c.DropTime = time.Minute
	c.Join = []string{"cohort-seed.test:7946"}
	dns := &hangingDNS{held: make(chan struct{}, 1)}
	c.Resolver = dns
	n := start(t, c)
	select {
	case <-dns.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the seed was not re-resolved")
	}
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a seed lookup in flight")
	}
}

// TestSeedsSharingAnAddress gives a node two seeds for one address that
// does not answer, a name and the address itself: each seed is reported
// failing, though the address is tried once a round.
func TestSeedsSharingAnAddress(t *testing.T) {
	leaktest.Check(t)
	dead := freeAddr(t)
	host, port, _ := net.SplitHostPort(dead)
	c := testConfig(t, "node1")
	c.Join = []string{"cohort-seed.test:" + port, dead}
	c.Resolver = &fakeDNS{answers: map[string][]string{"cohort-seed.test": {host}}}
	n := start(t, c)
	for i, ss := range n.Stats().Seeds {
		if ss.Seed != c.Join[i] || ss.Failures == 0 || !strings.Contains(ss.LastError, dead) {
			t.Errorf("Stats().Seeds[%d] = %+v, want %s failing with the error of %s", i, ss, c.Join[i], dead)
		}
	}
}
