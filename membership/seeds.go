package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
)

// joiner performs joins requested by beacons in one goroutine, so that a
// burst of beacons never becomes a burst of goroutines. Requests for an
// address already pending are dropped.
type joiner struct {
	n       *Node
	reqs    chan joinRequest
	mu      sync.Mutex
	pending map[string]bool
}

type joinRequest struct {
	addr   string
	beacon bool // triggered by a beacon, for the counters
}

func newJoiner(n *Node) *joiner {
	return &joiner{n: n, reqs: make(chan joinRequest, 64), pending: make(map[string]bool)}
}

// request queues a join to addr (IP:port) without blocking; it reports
// whether the request was queued.
func (j *joiner) request(addr string, beacon bool) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending[addr] {
		return false
	}
	select {
	case j.reqs <- joinRequest{addr, beacon}:
		j.pending[addr] = true
		return true
	default:
		return false // full: the next beacon asks again
	}
}

func (j *joiner) run() {
	for {
		select {
		case <-j.n.stop:
			return
		case r := <-j.reqs:
			j.n.join(r.addr, r.beacon)
			j.mu.Lock()
			delete(j.pending, r.addr)
			j.mu.Unlock()
		}
	}
}

// join contacts one address and counts the outcome.
func (n *Node) join(addr string, beacon bool) bool {
	if _, err := n.ml.Join([]string{addr}); err != nil {
		n.stats.joinErrors.Add(1)
		n.log.Debug("join failed", "addr", addr, "err", err)
		return false
	}
	if beacon {
		n.stats.beaconJoins.Add(1)
		n.log.Info("joined a node found by its beacon", "addr", addr)
	} else {
		n.stats.seedJoins.Add(1)
	}
	return true
}

// rejoin joins every seed address that is not an alive member and every
// member that failed (not left) within DeadRetention. It runs at start and
// every RejoinInterval, which is how a node that started before its seeds
// finds them, and how the two sides of a healed partition, which have each
// declared the other dead and stopped probing, merge again.
func (n *Node) rejoin() {
	n.mu.Lock()
	alive := make(map[string]bool)
	var failed []string
	for _, m := range n.view {
		switch m.State {
		case StateAlive:
			alive[m.Addr] = true
		case StateDead:
			failed = append(failed, m.Addr)
		}
	}
	wasAlone := len(alive) <= 1
	n.mu.Unlock()
	alive[n.addr.String()] = true

	var targets []string
	if len(n.cfg.Join) > 0 {
		addrs, err := n.resolveSeeds(n.cfg.Join)
		if err != nil {
			n.log.Debug("seed lookup failed", "err", err)
		}
		targets = addrs
	}
	targets = append(targets, failed...)
	slices.Sort(targets)
	targets = slices.Compact(targets)
	joined := 0
	for _, a := range targets {
		if alive[a] {
			continue
		}
		select {
		case <-n.stop:
			return
		default:
		}
		if n.join(a, false) {
			joined++
		}
	}
	if wasAlone && joined > 0 {
		n.log.Info("joined the cluster through seeds", "members", n.NumAlive())
	} else if wasAlone && len(n.cfg.Join) > 0 && joined == 0 {
		n.log.Debug("no seed answered yet; retrying", "seeds", n.cfg.Join, "every", n.cfg.RejoinInterval)
	}
}

// resolveSeeds turns seeds (host:port, host, or a DNS name with several
// addresses) into IP:port strings. Errors of individual seeds are joined;
// the addresses that did resolve are returned with them.
func (n *Node) resolveSeeds(seeds []string) ([]string, error) {
	_, defPort, _ := net.SplitHostPort(n.cfg.BindAddr)
	port, _ := strconv.Atoi(defPort)
	if port == 0 {
		port = n.addr.Port
	}
	r := n.cfg.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	var out []string
	var errs []error
	for _, s := range seeds {
		host, p, err := seedHostPort(s, port)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(p)))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.DropTime)
		ips, err := r.LookupHost(ctx, host)
		cancel()
		if err != nil {
			n.stats.seedLookupErrors.Add(1)
			errs = append(errs, fmt.Errorf("resolve seed %s: %w", host, err))
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, strconv.Itoa(p)))
		}
	}
	return out, errors.Join(errs...)
}
