package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
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
	addr  string
	route string // the route the beacon announced
}

func newJoiner(n *Node) *joiner {
	return &joiner{n: n, reqs: make(chan joinRequest, 64), pending: make(map[string]bool)}
}

// request queues a join to addr (IP:port), announced by route's beacon,
// without blocking; it reports whether the request was queued.
func (j *joiner) request(addr, route string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending[addr] {
		return false
	}
	select {
	case j.reqs <- joinRequest{addr, route}:
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
			if !j.n.leaving.Load() {
				j.n.beaconJoin(r.addr, r.route)
			}
			j.mu.Lock()
			delete(j.pending, r.addr)
			j.mu.Unlock()
		}
	}
}

// join contacts one address and counts a failure.
func (n *Node) join(addr string) error {
	if _, err := n.ml.Join([]string{addr}); err != nil {
		err = joinError(err)
		n.stats.joinErrors.Add(1)
		text := n.describe(err)
		n.joinMu.Lock()
		n.lastJoinErr, n.lastJoinAt = text, time.Now()
		n.joinMu.Unlock()
		return err
	}
	return nil
}

// joinError unwraps the one-element multierror memberlist's Join returns,
// whose text spans several lines.
func joinError(err error) error {
	var multi interface{ WrappedErrors() []error }
	if errors.As(err, &multi) {
		if errs := multi.WrappedErrors(); len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	return err
}

// beaconJoin joins the sender of a beacon. A sender this node refuses to
// pair with answers the join but does not become a member: that is not
// counted or logged as a join.
func (n *Node) beaconJoin(addr, route string) {
	if err := n.join(addr); err != nil {
		n.log.Debug("join failed", "peer", route, "addr", addr, "err", err)
		return
	}
	n.mu.Lock()
	_, refused := n.refused[route]
	n.mu.Unlock()
	if refused {
		n.log.Debug("joined a node found by its beacon, but refused it as a peer", "peer", route, "addr", addr)
		return
	}
	n.stats.beaconJoins.Add(1)
	n.log.Info("joined a node found by its beacon", "peer", route, "addr", addr)
}

// seedWarnEvery rate-limits the warning about a seed that keeps failing.
const seedWarnEvery = time.Minute

// seedState tracks a seed.
type seedState struct {
	failures    int         // consecutive failed attempts
	since       time.Time   // first failure of the run
	warned      time.Time   // last warning
	problem     seedProblem // the cause last warned about
	lastErr     string      // the last failure, with its likely cause
	lastProblem seedProblem // its cause
	lastOK      time.Time   // last answer
}

// seedFailed counts a failed attempt on seed at now: the first is logged,
// then at most one every seedWarnEvery while the seed keeps failing for the
// same cause; a new cause is logged at once.
func (n *Node) seedFailed(seed string, err error, now time.Time) {
	p := problemOf(err)
	n.joinMu.Lock()
	st := n.seeds[seed]
	if st == nil {
		st = &seedState{}
		n.seeds[seed] = st
	}
	if st.failures == 0 {
		st.since = now
	}
	st.failures++
	st.lastErr, st.lastProblem = n.describe(err), p
	if st.failures > 1 && p == st.problem && now.Sub(st.warned) < seedWarnEvery {
		n.joinMu.Unlock()
		return
	}
	st.warned, st.problem = now, p
	args := []any{"seed", seed, "err", err,
		"failures", st.failures, "failing_for", now.Sub(st.since).Round(time.Second), "every", n.cfg.RejoinInterval}
	n.joinMu.Unlock()
	msg, hint := n.seedWarning(p)
	if hint != "" {
		args = append(args, "hint", hint)
	}
	n.log.Warn(msg, args...)
}

// seedProblem is the likely cause of a failed attempt on a seed, as its
// error tells it.
type seedProblem int

const (
	seedSilent     seedProblem = iota // no answer: nothing listens there, or the packets are dropped
	seedUnresolved                    // the seed's host name did not resolve
	seedUnreadable                    // it answered in a way this node could not read: another cluster key
	seedHungUp                        // it closed the connection unanswered, as a node of another domain does
)

// problemOf classifies the error of a failed attempt on a seed.
func problemOf(err error) seedProblem {
	var le *lookupError
	switch {
	case errors.As(err, &le):
		return seedUnresolved
	case keyMismatch(err):
		return seedUnreadable
	case hungUp(err):
		return seedHungUp
	}
	return seedSilent
}

// seedWarning is the warning about a seed failing for p, and a hint at
// what to check.
func (n *Node) seedWarning(p seedProblem) (msg, hint string) {
	switch p {
	case seedUnresolved:
		return "seed lookup failed; retrying", ""
	case seedUnreadable:
		// memberlist's words for a seed that answered under another key.
		return "seed answered but could not be read; retrying",
			"likely another cluster key: the seed's -key (COHORT_KEY) differs from this node's"
	case seedHungUp:
		return "seed closed the connection without answering; retrying",
			fmt.Sprintf("likely another domain: a node drops connections from nodes of other domains unanswered; the seed's -domain (COHORT_DOMAIN) must be this node's, %q", n.cfg.Domain)
	}
	return "seed did not answer; retrying", "check that the seed runs and that its gossip port (TCP and UDP) is reachable from this node"
}

// cause names the likely cause p of a failed join, for an error or a
// status; it is empty for a seed that did not answer or resolve, whose
// error says it all.
func (n *Node) cause(p seedProblem) string {
	switch p {
	case seedUnreadable:
		return "likely another cluster key"
	case seedHungUp:
		return fmt.Sprintf("likely another domain than this node's %q", n.cfg.Domain)
	}
	return ""
}

// describe is err with its likely cause, for a status.
func (n *Node) describe(err error) string {
	if c := n.cause(problemOf(err)); c != "" {
		return err.Error() + " (" + c + ")"
	}
	return err.Error()
}

// keyMismatch reports whether err is memberlist's failure to decrypt or
// authenticate a seed's reply, or its refusal of an unencrypted one.
func keyMismatch(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "no installed keys could decrypt") || strings.Contains(msg, "encryption is configured but remote state is not encrypted") ||
		strings.Contains(msg, "remote state is encrypted and encryption is not configured")
}

