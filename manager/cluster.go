package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
)

// MsgType is the replication message type that carries manager messages.
const MsgType = replication.FirstUserType

// ChannelTransport returns a Transport that sends over ch, as messages of
// type MsgType. The manager's Receive must be ch's handler of MsgType
// (StartCluster does both).
func ChannelTransport(ch *replication.Channel) Transport { return channelTransport{ch} }

type channelTransport struct{ ch *replication.Channel }

func (t channelTransport) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	return t.ch.Send(ctx, to, MsgType, msg, mode)
}

func (t channelTransport) sendWithin(ctx context.Context, timeout time.Duration, to []string, msg []byte, mode SendMode, queued func()) error {
	return t.ch.SendQueued(ctx, timeout, to, MsgType, msg, mode, queued)
}

func (t channelTransport) Peers() []string { return t.ch.Peers() }

// streamWindow is how many state transfer chunks may await their
// acknowledgement at once.
const streamWindow = 4

func (t channelTransport) openStream(peer string) (chunkStream, error) {
	s, err := t.ch.OpenStream(peer, MsgType, streamWindow)
	if err != nil {
		return nil, err // not a nil *Stream in a non-nil interface
	}
	return s, nil
}

// streamOpener is implemented by transports that can stream messages to
// one peer with flow control (the replication channel's Stream); state
// transfer and resynchronisation use it when there.
type streamOpener interface {
	openStream(peer string) (chunkStream, error)
}

// chunkStream is a flow-controlled sequence of messages to one peer.
type chunkStream interface {
	Write(ctx context.Context, body []byte) error
	Close(ctx context.Context) error
}

// The manager kinds, as the -manager flag and node metadata name them.
const (
	KindDelta    = "delta"
	KindBackup   = "backup"
	KindStandard = "standard"
)

// ClusterConfig configures a Cluster: this node's membership, its
// replication channel and its session manager.
type ClusterConfig struct {
	// Kind is the session manager: KindDelta (default), KindBackup or
	// KindStandard. Nodes of one domain must all run the same kind.
	Kind string
	// Manager configures the session manager; for Delta only its
	// DeltaConfig part is used, for Standard only its Config part. An empty
	// Route or Logger is taken from Membership.
	Manager BackupConfig
	// Membership configures discovery and failure detection. Its
	// ReplicationAddr and Manager are filled in by StartCluster.
	Membership membership.Config
	// Replication configures the channel. An empty Addr means the gossip
	// port + 1000 on the gossip host (port 0 when gossip's is 0); an Addr
	// on all interfaces (0.0.0.0 or ::) is advertised to peers at the IP
	// gossip is advertised at. Route, Domain, Key and Logger default to
	// Membership's.
	Replication replication.Config
	// JoinWait is how long a starting node looks for peers before it
	// concludes it is the first and serves with no sessions. A node that
	// finds a peer first fetches every session from it (Delta). Default
	// 2 × Membership.Frequency, at least 1s.
	JoinWait time.Duration
	// ConnectWait bounds how long a node that has its sessions waits, before
	// it reports ready, for every peer to connect to it. Default 3s.
	ConnectWait time.Duration
}

// DefaultClusterConfig returns a Delta cluster with the default membership,
// replication and manager settings.
func DefaultClusterConfig() ClusterConfig {
	return ClusterConfig{
		Kind:        KindDelta,
		Manager:     DefaultBackupConfig(),
		Membership:  membership.DefaultConfig(),
		Replication: replicationDefaults(),
	}
}

// replicationDefaults are replication's defaults with no address, so that
// StartCluster derives it from the gossip address.
func replicationDefaults() replication.Config {
	rc := replication.DefaultConfig()
	rc.Addr = ""
	return rc
}

// Cluster is one node of a Cohort cluster: membership, the replication
// channel and a session manager wired together. It keeps the channel's
// peers equal to the live members, tells the manager when they change,
// resynchronises peers that missed changes, and runs the state transfer
// of a joining node. Hand Manager() to the web layer.
type Cluster struct {
	cfg  ClusterConfig
	log  *slog.Logger
	node *membership.Node
	ch   *replication.Channel // nil for Standard
	mgr  Manager
	repl *replicated // nil for Standard

	sub    *membership.Subscription
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	down     chan struct{} // closed by Drain or Close: not ready any more
	downOnce sync.Once

	readyMu    sync.Mutex
	readySince time.Time   // when the state transfer was first seen done
	inbound    atomic.Bool // every peer connected to this node once ready

	// lost records, for members removed while alive elsewhere (failed,
	// not left), the start time of the incarnation that was lost. When the
	// same incarnation comes back, the two sides were partitioned and
	// exchange their sessions; a restarted node fetches them itself.
	lost map[string]time.Time
	// started records the start time of each peer's incarnation as it
	// was added: one seen again with another start time restarted
	// without being declared failed in between.
	started map[string]time.Time
}

