package membership

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrClosed is returned by methods of a Node that has been closed.
var ErrClosed = errors.New("membership: node closed")

// RouteConflictError is returned by New when another node, alive at
// another address, already uses the route: two nodes with one route would
// take each other's sessions and, on leaving, remove each other.
type RouteConflictError struct {
	Route string // the route this node was given
	Addr  string // gossip address of the node that uses it, IP:port
}

func (e *RouteConflictError) Error() string {
	return fmt.Sprintf("membership: route %q is already used by %s", e.Route, e.Addr)
}

// Node is this process's membership in a Cohort cluster. Its methods are
// safe for concurrent use.
type Node struct {
	cfg      Config
	log      *slog.Logger
	ml       *memberlist.Memberlist
	started  time.Time
	metaMu   sync.Mutex // guards meta and manager
	meta     []byte     // encoded Meta, served to memberlist
	manager  string     // the manager kind advertised in meta
	addr     *net.TCPAddr
	stats    counters
	beacon   *beaconer // nil when multicast is off
	joins    *joiner
	stop     chan struct{}
	ctx      context.Context // ends with stop: bounds the node's seed lookups
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeMu  sync.Mutex // serialises Close and Leave
	isClosed atomic.Bool
	leaving  atomic.Bool // Leave has started: no more beacons, joins or rejoins

	// joinMu guards the fields below, which Stats reports.
	joinMu      sync.Mutex
	seeds       map[string]*seedState // by Config.Join entry
	lastJoinErr string                // the last failed join, with its likely cause
	lastJoinAt  time.Time             // when it failed

	// mu guards the fields below. Lock order: memberlist's node lock, then
	// mu (memberlist calls the delegates with its lock held).
	mu      sync.Mutex
	view    map[string]*Member
	subs    map[*Subscription]struct{}
	refused map[string]string // peer -> last refusal reason logged
	// claims is, by member, the last other address that claimed its name
	// while it was alive: a restart on a new address, which the peers
	// ignore until the old one fails, and rejoin then joins.
	claims map[string]string
	// While checking, that is until New returns, rivals collects the
	// addresses of nodes that claim this node's route, for New to verify.
	// Later claims are logged, rate-limited through conflicts.
	checking  bool
	rivals    map[string]bool
	conflicts map[string]time.Time // "route addr" -> when last logged
}

// counters are the node's statistics.
type counters struct {
	beaconsSent, beaconSendErrors, beaconsReceived   atomic.Int64
	beaconsForeign, beaconsBadMAC, beaconsMalformed  atomic.Int64
	beaconJoins, seedJoins, joinErrors, peersRefused atomic.Int64
	seedLookupErrors, memberJoins, memberLeaves      atomic.Int64
	memberFailures                                   atomic.Int64
}

// Stats is a snapshot of a node's counters.
type Stats struct {
	BeaconsSent      int64        // beacons multicast
	BeaconSendErrors int64        // beacons that could not be sent
	BeaconsReceived  int64        // well-formed beacons of this domain, this node's own excluded
	BeaconsForeign   int64        // beacons of another domain, ignored
	BeaconsBadMAC    int64        // beacons whose HMAC did not verify (wrong or missing key), ignored
	BeaconsMalformed int64        // undecodable beacons, ignored
	BeaconJoins      int64        // joins triggered by beacons that succeeded
	SeedJoins        int64        // joins to seeds or failed members that succeeded
	JoinErrors       int64        // join attempts that failed
	LastJoinError    string       // the last failed join attempt's error and likely cause; empty if none failed
	LastJoinErrorAt  time.Time    // when it failed
	SeedLookupErrors int64        // seed DNS lookups that failed
	PeersRefused     int64        // alive messages refused: bad metadata, domain, protocol or manager kind
	MemberJoins      int64        // join events
	MemberLeaves     int64        // graceful leave events
	MemberFailures   int64        // failure events
	Seeds            []SeedStatus // one per Config.Join entry, in order
}

// SeedStatus is what a node knows of one of its seeds.
type SeedStatus struct {
	Seed      string    // as in Config.Join
	Failures  int       // consecutive failed attempts; 0 once it answers
	LastError string    // the last failed attempt's error and likely cause; empty once it answers
	LastOK    time.Time // when it last answered, or was seen as an alive member; zero if never
	// Refused says that its last attempt was answered but refused: the
	// seed runs, under another cluster key or domain, so this node cannot
	// join the cluster it was pointed at.
	Refused bool
}