// hungUp reports whether err says that the remote end closed the
// connection before answering: memberlist closes a stream of another
// label, that is another domain, without a word.
func hungUp(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.HasSuffix(msg, ": EOF") || strings.Contains(msg, ": EOF\n") ||
		strings.Contains(msg, "connection reset by peer") || strings.Contains(msg, "broken pipe")
}

// seedAnswered notes that seed answered at now, and logs the end of a run
// of failures.
func (n *Node) seedAnswered(seed string, now time.Time) {
	n.joinMu.Lock()
	st := n.seeds[seed]
	if st == nil {
		st = &seedState{}
		n.seeds[seed] = st
	}
	failures, since := st.failures, st.since
	st.failures, st.lastErr, st.lastOK = 0, "", now
	n.joinMu.Unlock()
	if failures > 0 {
		n.log.Info("seed answered", "seed", seed, "failures", failures,
			"failing_for", now.Sub(since).Round(time.Second))
	}
}

// rejoin joins every seed address that is not an alive member and every
// member that failed (not left) within DeadRetention, at its address and
// at any other address that claimed its name while it was alive (it
// restarted there). It runs in New and
// then every RejoinInterval, which is how a node that started before its
// seeds finds them, and how the two sides of a healed partition, which
// have each declared the other dead and stopped probing, merge again. It
// does nothing once Leave has started.
func (n *Node) rejoin() {
	if n.leaving.Load() {
		return
	}
	n.mu.Lock()
	alive := make(map[string]bool)
	var failed []string
	for _, m := range n.view {
		switch m.State {
		case StateAlive:
			alive[m.Addr] = true
		case StateDead:
			failed = append(failed, m.Addr)
			if a := n.claims[m.Name]; a != "" {
				failed = append(failed, a)
			}
		}
	}
	wasAlone := len(alive) <= 1
	n.mu.Unlock()
	alive[n.addr.String()] = true

	stopped := func() bool {
		select {
		case <-n.stop:
			return true
		default:
			// The node's context ends with Close, or with the start's
			// context when the start is given up.
			return n.ctx.Err() != nil || n.leaving.Load()
		}
	}
	seedsContacted, contacted := 0, 0 // addresses that answered
	tried := make(map[string]error)   // this round's joins: address -> failure, nil if it answered
	for _, seed := range n.cfg.Join {
		addrs, err := n.resolveSeed(seed)
		if stopped() {
			return // a lookup that Close cut short is no failure of the seed
		}
		if err != nil {
			n.seedFailed(seed, err, time.Now())
			continue
		}
		answered := false
		var errs []error
		for _, a := range addrs {
			if err, ok := tried[a]; ok { // another seed's address too, joined already
				if err != nil {
					errs = append(errs, err)
				} else {
					answered = true
				}
				continue
			}
			if alive[a] {
				answered = true
				continue
			}
			if stopped() {
				return
			}
			err := n.join(a)
			if err != nil && stopped() {
				return // a join that Close or the end of the start cut short
			}
			tried[a] = err
			if err != nil {
				errs = append(errs, err)
				continue
			}
			alive[a] = true
			answered = true
			seedsContacted++
			n.stats.seedJoins.Add(1)
		}
		switch {
		case answered:
			n.seedAnswered(seed, time.Now())
		case len(errs) > 0:
			n.seedFailed(seed, errors.Join(errs...), time.Now())
		}
	}
	slices.Sort(failed)
	for _, a := range slices.Compact(failed) {
		if _, ok := tried[a]; ok || alive[a] {
			continue
		}
		if stopped() {
			return
		}
		if err := n.join(a); err != nil {
			n.log.Debug("failed member still unreachable", "addr", a, "err", err)
			continue
		}
		contacted++
		n.stats.seedJoins.Add(1)
	}
	contacted += seedsContacted
	if !wasAlone || contacted == 0 {
		return
	}
	// A seed that refuses to pair (another manager kind) answers the join
	// but adds no member; the refusal is logged on its own.
	switch members := n.NumAlive(); {
	case members <= 1:
		n.log.Debug("nodes answered the join but none was accepted as a peer", "contacted", contacted)
	case seedsContacted > 0:
		n.log.Info("joined the cluster through seeds", "contacted", contacted, "members", members)
	default:
		n.log.Info("joined the cluster again through failed members", "contacted", contacted, "members", members)
	}
}