// StartCluster starts the replication channel, the manager and
// membership, in that order, and returns once membership has made its
// first join (membership.New says what that waits for); it does not wait
// for state. The node is Ready once it has found its peers and, for
// Delta, fetched every session from one.
func StartCluster(cfg ClusterConfig) (*Cluster, error) {
	return StartClusterContext(context.Background(), cfg)
}

// StartClusterContext is StartCluster with a context for the start: if
// ctx ends before membership's first join is done, as when the process is
// told to stop while a seed does not answer, the start is given up at
// once, everything it started is closed, and the error wraps ctx.Err().
// Once the Cluster is returned, ctx no longer matters; stop it with Close
// or Shutdown.
func StartClusterContext(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Kind == "" {
		cfg.Kind = KindDelta
	}
	mc := &cfg.Membership
	if mc.Frequency <= 0 {
		return nil, &ConfigError{"Membership.Frequency", mc.Frequency.String(), "a positive duration such as 500ms; start from DefaultClusterConfig"}
	}
	if mc.DropTime <= 0 {
		return nil, &ConfigError{"Membership.DropTime", mc.DropTime.String(), "a positive duration such as 3s; start from DefaultClusterConfig"}
	}
	if cfg.JoinWait <= 0 {
		cfg.JoinWait = max(2*mc.Frequency, time.Second)
	}
	if cfg.ConnectWait <= 0 {
		cfg.ConnectWait = 3 * time.Second
	}
	log := mc.Logger
	if log == nil {
		log = slog.Default()
	}
	mgrCfg := cfg.Manager
	if mgrCfg.Route == "" {
		mgrCfg.Route = mc.Route
	}
	if mgrCfg.Logger == nil {
		mgrCfg.Logger = log
	}
	c := &Cluster{cfg: cfg, log: log.With("component", "cluster"), down: make(chan struct{}), lost: make(map[string]time.Time), started: make(map[string]time.Time)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var err error
	switch cfg.Kind {
	case KindStandard:
		if c.mgr, err = NewStandard(mgrCfg.Config); err != nil {
			return nil, err
		}
		mc.ReplicationAddr = "" // no channel: nothing listens there
	case KindDelta, KindBackup:
		rc := cfg.Replication
		if rc.Route == "" {
			rc.Route = mc.Route
		}
		if rc.Domain == "" || rc.Domain == replication.DefaultConfig().Domain {
			rc.Domain = mc.Domain
		}
		if rc.Key == nil {
			rc.Key = mc.Key
		}
		if rc.Logger == nil {
			rc.Logger = log
		}
		if rc.Addr == "" {
			if rc.Addr, err = replicationAddr(mc.BindAddr); err != nil {
				return nil, err
			}
		}
		if c.ch, err = replication.New(rc); err != nil {
			return nil, err
		}
		if mgrCfg.MaxSessionSize == 0 {
			mgrCfg.MaxSessionSize = sessionBound(rc.MaxFrameSize)
		}
		t := ChannelTransport(c.ch)
		if cfg.Kind == KindDelta {
			d, derr := NewDelta(mgrCfg.DeltaConfig, t)
			c.mgr, err = d, derr
			if d != nil {
				c.repl = d.replicated
			}
		} else {
			b, berr := NewBackup(mgrCfg, t)
			c.mgr, err = b, berr
			if b != nil {
				c.repl = b.replicated
			}
		}
		if err != nil {
			_ = c.ch.Close()
			return nil, err
		}
		c.ch.Handle(MsgType, c.repl.Receive)
		c.ch.OnResync(func(peer string) {
			c.ch.ClearResync(peer)
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.repl.resync(peer)
			}()
		})
		mc.ReplicationAddr = c.ch.Addr().String()
	default:
		return nil, &ConfigError{"Kind", cfg.Kind, "delta, backup or standard"}
	}
	mc.Manager = cfg.Kind
	// A channel listening on all interfaces cannot be advertised as it
	// listens: to a peer, 0.0.0.0 or :: is the peer itself. It is
	// advertised at the gossip address's IP, known once membership runs;
	// until then peers see no replication address and leave it be.
	var replPort string
	if host, port, err := net.SplitHostPort(mc.ReplicationAddr); err == nil && host != "" {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			mc.ReplicationAddr, replPort = "", port
		}
	}
	if c.node, err = membership.NewContext(ctx, *mc); err != nil {
		c.closeParts(context.Background())
		return nil, err
	}
	if replPort != "" {
		host, _, _ := net.SplitHostPort(c.node.Addr().String())
		addr := net.JoinHostPort(host, replPort)
		// The wait only bounds how long this waits for the broadcast to
		// go out; gossip spreads it all the same.
		if err := c.node.UpdateMeta(addr, cfg.Kind, time.Second); errors.Is(err, membership.ErrMetaTooLarge) || errors.Is(err, membership.ErrClosed) {
			c.closeParts(context.Background())
			return nil, fmt.Errorf("manager: advertise replication address %s: %w", addr, err)
		}
		c.log.Info("replication channel listens on all interfaces: advertised at the gossip IP", "listen", c.ch.Addr().String(), "advertised", addr)
	}
	c.sub = c.node.Subscribe()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.follow()
	}()
	if c.repl != nil {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.syncLoop()
		}()
	}
	return c, nil
}