// New validates cfg, binds the gossip listeners, starts discovery and
// returns the running node. It makes the first attempt to join the seeds
// and, with multicast on, listens for one round of beacons (Frequency plus
// a fifth) before it returns; a seed that does not answer is retried in the
// background, as are beacons heard later: watch Members or Subscribe to see
// the cluster form. New fails with a *RouteConflictError when a node alive
// at another address already uses cfg.Route.
func New(cfg Config) (*Node, error) {
	return NewContext(context.Background(), cfg)
}

// NewContext is New with a context for the start: if ctx ends before the
// node has made its first join and, with multicast on, heard its first
// round of beacons, the joins and seed lookups in flight end at once, the
// node is closed, and NewContext returns an error that wraps ctx.Err().
// Once NewContext has returned the node, ctx no longer matters.
func NewContext(ctx context.Context, cfg Config) (*Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("membership: start: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Join = slices.Clone(cfg.Join)
	cfg.Key = slices.Clone(cfg.Key)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	n := &Node{
		cfg:     cfg,
		log:     logger.With("component", "membership", "route", cfg.Route),
		started: time.Now(),
		stop:    make(chan struct{}),
		view:    make(map[string]*Member),
		subs:    make(map[*Subscription]struct{}),
		refused: make(map[string]string),
		claims:  make(map[string]string),
		seeds:   make(map[string]*seedState),
		// Until New returns, a node claiming this route is a reason to
		// fail rather than something to log.
		checking:  true,
		rivals:    make(map[string]bool),
		conflicts: make(map[string]time.Time),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.meta, _ = encodeMeta(cfg.meta(n.started)) // checked by validate
	n.manager = cfg.Manager

	mc := n.memberlistConfig()
	tr, err := newTransport(n.ctx, mc)
	if err != nil {
		n.cancel()
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	mc.Transport = tr
	ml, err := memberlist.Create(mc)
	if err != nil {
		n.cancel()
		_ = tr.Shutdown()
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	n.ml = ml
	local := ml.LocalNode()
	n.addr = &net.TCPAddr{IP: local.Addr, Port: int(local.Port)}

	n.joins = newJoiner(n)
	n.goFunc(n.joins.run)
	if cfg.MulticastAddr != "" {
		b, err := listenBeacons(n)
		if err != nil {
			_ = n.Close()
			return nil, err
		}
		n.beacon = b
		n.goFunc(b.receiveLoop)
		n.goFunc(b.sendLoop)
	}

	t := mapTimings(cfg.Frequency, cfg.DropTime)
	n.log.Info("membership started",
		"addr", n.addr.String(), "domain", cfg.Domain, "multicast", orOff(cfg.MulticastAddr),
		"seeds", append([]string{}, cfg.Join...), "encrypted", len(cfg.Key) > 0, // [] rather than null in JSON
		"frequency", cfg.Frequency, "drop_time", cfg.DropTime,
		"probe_interval", t.ProbeInterval, "suspicion_mult", t.SuspicionMult)
	if len(cfg.Join) == 0 && cfg.MulticastAddr == "" {
		n.log.Info("no seeds and multicast off: running alone until another node joins this one")
	}

	// The first join happens here rather than in the background, and with
	// multicast on, New listens for one round of beacons, so that a route
	// already in use fails the start instead of confusing the cluster.
	//
	// The end of ctx cancels the node's own context, which cuts short
	// every join and lookup in flight.
	abort := context.AfterFunc(ctx, n.cancel)
	n.rejoin()
	if n.beacon != nil {
		select {
		case <-time.After(cfg.Frequency + cfg.Frequency/5): // beacons go out every Frequency ±10%
		case <-n.ctx.Done():
		}
	}
	if !abort() {
		_ = n.Close()
		return nil, fmt.Errorf("membership: start of %s stopped before its first join completed: %w", cfg.Route, ctx.Err())
	}
	if err := n.checkRivals(); err != nil {
		_ = n.Close()
		return nil, err
	}
	n.goFunc(n.maintainLoop)
	return n, nil
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

// goFunc runs f in a goroutine owned by the node.
func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// memberlistConfig maps Config onto memberlist.
func (n *Node) memberlistConfig() *memberlist.Config {
	c := n.cfg
	mc := memberlist.DefaultLANConfig()
	bind, _ := splitHostPort(c.BindAddr, -1)
	mc.Name = c.Route
	mc.BindAddr = "0.0.0.0"
	if bind.IP != nil {
		mc.BindAddr = bind.IP.String()
	}
	mc.BindPort = bind.Port
	mc.AdvertisePort = bind.Port // memberlist fills in the bound port when 0
	if c.AdvertiseAddr != "" {
		adv, _ := splitHostPort(c.AdvertiseAddr, -1)
		mc.AdvertiseAddr = adv.IP.String()
		mc.AdvertisePort = adv.Port
	}
	mc.Label = c.Domain
	if len(c.Key) > 0 {
		mc.SecretKey = slices.Clone(c.Key)
	}
	t := mapTimings(c.Frequency, c.DropTime)
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.GossipInterval = t.GossipInterval
	mc.SuspicionMult = t.SuspicionMult
	mc.SuspicionMaxTimeoutMult = 1
	mc.PushPullInterval = t.PushPullInterval
	mc.GossipToTheDeadTime = t.GossipToTheDead
	mc.TCPTimeout = t.TCPTimeout
	// A node that restarts with its route on a new address takes its name
	// back as soon as the old incarnation has been declared dead.
	mc.DeadNodeReclaimTime = time.Millisecond
	mc.Delegate = (*delegate)(n)
	mc.Events = (*eventDelegate)(n)
	mc.Alive = (*aliveDelegate)(n)
	mc.Conflict = (*conflictDelegate)(n)
	mc.Logger = log.New(&logBridge{log: n.log, closed: &n.isClosed, domain: c.Domain}, "", 0)
	mc.DNSConfigPath = "" // seeds are resolved by Node, not memberlist
	// Gossip packets are a few hundred bytes, which LZW does not shrink,
	// and compressing one allocates a fresh 64 KiB table. Receivers read
	// compressed and plain messages alike, so nodes of either setting mix.
	mc.EnableCompression = false
	return mc
}

// Addr returns the gossip address other nodes reach this node on.
func (n *Node) Addr() net.Addr { return n.addr }

// Route returns this node's route.
func (n *Node) Route() string { return n.cfg.Route }

// Domain returns the cluster domain.
func (n *Node) Domain() string { return n.cfg.Domain }

// Local returns this node as a Member.
func (n *Node) Local() Member {
	meta, _ := DecodeMeta(n.localMeta())
	return Member{Name: n.cfg.Route, Addr: n.addr.String(), Meta: meta, State: StateAlive, Since: n.started}
}

// Members returns every member this node knows of, itself included, sorted
// by name, with their metadata and state. Failed and departed members stay
// listed, as StateDead or StateLeft, for Config.DeadRetention or until they
// come back.
func (n *Node) Members() []Member {
	n.mu.Lock()
	out := make([]Member, 0, len(n.view))
	for _, m := range n.view {
		out = append(out, *m)
	}
	n.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// NumAlive returns how many members, this node included, are alive.
func (n *Node) NumAlive() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for _, m := range n.view {
		if m.State == StateAlive {
			k++
		}
	}
	return k
}

// Subscribe returns a subscription that first delivers an EventJoin for
// every other member alive now, then every change, in order. Events about
// this node itself are not delivered.
func (n *Node) Subscribe() *Subscription {
	n.mu.Lock()
	defer n.mu.Unlock()
	var initial []Event
	for _, m := range n.view {
		if m.Name != n.cfg.Route && m.State == StateAlive {
			initial = append(initial, Event{Type: EventJoin, Member: *m})
		}
	}
	slices.SortFunc(initial, func(a, b Event) int {
		if a.Member.Name < b.Member.Name {
			return -1
		}
		return 1
	})
	s := newSubscription(n, initial)
	if n.isClosed.Load() {
		close(s.done)
		s.closed = true
		close(s.c)
		return s
	}
	n.subs[s] = struct{}{}
	n.goFunc(func() { s.pump(n.stop) })
	return s
}

func (n *Node) unsubscribe(s *Subscription) {
	n.mu.Lock()
	delete(n.subs, s)
	n.mu.Unlock()
}

// Join contacts the given addresses (host:port, host names resolved through
// Config.Resolver) and merges this node's view with theirs. It returns how
// many addresses answered; an error only when none did.
func (n *Node) Join(addrs ...string) (int, error) {
	if n.isClosed.Load() {
		return 0, ErrClosed
	}
	resolved, err := n.resolveSeeds(addrs)
	if len(resolved) == 0 {
		if err == nil {
			err = errors.New("no address to join")
		}
		return 0, fmt.Errorf("membership: join: %w", err)
	}
	k, jerr := n.ml.Join(resolved)
	if k == 0 {
		jerr = joinError(jerr)
		if c := n.cause(problemOf(jerr)); c != "" {
			return 0, fmt.Errorf("membership: join %v: %w (%s)", resolved, jerr, c)
		}
		return 0, fmt.Errorf("membership: join %v: %w", resolved, jerr)
	}
	return k, nil
}

// UpdateMeta changes the replication address and manager kind this node
// advertises and waits, at most timeout, for the change to reach the
// cluster, where subscribers see an EventUpdate. Metadata that would not
// fit memberlist's limit with the leaving flag is refused with
// ErrMetaTooLarge.
func (n *Node) UpdateMeta(replicationAddr, manager string, timeout time.Duration) error {
	if n.isClosed.Load() {
		return ErrClosed
	}
	return n.setMeta(func(m *Meta) { m.ReplicationAddr, m.Manager = replicationAddr, manager }, timeout)
}

// setMeta applies f to the advertised metadata and broadcasts it.
func (n *Node) setMeta(f func(*Meta), timeout time.Duration) error {
	n.metaMu.Lock()
	m, _ := DecodeMeta(n.meta)
	f(&m)
	b, err := encodeMeta(m)
	if err != nil {
		n.metaMu.Unlock()
		return err
	}
	n.meta, n.manager = b, m.Manager
	n.metaMu.Unlock()
	if err := n.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("membership: update metadata: %w", err)
	}
	return nil
}

func (n *Node) localMeta() []byte {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	return n.meta
}

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	s := &n.stats
	n.joinMu.Lock()
	lastErr, lastAt := n.lastJoinErr, n.lastJoinAt
	seeds := make([]SeedStatus, 0, len(n.cfg.Join))
	for _, seed := range n.cfg.Join {
		ss := SeedStatus{Seed: seed}
		if st := n.seeds[seed]; st != nil {
			ss.Failures, ss.LastError, ss.LastOK = st.failures, st.lastErr, st.lastOK
			ss.Refused = st.failures > 0 && (st.lastProblem == seedUnreadable || st.lastProblem == seedHungUp)
		}
		seeds = append(seeds, ss)
	}
	n.joinMu.Unlock()
	return Stats{
		BeaconsSent:      s.beaconsSent.Load(),
		BeaconSendErrors: s.beaconSendErrors.Load(),
		BeaconsReceived:  s.beaconsReceived.Load(),
		BeaconsForeign:   s.beaconsForeign.Load(),
		BeaconsBadMAC:    s.beaconsBadMAC.Load(),
		BeaconsMalformed: s.beaconsMalformed.Load(),
		BeaconJoins:      s.beaconJoins.Load(),
		SeedJoins:        s.seedJoins.Load(),
		JoinErrors:       s.joinErrors.Load(),
		LastJoinError:    lastErr,
		LastJoinErrorAt:  lastAt,
		SeedLookupErrors: s.seedLookupErrors.Load(),
		PeersRefused:     s.peersRefused.Load(),
		MemberJoins:      s.memberJoins.Load(),
		MemberLeaves:     s.memberLeaves.Load(),
		MemberFailures:   s.memberFailures.Load(),
		Seeds:            seeds,
	}
}

// Leave tells the cluster this node is going, waits at most timeout in all
// for the message to go out, then stops the node as Close does. Peers
// report the node as left, at once, rather than failed after DropTime.
// From the start of Leave the node sends no beacons and joins no one.
//
// Leave does not wait when no other member is alive and staying: every
// peer has failed, left, or is leaving too, as when a whole cluster stops
// at once. memberlist's messages would then have no one to go to, and
// each of its two waits (the leaving flag, then the leave itself) would
// last the whole timeout.
//
// A leave that no peer confirms within timeout is not returned as an
// error: it is logged, as a warning while some peer is still seen alive
// (it reports a failure instead, DropTime later), and at Info when every
// peer has left too. Leave returns an error only when the node could not
// be stopped, or ErrClosed.
func (n *Node) Leave(timeout time.Duration) error {
	n.closeMu.Lock()
	if n.isClosed.Load() {
		n.closeMu.Unlock()
		return ErrClosed
	}
	n.leaving.Store(true)
	deadline := time.Now().Add(timeout)
	// wait is the time left for a step: none when no peer stays to hear it.
	alone := false
	wait := func() time.Duration {
		if alone = !n.peerStaying(); alone {
			return time.Nanosecond // memberlist reads 0 as no timeout
		}
		return until(deadline)
	}
	// Mark the metadata first: memberlist reports a leave and a failure
	// through the same callback, and peers tell them apart by this flag. A
	// step that did not wait times out at once: that is no error.
	var err error
	if merr := n.setMeta(func(m *Meta) { m.Leaving = true }, wait()); !alone {
		err = merr
	} else if n.peerStaying() {
		// A peer took this node in meanwhile, with its metadata of before,
		// and the leave would replace the flag's broadcast, not yet sent:
		// the peer would see a failure. The flag goes again, waited for.
		if merr := n.setMeta(func(*Meta) {}, wait()); !alone {
			err = merr
		}
	}
	// Checked again: the peers may have started leaving meanwhile.
	if lerr := n.ml.Leave(wait()); !alone && err == nil {
		err = lerr
	}
	n.closeMu.Unlock()
	switch {
	case alone:
		n.log.Info("left the cluster; no peer was left to tell")
	case err == nil:
		n.log.Info("left the cluster")
	case n.NumAlive() == 0: // the peers left too, and so has this node
		n.log.Info("left the cluster; no peer was left to confirm it", "err", err)
	default:
		n.log.Warn("leave not confirmed by any peer; a peer that missed it reports this node failed",
			"timeout", timeout, "err", err)
	}
	return n.Close()
}

// peerStaying reports whether another member is alive and not leaving.
func (n *Node) peerStaying() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.view {
		if m.Name != n.cfg.Route && m.State == StateAlive && !m.Meta.Leaving {
			return true
		}
	}
	return false
}

// until returns the time left before deadline, at least 1ns: memberlist
// reads a zero timeout as no timeout.
func until(deadline time.Time) time.Duration {
	return max(time.Until(deadline), time.Nanosecond)
}

// Close stops the node without telling the cluster: peers see it fail after
// DropTime, as if the process had been killed. It closes every Subscription,
// ends the gossip connections this node opened, so that a Join still waiting
// on a seed fails at once, and waits for the node's goroutines. Close is
// idempotent.
func (n *Node) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	// Marked closed under mu, which Subscribe holds while it checks the
	// mark and starts its pump: none starts once wg is waited for.
	n.mu.Lock()
	was := n.isClosed.Swap(true)
	n.mu.Unlock()
	if was {
		return nil
	}
	close(n.stop)
	n.cancel() // a seed lookup in flight ends now, not at its timeout
	if n.beacon != nil {
		n.beacon.close()
	}
	err := n.ml.Shutdown()
	n.wg.Wait()
	n.mu.Lock()
	for s := range n.subs {
		delete(n.subs, s)
	}
	n.mu.Unlock()
	return err
}

// member converts a memberlist node.
func (n *Node) member(node *memberlist.Node, st State) Member {
	meta, _ := DecodeMeta(node.Meta) // refused by aliveDelegate if malformed
	return Member{
		Name:  node.Name,
		Addr:  nodeAddr(node),
		Meta:  meta,
		State: st,
		Since: time.Now(),
	}
}

// record updates the view and publishes ev to subscribers. Called with
// memberlist's node lock held: it must not block.
func (n *Node) record(ev Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := ev.Member
	n.view[m.Name] = &m
	if m.Name == n.cfg.Route {
		return
	}
	delete(n.refused, m.Name)
	if m.State == StateAlive && n.claims[m.Name] == m.Addr {
		delete(n.claims, m.Name) // taken in at the address that claimed it
	}
	for s := range n.subs {
		s.push(ev)
	}
}

// maintainLoop rejoins seeds and failed members and forgets members that
// have been gone for DeadRetention. It exits when the node stops.
func (n *Node) maintainLoop() {
	t := time.NewTimer(n.cfg.RejoinInterval) // New made the first attempt
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		n.rejoin()
		n.reap()
		t.Reset(n.cfg.RejoinInterval)
	}
}

