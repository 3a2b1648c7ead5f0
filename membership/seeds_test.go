package membership_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
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