// catchUpMargin widens the window of changes sent to a new peer, for
// clock skew between nodes (a revision's time is its committing node's
// clock, a member's start time its own).
const catchUpMargin = 5 * time.Second

// replicationAddr is the default replication address: the gossip host and
// port + 1000 (port 0 stays 0).
func replicationAddr(bind string) (string, error) {
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return "", &ConfigError{"Membership.BindAddr", bind, "host:port"}
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p+1000 > 65535 {
		return "", &ConfigError{"Membership.BindAddr", bind, "host:port with a port of at most 64535, or set Replication.Addr"}
	}
	if p > 0 {
		p += 1000
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// Manager returns the session manager.
func (c *Cluster) Manager() Manager { return c.mgr }

// Membership returns the membership node.
func (c *Cluster) Membership() *membership.Node { return c.node }

// Channel returns the replication channel, nil for the Standard manager.
func (c *Cluster) Channel() *replication.Channel { return c.ch }

// Kind returns the manager kind.
func (c *Cluster) Kind() string { return c.cfg.Kind }

// Ready reports whether the node can serve sessions: it has its state (or
// found no peer to fetch it from) and is not shutting down.
func (c *Cluster) Ready() bool {
	select {
	case <-c.down:
		return false
	default:
	}
	if c.repl == nil {
		return true
	}
	if !c.repl.Ready() {
		return false
	}
	if c.inbound.Load() {
		return true
	}
	// The first time only: every live peer must also have connected to
	// this node, so that no change it commits after the state transfer
	// passes this node by (a change to an unreachable peer is not queued;
	// the peer is caught up when it connects). A peer that cannot connect
	// delays readiness by ConnectWait at most.
	c.readyMu.Lock()
	defer c.readyMu.Unlock()
	if c.readySince.IsZero() {
		c.readySince = time.Now()
	}
	senders := c.ch.Senders()
	missing := ""
	for _, r := range c.ch.Peers() {
		if !slices.Contains(senders, r) {
			missing = r
			break
		}
	}
	if missing == "" || time.Since(c.readySince) > c.cfg.ConnectWait {
		if missing != "" {
			c.log.Warn("ready although a peer has not connected to this node", "peer", missing, "waited", c.cfg.ConnectWait)
		}
		c.inbound.Store(true)
		return true
	}
	return false
}

// Lookup returns the session this node holds under id (or an alias of
// it), or nil, without recording an access or fetching it from a peer: an
// operator's view, not a request's.
func (c *Cluster) Lookup(id string) *Session {
	if c.repl != nil {
		return c.repl.st.get(id)
	}
	var found *Session
	c.mgr.Range(func(s *Session) bool {
		if s.ID() == id {
			found = s
			return false
		}
		return true
	})
	return found
}

// Stats returns the manager's counters. The Standard manager has the
// session counters only; its replication counters are zero.
func (c *Cluster) Stats() Stats {
	if c.repl == nil {
		if sm, ok := c.mgr.(*Standard); ok {
			return sm.Stats()
		}
		return Stats{Sessions: c.mgr.Count()}
	}
	return c.repl.Stats()
}

// SessionCounts returns how many sessions this node holds, and of those
// how many it is the primary of (it serves them) and how many it holds as
// a backup. With Delta every node holds every session; the primary is the
// node that last changed it. The counts are kept as sessions come, go and
// change hands, so SessionCounts costs the same whatever the number of
// sessions; read while they change, they may be a moment apart.
func (c *Cluster) SessionCounts() (total, primary, backup int) {
	total = c.mgr.Count()
	primary = total
	if p, ok := c.mgr.(interface{ primaries() int }); ok {
		primary = min(p.primaries(), total)
	}
	return total, primary, total - primary
}

// follow keeps the channel's peers equal to the live members until the
// subscription ends.
func (c *Cluster) follow() {
	c.syncPeers()
	for ev := range c.sub.C {
		c.log.Debug("membership event", "type", ev.Type, "peer", ev.Member.Name)
		c.syncPeers()
	}
}

// syncPeers adds the live members to the channel and removes the others,
// then tells the manager if anything changed.
func (c *Cluster) syncPeers() {
	if c.ch == nil {
		return
	}
	self := c.node.Route()
	want := make(map[string]string)
	members := make(map[string]membership.Member)
	for _, m := range c.node.Members() {
		members[m.Name] = m
		if m.Name == self || m.State != membership.StateAlive || m.Meta.Leaving || m.Meta.ReplicationAddr == "" {
			continue
		}
		want[m.Name] = m.Meta.ReplicationAddr
	}
	changed := false
	have := make(map[string]string)
	for _, p := range c.ch.Stats().Peers {
		have[p.Route] = p.Addr
	}
	for r := range have {
		if _, ok := want[r]; !ok {
			c.ch.RemovePeer(r)
			delete(c.started, r)
			changed = true
			if m, ok := members[r]; ok && m.State == membership.StateDead {
				c.lost[r] = m.Meta.Started
			}
		}
	}
	for r, a := range want {
		c.ch.AddPeer(r, a) // when known: only reconnects at once if it was down
		started := members[r].Meta.Started
		prev, known := c.started[r]
		c.started[r] = started
		// A peer that restarted while it stayed a member (faster than the
		// drop time), at another replication address or its own, holds
		// nothing of what this node sent its earlier incarnation.
		restarted := have[r] != "" && (have[r] != a || known && !prev.Equal(started))
		if have[r] != a || restarted {
			changed = true
			since := started.Add(-catchUpMargin) // a new node: what changed since it started
			if restarted && c.cfg.Kind == KindBackup {
				// Delta: it fetches every session itself. Backup: it is
				// placed as before, so no repair sends it the copies it
				// held, nor takes over the sessions it was the primary
				// of; both go now, all of them. (At another address, the
				// resync its broken connection asked for went with the
				// channel's entry for it.)
				c.log.Info("peer restarted: sending the copies it held and the sessions it served", "peer", r)
				since = time.Time{}
			}
			if lost, ok := c.lost[r]; ok {
				delete(c.lost, r)
				switch {
				case lost.Equal(started):
					// The same node, cut off (or seen failed for a
					// moment): everything.
					c.log.Info("partition healed: exchanging sessions", "peer", r)
					since = time.Time{}
				case c.cfg.Kind == KindBackup && !since.IsZero():
					// Failed, then back at once: the repair that would
					// have taken over its sessions and placed its copies
					// elsewhere may not have run in between (it sees the
					// members as they are when it runs). What it held
					// goes back to it, as for a restart.
					c.log.Info("failed peer back: sending the copies it held and the sessions it served", "peer", r)
					since = time.Time{}
				}
			}
			// With Backup, a full catch-up (a restart, a failed member
			// back, a healed partition) also hands the peer back the
			// sessions it serves: it keeps the newer copy of those it
			// holds, and gets back those it lost, even when the moment it
			// was seen failed cut short an earlier catch-up.
			restore := c.cfg.Kind == KindBackup && since.IsZero()
			if c.repl.Ready() {
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					c.repl.catchUp(r, since, restore)
				}()
			}
		}
	}
	if changed && c.repl != nil {
		c.repl.PeersChanged()
	}
}

// syncLoop waits up to JoinWait for a peer, then runs the state transfer,
// retrying until it succeeds or the cluster closes.
func (c *Cluster) syncLoop() {
	deadline := time.Now().Add(c.cfg.JoinWait)
	for len(c.ch.Peers()) == 0 && time.Now().Before(deadline) {
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	if !c.waitWhileRefused() {
		return
	}
	backoff := 250 * time.Millisecond
	for {
		err := c.repl.Sync(c.ctx)
		if err == nil {
			c.log.Info("ready", "sessions", c.mgr.Count(), "peers", len(c.ch.Peers()))
			return
		}
		if c.ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return
		}
		c.log.Warn("state transfer failed; retrying", "err", err, "in", backoff)
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// waitWhileRefused keeps a node with no peer from getting ready while a
// seed answers it but refuses it (another cluster key or domain): its
// cluster runs but is out of reach, and ready alone it would answer its
// users with new, empty sessions in place of theirs. A seed that does not
// answer at all is another matter: the node may be the first, and gets
// ready alone. It returns false if the cluster closed meanwhile.
func (c *Cluster) waitWhileRefused() bool {
	warned := time.Time{}
	for len(c.ch.Peers()) == 0 {
		var refused []string
		st := c.node.Stats()
		for _, s := range st.Seeds {
			if s.Refused {
				refused = append(refused, s.Seed)
			}
		}
		if len(refused) == 0 {
			break
		}
		if time.Since(warned) > time.Minute {
			c.log.Error("not ready: a seed answers but refuses this node, so its cluster is out of reach; "+
				"ready alone, this node would give its users new, empty sessions. Check -key and -domain against the seed's",
				"seeds", refused, "err", st.LastJoinError)
			warned = time.Now()
		}
		select {
		case <-c.ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !warned.IsZero() {
		c.log.Info("no seed refuses this node any more", "peers", len(c.ch.Peers()))
	}
	return true
}

// Drain makes the node report not ready, so that balancers and
// Kubernetes stop sending it requests, while it goes on serving those
// that still come. Close drains too.
func (c *Cluster) Drain() {
	c.downOnce.Do(func() { close(c.down) })
}

// Close shuts the node down gracefully: it stops being ready, stops the
// manager (which sends its pending access times and, with Backup, hands
// its primaries to their first backups), waits until the peers
// have read everything queued for them, leaves the cluster so peers see a
// leave rather than a failure, and closes the channel. ctx bounds the
// whole shutdown; the flush takes at most the channel's send timeout, and
// whatever the steps before it take, the leave keeps its share of ctx's
// time (the drop time, or half of what is left when that is less): a
// leave cut short makes the peers report this node failed a drop time
// later instead of left at once.
func (c *Cluster) Close(ctx context.Context) error {
	var err error
	c.once.Do(func() {
		c.Drain()
		c.cancel()
		before := ctx // what the steps before the leave may take
		if d, ok := ctx.Deadline(); ok {
			share := min(c.cfg.Membership.DropTime, time.Until(d)/2)
			var cancel context.CancelFunc
			before, cancel = context.WithDeadline(ctx, d.Add(-share))
			defer cancel()
		}
		err = c.mgr.Close(before)
		if c.ch != nil {
			fctx := before
			if st := c.cfg.Replication.SendTimeout; st > 0 {
				var cancel context.CancelFunc
				fctx, cancel = context.WithTimeout(before, st)
				defer cancel()
			}
			ferr := c.ch.Flush(fctx)
			if ferr != nil {
				c.log.Warn("replication not flushed before leaving", "err", ferr)
			}
		}
		leave := c.cfg.Membership.DropTime
		if d, ok := ctx.Deadline(); ok {
			leave = min(leave, time.Until(d))
		}
		// A leave no peer confirmed (they may all be stopping too) is not
		// a failed shutdown: Leave logs it as a warning and returns only
		// a failure to stop the node.
		if lerr := c.node.Leave(leave); lerr != nil && !errors.Is(lerr, membership.ErrClosed) {
			err = errors.Join(err, fmt.Errorf("leave: %w", lerr))
		}
		c.closeParts(ctx)
	})
	return err
}

// closeParts closes what StartCluster opened and waits for the cluster's
// goroutines.
func (c *Cluster) closeParts(ctx context.Context) {
	c.cancel()
	if c.sub != nil {
		c.sub.Close()
	}
	if c.node != nil {
		_ = c.node.Close()
	}
	if c.ch != nil {
		_ = c.ch.Close()
	}
	if c.mgr != nil {
		_ = c.mgr.Close(ctx)
	}
	c.wg.Wait()
}