func (n *Node) reap() {
	cutoff := time.Now().Add(-n.cfg.DeadRetention)
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, m := range n.view {
		if (m.State == StateDead || m.State == StateLeft) && m.Since.Before(cutoff) {
			delete(n.view, name)
			delete(n.claims, name)
		}
	}
}

// delegate, eventDelegate, aliveDelegate and conflictDelegate are the Node
// seen by memberlist. They are distinct types so that Node's method set
// stays the public API.
type (
	delegate         Node
	eventDelegate    Node
	aliveDelegate    Node
	conflictDelegate Node
)

func (d *delegate) NodeMeta(limit int) []byte {
	b := (*Node)(d).localMeta()
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// memberlist does not stop its suspicion timers on Shutdown, so the event
// delegates may be called after Close; they drop those calls.

func (e *eventDelegate) NotifyJoin(node *memberlist.Node) {
	n := (*Node)(e)
	if n.isClosed.Load() {
		return
	}
	m := n.member(node, StateAlive)
	if m.Name != n.cfg.Route {
		n.stats.memberJoins.Add(1)
		n.log.Info("member joined", "peer", m.Name, "addr", m.Addr, "replication", m.Meta.ReplicationAddr)
	}
	n.record(Event{Type: EventJoin, Member: m})
}

func (e *eventDelegate) NotifyLeave(node *memberlist.Node) {
	n := (*Node)(e)
	if n.isClosed.Load() {
		return
	}
	if node.Name == n.cfg.Route { // this node, leaving: Leave logs it
		n.record(Event{Type: EventLeave, Member: n.member(node, StateLeft)})
		return
	}
	if meta, _ := DecodeMeta(node.Meta); meta.Leaving {
		m := n.member(node, StateLeft)
		n.stats.memberLeaves.Add(1)
		n.log.Info("member left", "peer", m.Name, "addr", m.Addr)
		n.record(Event{Type: EventLeave, Member: m})
		return
	}
	m := n.member(node, StateDead)
	n.stats.memberFailures.Add(1)
	n.log.Warn("member failed", "peer", m.Name, "addr", m.Addr)
	n.record(Event{Type: EventFail, Member: m})
}

func (e *eventDelegate) NotifyUpdate(node *memberlist.Node) {
	n := (*Node)(e)
	if n.isClosed.Load() {
		return
	}
	m := n.member(node, StateAlive)
	if m.Name != n.cfg.Route {
		n.log.Info(n.updateMessage(m), "peer", m.Name, "addr", m.Addr, "replication", m.Meta.ReplicationAddr, "manager", m.Meta.Manager)
	}
	n.record(Event{Type: EventUpdate, Member: m})
}

// updateMessage is the log message of an update of m: whether it is
// leaving, restarted (another start time or address than this node knew
// it by), or only changed its metadata.
func (n *Node) updateMessage(m Member) string {
	if m.Meta.Leaving {
		return "member leaving"
	}
	n.mu.Lock()
	prev := n.view[m.Name]
	n.mu.Unlock()
	if prev != nil && (prev.Addr != m.Addr || !prev.Meta.Started.Equal(m.Meta.Started)) {
		return "member restarted"
	}
	return "member updated"
}

// NotifyAlive decides whether a node may be a peer: its metadata must
// decode and match this node's domain, protocol range and manager kind.
func (a *aliveDelegate) NotifyAlive(peer *memberlist.Node) error {
	n := (*Node)(a)
	if peer.Name == n.cfg.Route {
		return nil
	}
	reason := n.refusal(peer)
	if reason == "" {
		return nil
	}
	n.stats.peersRefused.Add(1)
	n.mu.Lock()
	logged := n.refused[peer.Name] == reason
	n.refused[peer.Name] = reason
	n.mu.Unlock()
	if !logged {
		n.log.Warn("refusing to pair with node", "peer", peer.Name,
			"addr", nodeAddr(peer), "reason", reason)
	}
	return errors.New(reason)
}

// NotifyConflict is called, with memberlist's node lock held, when an alive
// message gives a member's name with another address than the member's:
// memberlist ignores it. existing is this node when another node claims
// its route.
func (c *conflictDelegate) NotifyConflict(existing, other *memberlist.Node) {
	n := (*Node)(c)
	if n.isClosed.Load() {
		return
	}
	addr := nodeAddr(other)
	if existing.Name == n.cfg.Route {
		n.claimed(addr)
		return
	}
	n.mu.Lock()
	n.claims[existing.Name] = addr
	n.mu.Unlock()
	if n.noteConflict(existing.Name, addr) {
		n.log.Info("ignoring a second address for a member until the first fails",
			"peer", existing.Name, "addr", nodeAddr(existing), "other", addr)
	}
}

// claimed handles a node at addr that claims this node's route: New is
// checking, it verifies the claim; otherwise it is logged.
func (n *Node) claimed(addr string) {
	n.mu.Lock()
	if n.checking {
		n.rivals[addr] = true
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	if n.noteConflict(n.cfg.Route, addr) {
		n.log.Warn("another node claims this node's route; peers ignore it while this node is alive", "addr", addr)
	}
}

// conflictLogEvery rate-limits the logs about one conflicting address.
const conflictLogEvery = time.Minute

// noteConflict reports whether a conflict of route with addr is to be
// logged: the first time, then at most every conflictLogEvery.
func (n *Node) noteConflict(route, addr string) bool {
	key := route + " " + addr
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if last, ok := n.conflicts[key]; ok && now.Sub(last) < conflictLogEvery {
		return false
	}
	if len(n.conflicts) >= 64 {
		for k, t := range n.conflicts {
			if now.Sub(t) >= conflictLogEvery {
				delete(n.conflicts, k)
			}
		}
	}
	n.conflicts[key] = now
	return true
}

// checkRivals ends New's check: it pings every node that claimed this
// node's route and returns a *RouteConflictError for one that answers to
// the route. A claim nobody answers is this node's own previous
// incarnation, which its peers have not yet declared dead.
func (n *Node) checkRivals() error {
	n.mu.Lock()
	rivals := slices.Sorted(maps.Keys(n.rivals))
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.checking = false
		clear(n.rivals)
		n.mu.Unlock()
	}()
	for _, a := range rivals {
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			continue
		}
		for range 2 { // one lost datagram is no proof of absence
			if _, err = n.ml.Ping(n.cfg.Route, ua); err == nil {
				break
			}
		}
		if err != nil {
			n.log.Debug("route claimed by a node that does not answer; taking it over", "addr", a, "err", err)
			continue
		}
		// Join it, so that it learns of this node and logs the conflict too.
		_, _ = n.ml.Join([]string{a})
		return &RouteConflictError{Route: n.cfg.Route, Addr: a}
	}
	return nil
}

func nodeAddr(node *memberlist.Node) string {
	return net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port)))
}

func (n *Node) refusal(peer *memberlist.Node) string {
	n.metaMu.Lock()
	manager := n.manager
	n.metaMu.Unlock()
	meta, err := DecodeMeta(peer.Meta)
	switch {
	case err != nil:
		return "unreadable metadata: " + err.Error()
	case meta.Domain != n.cfg.Domain:
		return fmt.Sprintf("domain %q, this node's is %q", meta.Domain, n.cfg.Domain)
	case meta.Route != peer.Name:
		return fmt.Sprintf("metadata route %q does not match member name", meta.Route)
	case meta.Protocol < MinProtocolVersion || meta.Protocol > ProtocolVersion:
		return fmt.Sprintf("protocol version %d, this node speaks %d-%d", meta.Protocol, MinProtocolVersion, ProtocolVersion)
	case meta.Manager != "" && manager != "" && meta.Manager != manager:
		return fmt.Sprintf("session manager %q, this node runs %q; all nodes of a domain must use the same manager", meta.Manager, manager)
	}
	return ""
}