// resolveSeeds turns seeds (host:port, host, or a DNS name with several
// addresses) into IP:port strings. Errors of individual seeds are joined;
// the addresses that did resolve are returned with them.
func (n *Node) resolveSeeds(seeds []string) ([]string, error) {
	var out []string
	var errs []error
	for _, s := range seeds {
		addrs, err := n.resolveSeed(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, addrs...)
	}
	return out, errors.Join(errs...)
}

// resolveSeed turns one seed into IP:port strings.
func (n *Node) resolveSeed(seed string) ([]string, error) {
	_, defPort, _ := net.SplitHostPort(n.cfg.BindAddr)
	port, _ := strconv.Atoi(defPort)
	if port == 0 {
		port = n.addr.Port
	}
	host, p, err := seedHostPort(seed, port)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip != nil {
		return []string{net.JoinHostPort(ip.String(), strconv.Itoa(p))}, nil
	}
	r := n.cfg.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.DropTime)
	ips, err := r.LookupHost(ctx, host)
	cancel()
	if err != nil && n.ctx.Err() != nil {
		return nil, err // the node stopped
	}
	if err != nil {
		n.stats.seedLookupErrors.Add(1)
		return nil, &lookupError{host: host, err: err}
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip, strconv.Itoa(p)))
	}
	return out, nil
}

// lookupError is a seed host name that did not resolve.
type lookupError struct {
	host string
	err  error
}

func (e *lookupError) Error() string { return "resolve seed " + e.host + ": " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }
