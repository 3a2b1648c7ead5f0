package manager

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/replication"
)

// ErrNotReady is returned by Find and Invalidate on a node that has not
// finished its state transfer, for a session it does not hold yet: the
// node cannot say whether the session exists. The web layer answers 503
// so the balancer tries another node.
var ErrNotReady = errors.New("manager: node not ready (state transfer in progress)")

// DeltaConfig adds the Delta manager's settings to Config.
type DeltaConfig struct {
	Config
	// Mode is how long Commit waits for the peers. Default Ack.
	Mode SendMode
	// SendTimeout bounds one wait for the peers. Default 5s.
	SendTimeout time.Duration
	// SyncTimeout bounds a state transfer from one peer before another is
	// tried. Default 30s. A transfer from a peer that leaves the peers
	// (membership reports it failed or left) is given up at once.
	SyncTimeout time.Duration
	// ExpireOnShutdown invalidates this node's sessions cluster-wide when
	// it closes (Tomcat's expireSessionsOnShutdown). Default false: the
	// sessions live on in the other nodes.
	ExpireOnShutdown bool
	// ChunkBytes bounds the size of state transfer chunks, and of the
	// chunks that catch a peer up; a chunk also holds no more than
	// MaxSessionSize, so that it fits in a frame, and a session larger
	// than ChunkBytes goes alone. Default 256 KiB.
	ChunkBytes int
	// MaxSessionSize bounds a session's attributes, names and encoded
	// values together, in bytes: Set and SetCopy refuse a value that would
	// take a session over it, with a *NotDistributableError that wraps
	// ErrSessionTooLarge, so that no change and no full copy of a session
	// is ever too large for the replication channel to carry. Default 0:
	// the channel's MaxFrameSize less 64 KiB for the message around it
	// (16 MiB less 64 KiB by default), which StartCluster derives from
	// Replication.MaxFrameSize.
	MaxSessionSize int
}

// sessionBound is the default DeltaConfig.MaxSessionSize for frames of
// frameSize bytes: the frame less 64 KiB for the message around a
// session's attributes (envelope, ids, revision, names' framing), or half
// of a frame too small for that.
func sessionBound(frameSize int) int { return max(frameSize-64<<10, frameSize/2) }

// DefaultDeltaConfig returns DefaultConfig with ack mode, a 5s send
// timeout and a 30s state transfer timeout.
func DefaultDeltaConfig() DeltaConfig {
	return DeltaConfig{Config: DefaultConfig(), Mode: Ack, SendTimeout: 5 * time.Second, SyncTimeout: 30 * time.Second, ChunkBytes: 256 << 10}
}

// Delta replicates every committed change to every peer, as Tomcat's
// DeltaManager does: each node holds every session, so any node can serve
// any user, and a write costs one message per peer.
//
// Concurrent changes of one session on two nodes are resolved by revision
// order ([Rev.Less]: version, then commit time, then route): every replica
// keeps the greater revision, the node that made the lesser one fetches the
// winner's copy, and the discarded change is logged and counted. Replicas
// never silently diverge.
//
// Delta and Backup share their implementation: they differ in who
// receives a change, not in how sessions work.
type Delta struct {
	*replicated
}

// replicated is the implementation of Delta and Backup.
type replicated struct {
	cfg DeltaConfig
	h   *host
	st  *store
	t   countingTransport

	// order orders the commits of each session (Commit), by a hash of
	// its id: a lock per session would cost every session held its
	// memory.
	order     [1024]sync.Mutex
	orderSeed maphash.Seed

	stop chan struct{}
	wg   sync.WaitGroup
	// closed is set under closeMu, which goBackground holds while it
	// checks closed and adds to wg: no goroutine starts once Close waits
	// for them.
	closeMu sync.Mutex
	closed  atomic.Bool
	once    sync.Once

	touchMu sync.Mutex
	touches map[string]int64 // id -> access, Unix ms, not yet sent

	syncMu   sync.Mutex
	ready    bool
	syncing  bool
	syncDone chan syncDone    // receives the end of a transfer
	syncPeer string           // the peer it comes from
	syncLost chan struct{}    // closed when syncPeer leaves the peers
	buffered []bufferedChange // changes of unknown sessions during a transfer
	// bufferedTouches holds the accesses of unknown sessions reported
	// during a transfer: id -> access, Unix ms.
	bufferedTouches map[string]int64

	stats         deltaCounters
	lastLargeWarn atomic.Int64 // Unix ns of the last large-session warning

	backup *backupState // nil for Delta
}

type bufferedChange struct {
	from string
	c    Change
}

type deltaCounters struct {
	replicated, received, conflicts, resyncs, fullsSent atomic.Int64
	sendErrors, malformed, transfers, transferFailures  atomic.Int64
	transferNanos, created, expired, invalidated        atomic.Int64
	maxActive, aliveMax, aliveSum, aliveCount, rejected atomic.Int64
	sweepNanos                                          atomic.Int64
	sent, recv                                          [numKinds]atomic.Int64 // messages by kind
}

// noteLife records how long a destroyed session lived.
func (c *deltaCounters) noteLife(d time.Duration) {
	alive := int64(d)
	c.aliveSum.Add(alive)
	c.aliveCount.Add(1)
	for cur := c.aliveMax.Load(); alive > cur && !c.aliveMax.CompareAndSwap(cur, alive); cur = c.aliveMax.Load() {
	}
}

// noteActive records a new high of sessions held.
func (c *deltaCounters) noteActive(n int) {
	for {
		cur := c.maxActive.Load()
		if int64(n) <= cur || c.maxActive.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// countingTransport counts the messages sent by kind.
type countingTransport struct {
	Transport
	c *deltaCounters
}

func (t countingTransport) Send(ctx context.Context, to []string, msg []byte, mode SendMode) error {
	if len(msg) > 0 {
		t.c.sent[kindIndex(msg[0])].Add(1)
	}
	return t.Transport.Send(ctx, to, msg, mode)
}

// withinSender is a Transport that bounds a send's wait without a
// context of its own, which costs each request a timer, a lock and
// allocations, and that calls queued (when not nil) once msg is queued
// to every peer, before waiting for their answers.
type withinSender interface {
	sendWithin(ctx context.Context, timeout time.Duration, to []string, msg []byte, mode SendMode, queued func()) error
}

// sendWithin sends msg, its wait bounded by timeout. queued, when not nil,
// is called once msg is on its way to every peer: by a withinSender
// before it waits, by any other Transport once Send returns.
func (t countingTransport) sendWithin(ctx context.Context, timeout time.Duration, to []string, msg []byte, mode SendMode, queued func()) error {
	if len(msg) > 0 {
		t.c.sent[kindIndex(msg[0])].Add(1)
	}
	if w, ok := t.Transport.(withinSender); ok {
		return w.sendWithin(ctx, timeout, to, msg, mode, queued)
	}
	if queued != nil {
		defer queued()
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return t.Transport.Send(ctx, to, msg, mode)
}

func (t countingTransport) openStream(peer string) (chunkStream, error) {
	if o, ok := t.Transport.(streamOpener); ok {
		return o.openStream(peer)
	}
	return nil, errors.New("manager: transport has no streams")
}

// Stats is a snapshot of a Delta or Backup manager's counters.
type Stats struct {
	Sessions         int
	UnderReplicated  int64         // Backup: sessions waiting for a copy on a new backup
	BackupCopies     int           // Backup: copies each session gets now, fewer than Backups in a cluster too small
	Replicated       int64         // changes sent
	Received         int64         // messages received from peers
	Conflicts        int64         // concurrent changes discarded by revision order
	Resyncs          int64         // full copies requested after a gap or a lost conflict
	FullsSent        int64         // full copies sent on request
	SendErrors       int64         // sends that failed for at least one peer
	Malformed        int64         // undecodable messages
	Transfers        int64         // completed state transfers into this node
	TransferFailures int64         // state transfers that timed out or failed
	LastTransfer     time.Duration // duration of the last completed transfer
	Created          int64
	Expired          int64
	Invalidated      int64
	MaxActive        int64            // most sessions held at once
	Rejected         int64            // sessions refused by Config.MaxSessions
	AliveMax         time.Duration    // longest life of a destroyed session
	AliveAvg         time.Duration    // average life of destroyed sessions
	SweepTime        time.Duration    // time spent sweeping expired sessions, in all
	Sent             map[string]int64 // messages sent, by kind
	ReceivedByKind   map[string]int64 // messages received, by kind
}

var _ Listenable = (*Delta)(nil)

// NewDelta returns a Delta manager that sends through t. It is not ready
// until Sync has run. The caller delivers peers' messages to Receive and
// calls PeersChanged when the membership changes.
func NewDelta(cfg DeltaConfig, t Transport) (*Delta, error) {
	r, err := newReplicated(cfg, t)
	if err != nil {
		return nil, err
	}
	return &Delta{r}, nil
}

func newReplicated(cfg DeltaConfig, t Transport) (*replicated, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.SendTimeout <= 0 {
		return nil, &ConfigError{"SendTimeout", cfg.SendTimeout.String(), "a positive duration such as 5s"}
	}
	if cfg.SyncTimeout <= 0 {
		return nil, &ConfigError{"SyncTimeout", cfg.SyncTimeout.String(), "a positive duration such as 30s"}
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = 256 << 10
	}
	if cfg.MaxSessionSize < 0 {
		return nil, &ConfigError{"MaxSessionSize", fmt.Sprint(cfg.MaxSessionSize), "a size in bytes of at least 0 (0: the replication channel's frame size less 64 KiB)"}
	}
	if cfg.MaxSessionSize == 0 {
		cfg.MaxSessionSize = sessionBound(replication.DefaultConfig().MaxFrameSize)
	}
	h := cfg.host()
	h.maxSize = cfg.MaxSessionSize
	m := &replicated{cfg: cfg, h: h, st: newStore(h, cfg.IDGracePeriod), stop: make(chan struct{}), touches: make(map[string]int64), orderSeed: maphash.MakeSeed()}
	m.t = countingTransport{Transport: t, c: &m.stats}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		sweepLoop(m.stop, cfg.SweepInterval, m.sweep)
	}()
	return m, nil
}

// Ready reports whether the node has its sessions: after a state transfer,
// or when it found no peer to transfer from.
func (m *replicated) Ready() bool {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	return m.ready
}

// Stats returns a snapshot of the counters.
func (m *replicated) Stats() Stats {
	c := &m.stats
	st := Stats{
		Sessions: m.st.count(), UnderReplicated: m.UnderReplicated(), BackupCopies: m.BackupCopies(), Replicated: c.replicated.Load(), Received: c.received.Load(),
		Conflicts: c.conflicts.Load(), Resyncs: c.resyncs.Load(), FullsSent: c.fullsSent.Load(),
		SendErrors: c.sendErrors.Load(), Malformed: c.malformed.Load(), Transfers: c.transfers.Load(),
		TransferFailures: c.transferFailures.Load(), LastTransfer: time.Duration(c.transferNanos.Load()),
		Created: c.created.Load(), Expired: c.expired.Load(), Invalidated: c.invalidated.Load(),
		MaxActive: c.maxActive.Load(), Rejected: c.rejected.Load(), AliveMax: time.Duration(c.aliveMax.Load()), SweepTime: time.Duration(c.sweepNanos.Load()),
		Sent: make(map[string]int64), ReceivedByKind: make(map[string]int64),
	}
	if n := c.aliveCount.Load(); n > 0 {
		st.AliveAvg = time.Duration(c.aliveSum.Load() / n)
	}
	for k := range numKinds {
		if v := c.sent[k].Load(); v > 0 {
			st.Sent[kind(k).String()] = v
		}
		if v := c.recv[k].Load(); v > 0 {
			st.ReceivedByKind[kind(k).String()] = v
		}
	}
	return st
}

// Sync fetches every session from a peer (state transfer) and makes the
// node ready. Peers are tried in random order, each for at most
// SyncTimeout, or until it is no longer a peer (PeersChanged); a peer
// that is not ready itself (it is joining too) has no
// sessions to give and is passed over. With no peer, or only peers that
// are all joining (a new cluster starting at once), the node is ready at
// once. Changes that arrive during the transfer are applied in order once
// it ends. Sync returns an error, and the node stays not ready, only when
// every peer failed or was not ready and one at least failed.
func (m *replicated) Sync(ctx context.Context) error {
	peers := m.t.Peers()
	if m.backup != nil {
		m.setReady() // Backup: primaries push copies to a new member
		return nil
	}
	if len(peers) == 0 {
		m.setReady()
		m.h.log.Info("no peer to fetch sessions from: ready with none (the first node, or no seed reached)")
		return nil
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	var errs []error
	notReady := 0
	for _, p := range peers {
		err := m.syncFrom(ctx, p)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return fmt.Errorf("manager: state transfer: %w", err)
		}
		if errors.Is(err, errPeerNotReady) {
			notReady++
			m.h.log.Info("peer has no sessions to transfer yet (joining too); trying another", "peer", p)
			continue
		}
		m.stats.transferFailures.Add(1)
		m.h.log.Warn("state transfer failed; trying another peer", "peer", p, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
		if ctx.Err() != nil {
			break
		}
	}
	if notReady == len(peers) {
		m.setReady()
		m.h.log.Info("every peer is joining too: ready with the sessions held (a new cluster starting at once)", "peers", len(peers), "sessions", m.st.count())
		return nil
	}
	return fmt.Errorf("manager: state transfer: %w", errors.Join(errs...))
}

// errPeerNotReady is syncFrom's error for a peer that answered that it has
// not got its own sessions yet.
var errPeerNotReady = errors.New("peer not ready")

// errPeerGone is syncFrom's error for a peer that left the peers (it
// failed or left the cluster) before the transfer ended.
var errPeerGone = errors.New("peer gone before the transfer ended")

func (m *replicated) syncFrom(ctx context.Context, peer string) error {
	done, lost := make(chan syncDone, 1), make(chan struct{})
	m.syncMu.Lock()
	m.syncing, m.syncDone, m.syncPeer, m.syncLost = true, done, peer, lost
	m.syncMu.Unlock()
	defer func() {
		m.syncMu.Lock()
		m.syncing, m.syncDone, m.syncPeer, m.syncLost = false, nil, "", nil
		m.syncMu.Unlock()
	}()
	m.dropLostSync() // gone already: PeersChanged may have come before
	start := time.Now()
	msg, _ := encodeMsg(kindSyncRequest, struct{}{})
	sctx, cancel := context.WithTimeout(ctx, m.cfg.SyncTimeout)
	defer cancel()
	if err := m.t.Send(sctx, []string{peer}, msg, Ack); err != nil {
		return err
	}
	select {
	case sd := <-done:
		if sd.NotReady {
			return errPeerNotReady
		}
		n, d := sd.Count, time.Since(start)
		m.stats.transfers.Add(1)
		m.stats.transferNanos.Store(int64(d))
		m.setReady()
		m.h.log.Info("state transfer done", "peer", peer, "sessions", n, "duration", d)
		return nil
	case <-lost:
		return errPeerGone
	case <-sctx.Done():
		return sctx.Err()
	case <-m.stop:
		return ErrClosed
	}
}

// dropLostSync gives up the state transfer under way when its peer is no
// longer one: a peer that died will not send the rest, and waiting out
// SyncTimeout would keep the node from its sessions that long.
func (m *replicated) dropLostSync() {
	peers := m.t.Peers()
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	if m.syncLost != nil && !slices.Contains(peers, m.syncPeer) {
		close(m.syncLost)
		m.syncLost = nil
	}
}

// setReady marks the node ready and applies the changes and accesses
// buffered during a transfer, the changes in arrival order. The transfer
// is over from here: a change of a session still unknown, buffered or
// arriving now, makes the node ask for a full copy instead of waiting for
// a transfer that has ended. An access of a session the transfer did not
// bring is dropped: the session ended, or its next change brings it.
func (m *replicated) setReady() {
	m.syncMu.Lock()
	m.ready, m.syncing = true, false
	buf, touches := m.buffered, m.bufferedTouches
	m.buffered, m.bufferedTouches = nil, nil
	m.syncMu.Unlock()
	for _, b := range buf {
		m.onChange(b.from, b.c)
	}
	for id, at := range touches {
		if s := m.st.get(id); s != nil {
			s.heardAccess(time.UnixMilli(at))
		}
	}
}

// Create starts a new session; it reaches the peers with its first commit.
func (m *replicated) Create(ctx context.Context) (*Session, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	if m.cfg.MaxSessions > 0 && m.st.count() >= m.cfg.MaxSessions {
		m.stats.rejected.Add(1)
		return nil, ErrTooManySessions
	}
	s := m.st.newSession(m.cfg.Route, m.cfg.MaxInactive)
	s.setOwner(m.cfg.Route)
	m.stats.created.Add(1)
	m.stats.noteActive(m.st.count())
	m.h.fire(func(l Listener) {
		if l.Created != nil {
			l.Created(s)
		}
	})
	return s, nil
}

// Find returns the session of id and records an access.
func (m *replicated) Find(ctx context.Context, id string) (*Session, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	s := m.st.get(id)
	if s == nil {
		if m.st.buried(id) {
			return nil, ErrRecentlyInvalidated
		}
		if !m.Ready() {
			return nil, ErrNotReady
		}
		if m.backup == nil {
			return nil, ErrNotFound
		}
		var err error
		if s, err = m.fetch(ctx, id); err != nil {
			return nil, err
		}
	} else if m.backup != nil && s.ownerRoute() != m.cfg.Route {
		// A backup serves the session: the balancer failed the user over.
		// It claims the session first, so that a repair's claim arriving
		// meanwhile (a surviving backup's, after the primary failed) does
		// not take it away, then brings its copy up to date.
		if t, ok := m.claimHeld(s, 0); ok {
			m.refresh(ctx, s)
			m.takeover(s, t)
		} else {
			// Dropped since the lookup: another node's claim won.
			var err error
			if s, err = m.fetch(ctx, id); err != nil {
				return nil, err
			}
		}
	}
	now := m.h.now()
	if m.expiredHere(s, now) {
		m.expire(s)
		return nil, ErrNotFound
	}
	s.touchAt(now)
	return s, nil
}

// Commit replicates the request's changes to every peer in the configured
// mode. A request that only read the session queues its access time for
// the next batch instead.
//
// Two requests of one session that commit at once reach the peers in the
// order of their revisions: each holds its session's order lock from
// taking its revision until its change is queued to every peer, though
// not while it waits for their answers. Out of order, a peer would see a
// gap in the revisions and ask for a full copy.
func (m *replicated) Commit(ctx context.Context, s *Session) error {
	order := &m.order[maphash.String(m.orderSeed, s.ID())%uint64(len(m.order))]
	order.Lock()
	c, changed := s.commit()
	if !changed {
		order.Unlock()
		m.queueTouch(s)
		return nil
	}
	if m.backup == nil {
		s.setOwner(m.cfg.Route) // Delta: the primary is the node that last changed it
	}
	msg := encodeChange(&c)
	m.warnLarge(s, len(msg))
	m.stats.replicated.Add(1)
	return m.send(ctx, m.targets(s), msg, m.cfg.Mode, order.Unlock)
}

// warnLarge logs, at most once a minute, a change larger than
// Config.LargeSession.
func (m *replicated) warnLarge(s *Session, size int) {
	limit := m.cfg.LargeSession
	if limit == 0 {
		limit = 256 << 10
	}
	if limit < 0 || size <= limit {
		return
	}
	now := time.Now().UnixNano()
	last := m.lastLargeWarn.Load()
	if now-last < int64(time.Minute) || !m.lastLargeWarn.CompareAndSwap(last, now) {
		return
	}
	m.h.log.Warn("large session change: large sessions slow replication and state transfers",
		"session", RedactID(s.ID()), "bytes", size, "limit", limit)
}

// send sends with the send timeout and counts failures.
// queued, when not nil, is called once, when msg is queued to every
// peer: before the wait in Ack and Sync modes.
func (m *replicated) send(ctx context.Context, to []string, msg []byte, mode SendMode, queued func()) error {
	var err error
	if mode == Async {
		err = m.t.Send(ctx, to, msg, mode)
		if queued != nil {
			queued()
		}
	} else {
		err = m.t.sendWithin(ctx, m.cfg.SendTimeout, to, msg, mode, queued)
	}
	if err != nil {
		m.stats.sendErrors.Add(1)
		return err
	}
	return nil
}

// sendAsync sends from a receiver or background goroutine, which must not
// wait on peers (two receivers waiting on each other would deadlock).
func (m *replicated) sendAsync(to []string, k kind, body any) {
	msg, err := encodeMsg(k, body)
	if err == nil {
		err = m.send(context.Background(), to, msg, Async, nil)
	}
	if err != nil {
		m.h.log.Warn("replication send failed", "kind", k.String(), "err", err)
	}
}

func (m *replicated) queueTouch(s *Session) {
	id, at := s.ID(), s.LastAccess().UnixMilli()
	m.touchMu.Lock()
	m.touches[id] = at
	m.touchMu.Unlock()
}

// flushTouches sends the batched access times.
func (m *replicated) flushTouches() {
	m.touchMu.Lock()
	if len(m.touches) == 0 {
		m.touchMu.Unlock()
		return
	}
	all := make([]touch, 0, len(m.touches))
	for id, at := range m.touches {
		all = append(all, touch{ID: id, Access: at})
	}
	clear(m.touches)
	m.touchMu.Unlock()
	if m.backup == nil {
		m.sendTouches(nil, all)
		return
	}
	perPeer := make(map[string][]touch)
	for _, t := range all {
		if s := m.st.get(t.ID); s != nil {
			for _, p := range m.recipients(s) {
				perPeer[p] = append(perPeer[p], t)
			}
		}
	}
	for p, batch := range perPeer {
		m.sendTouches([]string{p}, batch)
	}
}

// sendTouches sends access times to peers to, in messages of up to
// ChunkBytes and never more than MaxSessionSize, as streamTo bounds its
// chunks: the accesses of many sessions read between two sweeps would
// otherwise make a message larger than a frame, which the channel
// refuses, so that the peers never hear of them and need a resync.
func (m *replicated) sendTouches(to []string, all []touch) {
	limit := m.cfg.ChunkBytes
	if m.cfg.MaxSessionSize > 0 {
		limit = min(limit, m.cfg.MaxSessionSize)
	}
	start, size := 0, 0
	for i, t := range all {
		tsize := len(t.ID) + 32 // the id, the time and their framing
		if i > start && size+tsize > limit {
			m.sendAsync(to, kindTouch, all[start:i])
			start, size = i, 0
		}
		size += tsize
	}
	m.sendAsync(to, kindTouch, all[start:])
}

// recipients returns who must hear of an expiry, invalidation, rename or
// access of s: every peer (nil) for Delta, every possible holder for Backup.
func (m *replicated) recipients(s *Session) []string {
	if m.backup == nil {
		return nil
	}
	return m.holders(s.ID(), s.ownerRoute())
}

// sweep sends the batched touches, then expires idle sessions. Touches go
// first so peers hear of the last accesses before they judge expiry.
func (m *replicated) sweep() {
	start := time.Now()
	defer func() { m.stats.sweepNanos.Add(int64(time.Since(start))) }()
	m.flushTouches()
	now := m.h.now()
	for _, s := range m.st.all() {
		if m.expiredHere(s, now) {
			m.expire(s)
		}
	}
	m.st.forget(now)
}

// expiredHere reports whether s is idle past its deadline as this node
// can tell at now.
//
// A node hears of the accesses made on another in that node's batches,
// one each SweepInterval, so a copy last used elsewhere may look older
// here than it is: a Backup copy of another node's session, or a Delta
// copy whose last access known here is a peer's report. Such a copy
// expires here only once idle for two more intervals, by when any batch
// sent before the deadline has come in. The node that served the last
// access expires the session on time and tells the others; the grace
// only ends a copy whose word never came (that node died), and keeps a
// request that fails over from it just after an access from finding its
// session gone.
func (m *replicated) expiredHere(s *Session, now time.Time) bool {
	if m.backup != nil && s.ownerRoute() != m.cfg.Route || m.backup == nil && s.accessHeard() {
		now = now.Add(-2 * m.cfg.SweepInterval)
	}
	return s.expiredAt(now)
}

// expire removes an idle session here and tells the peers, who remove
// their copy unless they know of a later access.
func (m *replicated) expire(s *Session) {
	id, at := s.ID(), s.LastAccess().UnixMilli()
	to := m.recipients(s)
	if r := m.st.remove(id); r != nil {
		m.stats.expired.Add(1)
		m.destroyed(r, Expired, true)
		m.sendAsync(to, kindExpire, idMsg{ID: id, Access: at})
	}
}

func (m *replicated) destroyed(s *Session, why Reason, local bool) {
	m.stats.noteLife(m.h.now().Sub(s.Created()))
	if !local && !m.h.notifyReplicated {
		return
	}
	m.h.fire(func(l Listener) {
		if l.Destroyed != nil {
			l.Destroyed(s, why)
		}
	})
}

// Invalidate destroys the session here and on every peer. On a node that
// has not finished its state transfer, a session it does not hold yet
// gets ErrNotReady, as with Find.
func (m *replicated) Invalidate(ctx context.Context, id string) error {
	s := m.st.get(id)
	if s == nil && m.backup != nil {
		var err error
		if s, err = m.fetch(ctx, id); err != nil {
			return err // ErrNotFound, or its holders did not answer: not destroyed
		}
	}
	if s == nil {
		if !m.st.buried(id) && !m.Ready() {
			// Not received yet, perhaps: not destroyed, and the caller
			// must not take it for gone.
			return ErrNotReady
		}
		return ErrNotFound
	}
	id = s.ID()
	to := m.recipients(s)
	msg, err := encodeMsg(kindInvalidate, idMsg{ID: id})
	if err != nil {
		return err
	}
	if r := m.st.bury(id); r != nil {
		m.stats.invalidated.Add(1)
		m.destroyed(r, Invalidated, true)
	}
	if err := m.send(ctx, to, msg, m.cfg.Mode, nil); err != nil {
		return fmt.Errorf("%w: %w", ErrNotConfirmed, err)
	}
	return nil
}

// ChangeID renames the session here and on every peer; the old id keeps
// resolving for IDGracePeriod everywhere.
func (m *replicated) ChangeID(ctx context.Context, s *Session, base string) (string, error) {
	if base == "" {
		base = newID()
	}
	newID := JoinID(base, m.cfg.Route)
	oldID, ok := m.st.rename(s, newID)
	if !ok {
		return "", ErrNotFound
	}
	if oldID == newID {
		return newID, nil
	}
	m.h.fire(func(l Listener) {
		if l.IDChanged != nil {
			l.IDChanged(s, oldID)
		}
	})
	msg, err := encodeMsg(kindRename, rename{Old: oldID, New: newID})
	if err != nil {
		return "", err
	}
	to := m.recipients(s)
	// Backup: a new base has a placement of its own. The holders of the
	// old base hear of the rename too, and those the new placement leaves
	// out then drop their copy, which the old id (one planted before a
	// login) would otherwise still find there; the new backups get a copy
	// now, not with the next change, so the session survives its primary.
	moved := m.backup != nil && baseOf(oldID) != base
	var old []string
	if moved {
		old = m.holders(oldID, s.ownerRoute())
		for _, r := range old {
			if !slices.Contains(to, r) {
				to = append(to, r)
			}
		}
	}
	err = m.send(ctx, to, msg, m.cfg.Mode, nil)
	if moved {
		targets := m.targets(s)
		full, ferr := encodeMsg(kindFull, s.full())
		if ferr == nil {
			ferr = m.send(ctx, targets, full, m.cfg.Mode, nil)
		}
		err = errors.Join(err, ferr)
		if drop := slices.DeleteFunc(old, func(r string) bool { return slices.Contains(targets, r) }); len(drop) > 0 {
			m.sendAsync(drop, kindDrop, idMsg{ID: newID})
		}
	}
	return newID, err
}

// FindByPrincipal returns the sessions logged in as principal, cluster
// wide. With Delta every node holds every session, so the local answer is
// the cluster's. With Backup each node holds a share: the peers are asked
// (bounded by FetchTimeout) and the sessions this node does not hold come
// back as detached copies, good for reading and for Invalidate, which
// reaches their holders.
func (m *replicated) FindByPrincipal(ctx context.Context, principal string) ([]*Session, error) {
	local := m.st.byPrincipal(principal)
	if m.backup == nil {
		return local, nil
	}
	remote, err := m.askPrincipal(ctx, principal)
	out := local
	seen := make(map[string]bool, len(local))
	for _, s := range local {
		seen[baseOf(s.ID())] = true
	}
	for _, f := range remote {
		if b := baseOf(f.ID); !seen[b] {
			seen[b] = true
			out = append(out, m.h.fromFull(f))
		}
	}
	return out, err
}

// Range calls f for each session until f returns false.
func (m *replicated) Range(f func(*Session) bool) {
	for _, s := range m.st.all() {
		if !f(s) {
			return
		}
	}
}

// Count returns the number of sessions held.
func (m *replicated) Count() int { return m.st.count() }

// primaries returns how many of the sessions held this node is the
// primary of.
func (m *replicated) primaries() int { return int(m.h.primaries.Load()) }

// AddListener registers session callbacks.
func (m *replicated) AddListener(l Listener) { m.h.addListener(l) }

// Listen registers session callbacks, as AddListener does, and returns
// the function that removes them (see [Listenable]).
func (m *replicated) Listen(l Listener) (remove func()) { return m.h.addListener(l) }

// Close sends the pending access times, invalidates every session
// cluster-wide if ExpireOnShutdown is set (Backup: hands its primaries
// over to their backups), and stops; ctx bounds the invalidations and the
// hand-over. Replication already handed to the transport is the
// transport's to flush. Close is idempotent.
func (m *replicated) Close(ctx context.Context) error {
	var err error
	m.once.Do(func() {
		m.flushTouches()
		if m.cfg.ExpireOnShutdown {
			for _, s := range m.st.all() {
				err = errors.Join(err, m.Invalidate(ctx, s.ID()))
			}
		} else if m.backup != nil {
			m.handOff(ctx)
		}
		m.closeMu.Lock()
		m.closed.Store(true)
		m.closeMu.Unlock()
		close(m.stop)
		m.wg.Wait()
	})
	return err
}

// goBackground runs f in a goroutine that Close waits for, unless the
// manager is closing: the transport delivers messages until it is closed
// itself, after the manager, and work a message asks for then is not
// done.
func (m *replicated) goBackground(f func()) {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed.Load() {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
}

// Receive handles one message from peer from. The transport calls it for
// each sender in send order. A malformed message is counted and returned
// as an error wrapping ErrMalformed; the transport may drop the peer's
// connection.
func (m *replicated) Receive(from string, msg []byte) error {
	if len(msg) == 0 {
		m.stats.malformed.Add(1)
		return fmt.Errorf("%w: empty", ErrMalformed)
	}
	m.stats.received.Add(1)
	k, body := kind(msg[0]), msg[1:]
	m.stats.recv[kindIndex(msg[0])].Add(1)
	var err error
	switch k {
	case kindChange:
		var c Change
		if err = c.decode(body); err != nil {
			err = malformed(err)
		} else if c.ID != "" {
			m.onChange(from, c)
		}
	case kindTouch:
		var ts []touch
		if err = decodeBody(body, &ts); err == nil {
			for _, t := range ts {
				if s := m.st.get(t.ID); s != nil {
					s.heardAccess(time.UnixMilli(t.Access))
				} else if m.backup == nil {
					m.onUnknownTouch(from, t)
				}
			}
		}
	case kindExpire:
		var e idMsg
		if err = decodeBody(body, &e); err == nil {
			m.onExpire(from, e)
		}
	case kindInvalidate:
		var e idMsg
		if err = decodeBody(body, &e); err == nil {
			if r := m.st.bury(e.ID); r != nil {
				m.stats.invalidated.Add(1)
				m.destroyed(r, Invalidated, false)
			}
		}
	case kindRename:
		var r rename
		if err = decodeBody(body, &r); err == nil {
			m.onRename(r)
		}
	case kindFullRequest:
		var e idMsg
		if err = decodeBody(body, &e); err == nil {
			if s := m.st.get(e.ID); s != nil {
				m.stats.fullsSent.Add(1)
				m.sendAsync([]string{from}, kindFull, s.full())
			}
		}
	case kindFull:
		var f Full
		if _, err = f.decode(body); err != nil {
			err = malformed(err)
		} else if f.ID != "" {
			m.onFull(from, f)
		}
	case kindSyncRequest:
		m.goBackground(func() { m.serveSync(from) })
	case kindHandoff:
		var fs []Full
		if fs, err = decodeFulls(body); err != nil {
			err = malformed(err)
		} else if m.backup != nil {
			for _, f := range fs {
				if f.ID != "" {
					m.onHandoff(from, f)
				}
			}
		}
	case kindSyncChunk:
		var fs []Full
		if fs, err = decodeFulls(body); err != nil {
			err = malformed(err)
		} else {
			for _, f := range fs {
				if f.ID != "" {
					m.onFull(from, f)
				}
			}
		}
	case kindSyncDone:
		var d syncDone
		if err = decodeBody(body, &d); err == nil {
			m.syncMu.Lock()
			if m.syncDone != nil && from == m.syncPeer {
				select {
				case m.syncDone <- d:
				default:
				}
			}
			m.syncMu.Unlock()
		}
	case kindFetch:
		var e idMsg
		if err = decodeBody(body, &e); err == nil {
			r := fetchReply{ID: e.ID}
			if s := m.st.get(e.ID); s != nil {
				r.Found, r.Full = true, s.full()
			}
			m.sendAsync([]string{from}, kindFetchReply, r)
		}
	case kindFetchReply:
		var r fetchReply
		if err = decodeBody(body, &r); err == nil {
			m.onFetchReply(from, r)
		}
	case kindTakeover:
		var e idMsg
		if err = decodeBody(body, &e); err == nil && m.backup != nil {
			m.onTakeover(from, e)
		}
	case kindPrincipalQuery:
		var q principalQuery
		if err = decodeBody(body, &q); err == nil {
			r := principalReply{Q: q.Q}
			for _, s := range m.st.byPrincipal(q.Principal) {
				r.Fulls = append(r.Fulls, s.full())
			}
			m.sendAsync([]string{from}, kindPrincipalReply, r)
		}
	case kindPrincipalReply:
		var r principalReply
		if err = decodeBody(body, &r); err == nil && m.backup != nil {
			m.backup.onPrincipalReply(from, r)
		}
	case kindDrop:
		var e idMsg
		if err = decodeBody(body, &e); err == nil {
			if s := m.st.get(e.ID); s != nil && s.ownerRoute() != m.cfg.Route {
				m.st.remove(s.ID())
			}
		}
	default:
		err = fmt.Errorf("%w: unknown kind %d", ErrMalformed, k)
	}
	if err != nil {
		m.stats.malformed.Add(1)
		m.h.log.Warn("bad message from peer", "peer", from, "err", err)
	}
	return err
}

// onChange applies a peer's change, or resolves the conflict or gap it
// reveals.
func (m *replicated) onChange(from string, c Change) {
	s := m.st.get(c.ID)
	if s == nil {
		if m.st.buried(c.ID) {
			return // a change made before the session's invalidation reached its maker
		}
		if c.Base == (Rev{}) && c.Created != 0 {
			n := m.h.fromFull(Full{ID: c.ID, Created: c.Created, Access: c.Access})
			// Owned from the start: a Backup repair that looks at it
			// before the change is applied must not take an ownerless
			// copy for a failed primary's.
			n.owner = from
			if s = m.st.add(n); s == n && m.h.notifyReplicated {
				m.h.fire(func(l Listener) {
					if l.Created != nil {
						l.Created(s)
					}
				})
			}
		} else {
			m.syncMu.Lock()
			if m.syncing {
				m.buffered = append(m.buffered, bufferedChange{from, c})
				m.syncMu.Unlock()
				return
			}
			m.syncMu.Unlock()
			m.requestFull(from, c.ID)
			return
		}
	}
	err := s.apply(c, m.h.notifyReplicated)
	if err == nil {
		if m.backup == nil {
			// Delta: the primary is the node that last changed it. A Backup
			// primary changes with claims alone: a change that a primary
			// which just lost a claim made meanwhile must not win it back.
			s.setOwner(from)
		}
		if c.Invalidate {
			if r := m.st.bury(c.ID); r != nil {
				m.destroyed(r, Invalidated, false)
			}
		}
		return
	}
	cur := s.Rev()
	switch {
	case cur == c.Rev:
		// A duplicate: already applied.
	case cur.Less(c.Rev):
		// Behind, because a change was lost, or holding a concurrent
		// revision that loses: the sender's copy replaces ours.
		if cur.N >= c.Base.N && cur != c.Base {
			m.conflict(c.ID, cur, c.Rev)
		}
		m.requestFull(from, c.ID)
	case c.Rev.N == cur.N:
		// A concurrent change that loses to ours: dropped. Its maker
		// fetches our copy when our change reaches it.
		m.conflict(c.ID, c.Rev, cur)
	}
}

// conflict logs and counts a change discarded by revision order.
func (m *replicated) conflict(id string, lost, won Rev) {
	m.stats.conflicts.Add(1)
	m.h.log.Warn("concurrent change discarded by revision order", "session", RedactID(id),
		"lost_version", lost.N, "lost_node", lost.Node, "won_version", won.N, "won_node", won.Node)
}

func (m *replicated) requestFull(from, id string) {
	m.stats.resyncs.Add(1)
	m.sendAsync([]string{from}, kindFullRequest, idMsg{ID: id})
}

// onFull installs a full copy from peer from unless this node already
// holds a greater or equal revision. The sender is the session's primary.
//
// The copy may carry another route than the local one: the two nodes
// rebound the session while they could not talk (a partition). It is the
// same session, so the greater revision wins, id included; with equal
// revisions the greater id wins, so every node ends with the same id.
func (m *replicated) onFull(from string, f Full) {
	s := m.st.get(f.ID) // by base: possibly rebound elsewhere meanwhile
	if s == nil {
		if m.st.buried(f.ID) {
			return // a copy sent before the session's invalidation reached its sender
		}
		n := m.h.fromFull(f)
		if n.owner == "" || m.backup == nil {
			n.owner = from
		}
		if s = m.st.add(n); s == n {
			m.stats.noteActive(m.st.count())
			if m.backup != nil && n.ownerRoute() == m.cfg.Route {
				m.placeReturned(s, from, true)
			}
			return
		}
		// Another copy was stored meanwhile: the newer one wins, below.
	}
	old := s.Rev()
	if m.backup != nil {
		owner := f.Owner
		if owner == "" {
			owner = from
		}
		if s.yieldTo(owner, f.Term) && owner == m.cfg.Route {
			m.placeReturned(s, from, false)
		}
	}
	if s.replace(f) {
		if m.backup == nil {
			s.setOwner(from)
		}
		if old.Node == m.cfg.Route && f.Rev.Node != m.cfg.Route {
			// A change made here is superseded by a concurrent one.
			m.conflict(f.ID, old, f.Rev)
		}
	} else if old != f.Rev || s.ID() >= f.ID {
		return
	}
	if id := s.ID(); id != f.ID {
		if _, ok := m.st.rename(s, f.ID); ok && m.h.notifyReplicated {
			m.h.fire(func(l Listener) {
				if l.IDChanged != nil {
					l.IDChanged(s, id)
				}
			})
		}
	}
}

// onUnknownTouch handles an access, reported by a Delta peer, of a session
// this node does not hold: it removed its copy on another peer's word that
// the session had expired, before hearing of this later access. It asks
// the peer for a full copy, unless the session was invalidated. A node
// still receiving its state transfer keeps the access instead, for the
// copy the transfer brings, whose access time may be older.
func (m *replicated) onUnknownTouch(from string, t touch) {
	m.syncMu.Lock()
	if m.syncing {
		if m.bufferedTouches == nil {
			m.bufferedTouches = make(map[string]int64)
		}
		if at, ok := m.bufferedTouches[t.ID]; !ok || t.Access > at {
			m.bufferedTouches[t.ID] = t.Access
		}
		m.syncMu.Unlock()
		return
	}
	m.syncMu.Unlock()
	if !m.st.buried(t.ID) {
		m.requestFull(from, t.ID)
	}
}

// onExpire removes a session that peer from expired, unless this node saw
// a later access: then it keeps the session and sends a full copy back to
// the nodes that should hold it, since from, and any node that removed its
// copy on from's word, no longer has one. (A node that kept its copy
// ignores the full copy, and takes the access from the next batch.)
func (m *replicated) onExpire(from string, e idMsg) {
	s := m.st.get(e.ID)
	if s == nil {
		return
	}
	if s.LastAccess().UnixMilli() > e.Access {
		m.queueTouch(s)
		to := m.targets(s) // Delta: every peer; Backup: this primary's backups
		if m.backup != nil && s.ownerRoute() != m.cfg.Route {
			to = []string{from} // a backup: from is the primary, or another backup
		}
		m.sendAsync(to, kindFull, s.full())
		return
	}
	if r := m.st.remove(s.ID()); r != nil {
		m.stats.expired.Add(1)
		m.destroyed(r, Expired, false)
	}
}

// onRename gives a session its new id. When the session under its new
// id is here already (a catch-up brought it before the renewal it had
// missed), the copy under the old id is what is left of the session
// before its renewal: removed.
func (m *replicated) onRename(r rename) {
	s := m.st.get(r.Old)
	if s == nil {
		return
	}
	if cur := m.st.get(r.New); cur != nil && cur != s {
		if baseOf(r.Old) != baseOf(r.New) {
			m.st.remove(r.Old)
		}
		return
	}
	if oldID, ok := m.st.rename(s, r.New); ok && oldID != r.New && m.h.notifyReplicated {
		m.h.fire(func(l Listener) {
			if l.IDChanged != nil {
				l.IDChanged(s, oldID)
			}
		})
	}
}

// serveSync streams every session to peer, then says how many. A node
// that is not ready answers that it is not instead: what it holds is not
// every session yet.
func (m *replicated) serveSync(peer string) {
	if !m.Ready() {
		if err := m.sendSyncDone(peer, syncDone{NotReady: true}); err != nil {
			m.h.log.Warn("state transfer refusal not sent", "peer", peer, "err", err)
		}
		return
	}
	start := time.Now()
	n, ok := m.streamTo(context.Background(), peer, kindSyncChunk, nil, true)
	if !ok {
		return
	}
	if err := m.sendSyncDone(peer, syncDone{Count: n}); err != nil {
		m.h.log.Warn("state transfer end not sent", "peer", peer, "err", err)
		return
	}
	m.h.log.Info("state transfer sent", "peer", peer, "sessions", n, "duration", time.Since(start))
}

// resync sends peer a full copy of every session it should hold, after the
// replication channel reported that it may have missed changes (its queue
// overflowed, or it was unreachable for a while). The peer keeps, for each
// session, the greater revision, so a copy it no longer needs is harmless.
func (m *replicated) resync(peer string) {
	m.catchUp(peer, time.Time{}, false)
}

// catchUp sends peer a full copy of every session it should hold that was
// changed at or after since (all of them when since is zero).
//
// A joining node fetches every session from one peer, but the others add
// it as a peer only when membership tells them, a moment later: a change
// committed on another node in between would not reach it, and it would
// serve a stale copy after a failover. So each node, when it adds a new
// member as a peer, sends it the sessions changed since that member
// started (less a margin for clock skew).
//
// Either way peer also hears again of the sessions invalidated lately: a
// copy of them cannot go, and an invalidation it missed would leave it
// holding a logged-out session (a new member may hold one from its state
// transfer, sent before the invalidation reached its sender).
//
// With restore, peer is a Backup node that restarted (faster than
// membership could declare it failed, or so soon after that this node's
// repair did not run in between) or was cut off: no repair took over the
// sessions it is the primary of, and it may have lost them, their backups
// holding the only copies. A backup sends them back with the rest, the
// primary and its claim as it knows them, and peer is their primary
// again, as before (placeReturned). (A request the user made meanwhile on
// another node claimed the session with a greater term, and that claim
// stands.)
func (m *replicated) catchUp(peer string, since time.Time, restore bool) {
	m.sendGraves(peer)
	start := time.Now()
	sinceMs := since.UnixMilli()
	filter := func(s *Session) bool {
		if m.backup != nil && restore && s.ownerRoute() == peer {
			return true // its own, however long ago they changed
		}
		if !since.IsZero() && s.Rev().At < sinceMs {
			return false
		}
		return m.backup == nil || s.ownerRoute() == m.cfg.Route && slices.Contains(m.targets(s), peer)
	}
	if n, ok := m.streamTo(context.Background(), peer, kindSyncChunk, filter, false); ok && n > 0 {
		if since.IsZero() {
			m.h.log.Info("peer caught up", "peer", peer, "sessions", n, "duration", time.Since(start))
		} else {
			m.h.log.Info("peer caught up", "peer", peer, "sessions", n, "changed_since", since, "duration", time.Since(start))
		}
	}
}

// gravesPerAck is how many invalidations and renewals sendGraves queues
// before it waits for the peer to take them.
const gravesPerAck = 32

// sendGraves sends peer the invalidations and the renewals (RenewID) of
// the last minute, in ack mode every gravesPerAck of them so that a busy
// minute of logouts and logins does not overflow the peer's queue, which
// would ask for a resync, and so another round of them. A peer that missed
// a renewal would otherwise keep the pre-login copy under the old id, the
// session's copy under the new one coming with the catch-up beside it.
func (m *replicated) sendGraves(peer string) {
	var msgs [][]byte
	for _, id := range m.st.graveIDs() {
		if msg, err := encodeMsg(kindInvalidate, idMsg{ID: id}); err == nil {
			msgs = append(msgs, msg)
		}
	}
	for _, r := range m.st.renames() {
		if msg, err := encodeMsg(kindRename, r); err == nil {
			msgs = append(msgs, msg)
		}
	}
	for i, msg := range msgs {
		mode := Async
		if (i+1)%gravesPerAck == 0 || i == len(msgs)-1 {
			mode = Ack
		}
		if err := m.send(context.Background(), []string{peer}, msg, mode, nil); err != nil {
			m.h.log.Warn("invalidations and renewals not sent again to a peer catching up", "peer", peer, "sent", i, "of", len(msgs), "err", err)
			return
		}
	}
}

// sendSyncDone ends, or refuses, a state transfer to peer. It goes like
// the chunks, patiently: with no session to send it is the first message,
// and the joining node may not be in this node's view yet.
func (m *replicated) sendSyncDone(peer string, d syncDone) error {
	msg, err := encodeMsg(kindSyncDone, d)
	if err != nil {
		return err
	}
	return m.sendPatiently(context.Background(), peer, msg, true)
}

// sendPatiently sends msg to peer in ack mode, retrying for up to
// SyncTimeout while the peer is unreachable and, with awaitView, while it
// is unknown: a node that asks for a state transfer as soon as it starts
// may not be in this node's view of the membership yet. Without awaitView
// the peer was in view when msg was addressed to it, and unknown now
// means that membership has dropped it: it is not waited for.
func (m *replicated) sendPatiently(ctx context.Context, peer string, msg []byte, awaitView bool) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SyncTimeout)
	defer cancel()
	backoff := 20 * time.Millisecond
	for {
		err := m.t.Send(ctx, []string{peer}, msg, Ack)
		retry := errors.Is(err, replication.ErrPeerDown) || errors.Is(err, replication.ErrConnLost) ||
			awaitView && errors.Is(err, replication.ErrUnknownPeer)
		if err == nil || !retry {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-m.stop:
			return ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// streamTo sends peer full copies of the sessions filter accepts (all of
// them when filter is nil), in chunks of about ChunkBytes, each sent in
// ack mode so that a slow receiver slows the stream instead of
// overflowing its queue. It reports how many it sent and whether all
// went.
//
// With awaitView the first chunk waits, up to SyncTimeout, for a peer
// that is not in this node's view yet: one that asked for a state
// transfer as it started. Without it the peer was in view when the stream
// was meant for it (a resynchronisation, a catch-up, a hand-off), and a
// peer that membership has dropped since is not waited for: it crashed or
// left, and what it would have held goes to others by placement.
func (m *replicated) streamTo(ctx context.Context, peer string, k kind, filter func(*Session) bool, awaitView bool) (int, bool) {
	var batch []Full
	n := 0
	var stream chunkStream
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SyncTimeout)
	defer cancel()
	defer func() {
		if stream != nil {
			_ = stream.Close(ctx)
		}
	}()
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		msg, err := encodeMsg(k, batch)
		switch {
		case err != nil:
		case stream != nil:
			err = stream.Write(ctx, msg)
		default:
			// The first chunk waits until the peer is reachable (and,
			// with awaitView, in view); the rest go through a stream,
			// when the transport has them, with a window of chunks in
			// flight.
			if err = m.sendPatiently(ctx, peer, msg, awaitView); err == nil {
				if s, err := m.t.openStream(peer); err == nil {
					stream = s
				}
			}
		}
		if err != nil {
			if !awaitView && errors.Is(err, replication.ErrUnknownPeer) {
				m.h.log.Info("peer left before its sessions were sent; not sending them", "peer", peer, "sent", n)
			} else {
				m.h.log.Warn("sending sessions to peer failed", "peer", peer, "err", err)
			}
			return false
		}
		n += len(batch)
		batch = batch[:0]
		return true
	}
	// A chunk holds sessions up to ChunkBytes, and never more than one
	// session may take (MaxSessionSize, a frame less room for the message
	// around it): a chunk over the frame size is not sent at all. A
	// session goes into the next chunk when it would take this one over.
	limit := m.cfg.ChunkBytes
	if m.cfg.MaxSessionSize > 0 {
		limit = min(limit, m.cfg.MaxSessionSize)
	}
	size := 0
	for _, s := range m.st.all() {
		select {
		case <-m.stop:
			return n, false
		default:
		}
		if filter != nil && !filter(s) {
			continue
		}
		f := s.full()
		fsize := len(f.ID) + 64
		for name, v := range f.Attrs {
			fsize += len(name) + len(v)
		}
		if len(batch) > 0 && size+fsize > limit {
			if !flush() {
				return n, false
			}
			size = 0
		}
		batch = append(batch, f)
		size += fsize
	}
	if !flush() {
		return n, false
	}
	if stream != nil {
		err := stream.Close(ctx)
		stream = nil
		if err != nil {
			m.h.log.Warn("sending sessions to peer failed", "peer", peer, "err", err)
			return n, false
		}
	}
	return n, true
}

// Route returns this node's route, the suffix of the ids it issues.
func (m *replicated) Route() string { return m.cfg.Route }

// CheckAttributes returns the error [Session.SetCopies] would return for
// a new session holding values, or nil, without creating a session: a
// caller checks the values first, so that a session it would have to
// throw away never counts toward Config.MaxSessions.
func (m *replicated) CheckAttributes(values map[string]any) error { return m.h.checkNew(values) }
