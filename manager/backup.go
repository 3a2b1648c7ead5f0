package manager

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/replication"
)

// Backup keeps each session on its primary, the node that serves it, plus
// Backups backup nodes chosen by rendezvous hashing of the session id over
// the live members, the primary excluded. Any node computes where a
// session's copies are, with no directory; a write costs the same whatever
// the cluster size, and each node holds about (1+Backups)/N of the
// sessions.
//
// A request for a session this node does not hold (the balancer failed
// over) fetches it from its holders and makes this node its primary;
// concurrent fetches of one session coalesce. When members fail or join,
// primaries push copies to the backups the new placement names, at a
// bounded rate, and a surviving backup takes over the sessions of a failed
// primary.
type Backup struct {
	*replicated
}

var _ Listenable = (*Backup)(nil)

// BackupConfig adds the Backup manager's settings to DeltaConfig.
type BackupConfig struct {
	DeltaConfig
	// Backups is the number of backup copies of each session. Default 1.
	Backups int
	// FetchTimeout bounds a fetch of a session from its holders. Default 2s.
	FetchTimeout time.Duration
	// RepairRate bounds how many sessions per second are copied to new
	// backups after a membership change. Default 20000.
	RepairRate int
}

// DefaultBackupConfig returns DefaultDeltaConfig with one backup, a 2s
// fetch timeout and a repair rate of 20000 sessions/s.
func DefaultBackupConfig() BackupConfig {
	return BackupConfig{DeltaConfig: DefaultDeltaConfig(), Backups: 1, FetchTimeout: 2 * time.Second, RepairRate: 20000}
}

// NewBackup returns a Backup manager that sends through t. The caller
// delivers peers' messages to Receive and calls PeersChanged when the
// membership changes.
func NewBackup(cfg BackupConfig, t Transport) (*Backup, error) {
	if cfg.Backups < 1 {
		return nil, &ConfigError{"Backups", strconv.Itoa(cfg.Backups), "at least 1"}
	}
	if cfg.FetchTimeout <= 0 {
		return nil, &ConfigError{"FetchTimeout", cfg.FetchTimeout.String(), "a positive duration such as 2s"}
	}
	if cfg.RepairRate <= 0 {
		return nil, &ConfigError{"RepairRate", strconv.Itoa(cfg.RepairRate), "a positive number of sessions per second"}
	}
	r, err := newReplicated(cfg.DeltaConfig, t)
	if err != nil {
		return nil, err
	}
	r.backup = &backupState{
		k: cfg.Backups, fetchTimeout: cfg.FetchTimeout, rate: cfg.RepairRate,
		fetches: make(map[string]*fetchCall), wake: make(chan struct{}, 1),
		peers: t.Peers(),
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.repairLoop()
	}()
	return &Backup{r}, nil
}

// backupState is what the Backup manager adds to the shared implementation.
type backupState struct {
	k            int
	fetchTimeout time.Duration
	rate         int

	fetchMu sync.Mutex
	fetches map[string]*fetchCall     // coalesced fetches by session id
	queries map[uint64]*principalCall // FindByPrincipal calls awaiting answers
	queryN  uint64

	wake    chan struct{} // capacity 1: membership changed
	peersMu sync.Mutex
	peers   []string // the peers at the last repair

	// ownMu orders a repair's sending of copies of a session it claimed
	// against giving that claim up (onTakeover): a copy sent after the
	// drops that go with giving it up would stay an orphan.
	ownMu sync.Mutex

	underReplicated atomic.Int64
	copies          atomic.Int64 // backup copies a session gets now: Backups, or fewer in a small cluster
	repairing       atomic.Bool  // a repair is computing or sending
}

// principalCall is a FindByPrincipal waiting for its peers' answers.
type principalCall struct {
	// awaited are the peers whose answers are awaited: not one that the
	// send failed for, which may still answer (a stalled peer is slow, not
	// gone) but must not count twice.
	awaited []string
	fulls   map[string]Full // newest copy by id base
	done    chan struct{}
}

// askPrincipal asks every peer for the sessions of principal they hold and
// returns the newest copy of each.
func (m *replicated) askPrincipal(ctx context.Context, principal string) ([]Full, error) {
	b := m.backup
	peers := m.t.Peers()
	if len(peers) == 0 {
		return nil, nil
	}
	call := &principalCall{awaited: slices.Clone(peers), fulls: make(map[string]Full), done: make(chan struct{})}
	b.fetchMu.Lock()
	b.queryN++
	q := b.queryN
	if b.queries == nil {
		b.queries = make(map[uint64]*principalCall)
	}
	b.queries[q] = call
	b.fetchMu.Unlock()
	defer func() {
		b.fetchMu.Lock()
		delete(b.queries, q)
		b.fetchMu.Unlock()
	}()
	msg, err := encodeMsg(kindPrincipalQuery, principalQuery{Q: q, Principal: principal})
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.fetchTimeout)
	defer cancel()
	failed := failedPeers(m.t.Send(sctx, peers, msg, Ack), peers)
	if len(failed) > 0 {
		b.fetchMu.Lock()
		call.awaited = slices.DeleteFunc(call.awaited, func(r string) bool { return slices.Contains(failed, r) })
		if len(call.awaited) == 0 {
			select {
			case <-call.done: // the last answer came in first
			default:
				close(call.done)
			}
		}
		b.fetchMu.Unlock()
	}
	var werr error
	select {
	case <-call.done:
	case <-sctx.Done():
		werr = fmt.Errorf("manager: find by principal: not every peer answered: %w", sctx.Err())
	case <-m.stop:
		return nil, ErrClosed
	}
	if len(failed) > 0 {
		werr = errors.Join(werr, fmt.Errorf("manager: find by principal: peers %v unreachable", failed))
	}
	b.fetchMu.Lock()
	defer b.fetchMu.Unlock()
	out := make([]Full, 0, len(call.fulls))
	for _, f := range call.fulls {
		out = append(out, f)
	}
	return out, werr
}

// onPrincipalReply records peer from's answer to a FindByPrincipal, and
// completes it when every awaited peer has answered.
func (b *backupState) onPrincipalReply(from string, r principalReply) {
	b.fetchMu.Lock()
	defer b.fetchMu.Unlock()
	call := b.queries[r.Q]
	if call == nil {
		return
	}
	select {
	case <-call.done:
		return
	default:
	}
	for _, f := range r.Fulls {
		base := baseOf(f.ID)
		if cur, ok := call.fulls[base]; !ok || cur.Rev.Less(f.Rev) {
			call.fulls[base] = f
		}
	}
	if i := slices.Index(call.awaited, from); i >= 0 {
		call.awaited = slices.Delete(call.awaited, i, i+1)
		if len(call.awaited) == 0 {
			close(call.done)
		}
	}
}

type fetchCall struct {
	done chan struct{}
	// awaited are the holders whose replies are awaited: not one that the
	// send failed for, which may still answer (a stalled peer is slow, not
	// gone) but must not count twice.
	awaited []string
	asked   []string // every holder asked
	replied []string // the holders that answered
	waiters int      // requests awaiting it (ask, await)
	full    *Full
}

// silent returns the holders asked that did not answer. fetchMu is held.
func (c *fetchCall) silent() []string {
	return slices.DeleteFunc(slices.Clone(c.asked), func(r string) bool { return slices.Contains(c.replied, r) })
}

// score is the rendezvous weight of node route for session base: FNV-1a
// with a final mix, the same on every node.
func score(base, route string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(base))
	h.Write([]byte{0})
	h.Write([]byte(route))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// placement returns the k members with the highest scores for base,
// primary excluded, best first. Adding or removing a member moves only the
// sessions whose top k it enters or leaves.
func placement(base, primary string, members []string, k int) []string {
	cand := make([]string, 0, len(members))
	for _, m := range members {
		if m != primary && !slices.Contains(cand, m) {
			cand = append(cand, m)
		}
	}
	slices.SortFunc(cand, func(a, b string) int {
		sa, sb := score(base, a), score(base, b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	if len(cand) > k {
		cand = cand[:k]
	}
	return cand
}

// members returns the peers and this node.
func (m *replicated) members() []string {
	return append(m.t.Peers(), m.cfg.Route)
}

// targets returns who receives the changes of s: every peer (nil) for
// Delta, the session's backups for Backup, and its primary too when that
// is another node (this one lost a claim while a request of it ran).
func (m *replicated) targets(s *Session) []string {
	if m.backup == nil {
		return nil
	}
	base, _ := SplitID(s.ID())
	owner := s.ownerRoute()
	if owner == "" || owner == m.cfg.Route {
		return placement(base, m.cfg.Route, m.members(), m.backup.k)
	}
	out := slices.DeleteFunc(placement(base, owner, m.members(), m.backup.k), func(r string) bool { return r == m.cfg.Route })
	return append(out, owner)
}

// holders returns the peers that may hold a copy of id: for Backup, the
// route in the id, the known owner, and the k+1 best-placed members.
func (m *replicated) holders(id, owner string) []string {
	if m.backup == nil {
		return nil
	}
	base, route := SplitID(id)
	peers := m.t.Peers()
	out := placement(base, "", peers, m.backup.k+1)
	for _, r := range []string{route, owner} {
		if r != "" && r != m.cfg.Route && slices.Contains(peers, r) && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// fetch gets a session this node does not hold from its holders and makes
// this node its primary. Concurrent fetches of one id share one request.
func (m *replicated) fetch(ctx context.Context, id string) (*Session, error) {
	call := m.ask(id)
	if call == nil {
		return nil, ErrNotFound
	}
	full, err := m.await(ctx, id, call)
	if err != nil {
		return nil, err
	}
	for range 3 {
		s := m.st.get(id)
		if s == nil {
			if full == nil {
				return nil, ErrNotFound
			}
			n := m.h.fromFull(*full)
			t := n.claim(m.cfg.Route, 0, serveClaim)
			if s = m.st.add(n); s == n {
				m.takeover(s, t)
				return s, nil
			}
		}
		// A concurrent fetch installed it, or a copy arrived meanwhile
		// (the repair of a failed primary's sessions): this node serves
		// the session, so it is its primary either way.
		var seen uint64
		if full != nil {
			s.replace(*full)
			s.heardAccess(time.UnixMilli(full.Access))
			seen = full.Term
		}
		if s.ownerRoute() == m.cfg.Route {
			return s, nil
		}
		if t, ok := m.claimHeld(s, seen); ok {
			m.takeover(s, t)
			return s, nil
		}
		// Another node's claim won and this node dropped the copy
		// meanwhile: install the fetched one again.
	}
	return nil, ErrNotFound
}

// claimHeld makes this node the primary of s with a serving claim over
// the term seen, and returns the claim's term; false if this node no
// longer holds s (it lost it to another claim, onTakeover). A claim of a
// dropped copy would name this node primary of a session it does not
// hold.
func (m *replicated) claimHeld(s *Session, seen uint64) (uint64, bool) {
	m.backup.ownMu.Lock()
	defer m.backup.ownMu.Unlock()
	if !s.Valid() {
		return 0, false
	}
	return s.claim(m.cfg.Route, seen, serveClaim), true
}

// refresh brings a backup copy that is about to serve requests up to the
// newest revision its other holders have, and the latest access: the
// balancer failed a user over to a backup, which may have missed the last
// change or batch of access times sent to another holder while
// membership had not yet declared a member failed.
func (m *replicated) refresh(ctx context.Context, s *Session) {
	call := m.ask(s.ID())
	if call == nil {
		return
	}
	if full, err := m.await(ctx, s.ID(), call); err == nil && full != nil {
		s.replace(*full)
		s.heardAccess(time.UnixMilli(full.Access))
	}
}

// ask sends a fetch of id to its holders, or joins the fetch in progress.
// It returns nil when no holder can be asked. The fetch is sent in ack
// mode, so that a holder that cannot be reached (a member that has just
// died, before membership declares it failed) is not waited for.
func (m *replicated) ask(id string) *fetchCall {
	b := m.backup
	b.fetchMu.Lock()
	if call, ok := b.fetches[id]; ok {
		call.waiters++
		b.fetchMu.Unlock()
		return call
	}
	holders := m.holders(id, "")
	msg, err := encodeMsg(kindFetch, idMsg{ID: id})
	if err != nil || len(holders) == 0 {
		b.fetchMu.Unlock()
		return nil
	}
	call := &fetchCall{done: make(chan struct{}), awaited: slices.Clone(holders), asked: holders, waiters: 1}
	b.fetches[id] = call
	b.fetchMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), b.fetchTimeout)
	defer cancel()
	failed := failedPeers(m.t.Send(ctx, holders, msg, Ack), holders)
	if len(failed) > 0 {
		b.fetchMu.Lock()
		call.awaited = slices.DeleteFunc(call.awaited, func(r string) bool { return slices.Contains(failed, r) })
		if len(call.awaited) == 0 {
			select {
			case <-call.done:
			default:
				close(call.done)
			}
		}
		b.fetchMu.Unlock()
	}
	return call
}

// failedPeers returns the peers a Send error names; all of to when the
// error does not say.
func failedPeers(err error, to []string) []string {
	if err == nil {
		return nil
	}
	var out []string
	var walk func(error)
	walk = func(e error) {
		var pe *replication.PeerError
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		} else if errors.As(e, &pe) {
			out = append(out, pe.Peer)
		}
	}
	walk(err)
	if len(out) == 0 {
		return to
	}
	return out
}

// await waits for the replies of a fetch and returns the newest copy
// found, or nil. With no copy found, the error wraps ErrUnreachable when
// some holder asked did not answer: it may hold the session. A fetch
// that its last waiter gives up on (its request's context ended) is
// forgotten: replies that come in later would otherwise complete it, and
// a request of the session long after would get that copy, however the
// session changed since.
func (m *replicated) await(ctx context.Context, id string, call *fetchCall) (*Full, error) {
	b := m.backup

	timer := time.NewTimer(b.fetchTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-call.done:
	case <-timer.C:
		m.h.log.Warn("fetch of a session timed out", "session", RedactID(id), "after", b.fetchTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	case <-m.stop:
		err = ErrClosed
	}
	b.fetchMu.Lock()
	defer b.fetchMu.Unlock()
	call.waiters--
	if b.fetches[id] == call && (err == nil || call.waiters == 0) {
		delete(b.fetches, id)
	}
	if err != nil {
		return nil, err
	}
	if call.full == nil {
		if silent := call.silent(); len(silent) > 0 {
			return nil, fmt.Errorf("%w: %s not answering", ErrUnreachable, strings.Join(silent, ", "))
		}
	}
	return call.full, nil
}

// onFetchReply records holder from's answer to a fetch, and completes the
// fetch when every awaited holder has answered.
func (m *replicated) onFetchReply(from string, r fetchReply) {
	b := m.backup
	if b == nil {
		return
	}
	b.fetchMu.Lock()
	defer b.fetchMu.Unlock()
	call, ok := b.fetches[r.ID]
	if !ok {
		return
	}
	select {
	case <-call.done:
		return
	default:
	}
	// Every holder answers, so the newest copy wins: a holder may have
	// missed the last change. Its access time is the latest any holder
	// has, whatever its revision: access times reach the holders in
	// batches, one may have missed the last, and with an older one the
	// session would look expired.
	if !slices.Contains(call.replied, from) {
		call.replied = append(call.replied, from)
	}
	if r.Found {
		switch {
		case call.full == nil:
			f := r.Full
			call.full = &f
		case call.full.Rev.Less(r.Full.Rev):
			f := r.Full
			f.Access = max(f.Access, call.full.Access)
			call.full = &f
		default:
			call.full.Access = max(call.full.Access, r.Full.Access)
		}
	}
	if i := slices.Index(call.awaited, from); i >= 0 {
		call.awaited = slices.Delete(call.awaited, i, i+1)
		if len(call.awaited) == 0 {
			close(call.done)
		}
	}
}

// takeover makes this node, which serves requests of s, the primary of s:
// the other holders hear of it (and keep or drop their copy by the new
// placement) and the new backups get a copy.
func (m *replicated) takeover(s *Session, term uint64) {
	id := s.ID()
	m.h.log.Info("took over session", "session", RedactID(id))
	// Every peer hears of it, not only the holders: another node the user
	// was sent to may be claiming the session at the same moment, and the
	// two must learn of each other's claim to agree on one (yieldTo).
	m.sendAsync(m.t.Peers(), kindTakeover, idMsg{ID: id, Serve: true, Term: term})
	m.sendAsync(m.targets(s), kindFull, s.full())
}

// handOff gives each session this node is the primary of to its first
// backup, which becomes its primary and restores its backups, before the
// node leaves: Backup's graceful shutdown. Copies go in ack mode, a stream
// per new primary, until ctx ends. A new primary that fails meanwhile
// (membership drops it) is not waited for: its sessions go to the next
// member by placement, among those left, in a further round.
func (m *replicated) handOff(ctx context.Context) {
	start := time.Now()
	failed := make(map[string]bool)
	handed := make(map[string]bool) // bases handed off
	total := 0
	var peers int
	for round := 0; round < 3 && ctx.Err() == nil; round++ {
		members := slices.DeleteFunc(m.members(), func(r string) bool { return failed[r] })
		target := func(s *Session) string {
			base, _ := SplitID(s.ID())
			if handed[base] || s.ownerRoute() != m.cfg.Route {
				return ""
			}
			if p := placement(base, m.cfg.Route, members, 1); len(p) > 0 {
				return p[0]
			}
			return ""
		}
		to := make(map[string]bool)
		for _, s := range m.st.all() {
			if p := target(s); p != "" {
				to[p] = true
			}
		}
		if len(to) == 0 {
			break
		}
		peers += len(to)
		again := false
		for peer := range to {
			var sent []string
			n, ok := m.streamTo(ctx, peer, kindHandoff, func(s *Session) bool {
				if target(s) != peer {
					return false
				}
				base, _ := SplitID(s.ID())
				sent = append(sent, base)
				return true
			}, false)
			total += n
			if !ok {
				failed[peer], again = true, true
				continue
			}
			for _, b := range sent {
				handed[b] = true
			}
		}
		if !again {
			break
		}
	}
	if total > 0 {
		m.h.log.Info("primaries handed off before leaving", "sessions", total, "peers", peers, "duration", time.Since(start))
	}
}

// placeReturned handles a copy of s that peer from sent this node, naming
// it the primary: it restarted, and its sessions come back from their
// backups, or from holds a copy placement does not put there (repair).
// Placement may now name other backups than from: with fresh (s was not
// held here), they get a copy, and from, which holds one, drops it if
// placement no longer names it (the backups get a copy first). Several
// backups may send one session back (more than one backup, or copies
// left over from before): each one that placement does not name drops
// its copy, so none stays behind to miss the session's next changes.
func (m *replicated) placeReturned(s *Session, from string, fresh bool) {
	if fresh {
		// from's word that this node is the primary may be stale:
		// another node may have claimed the session since (a claim from
		// missed). The claim goes to every peer, not as one that serves
		// (a repair's weight): one against a live primary loses, and
		// that primary answers with its own, which this node then
		// yields to (onTakeover), dropping its copy.
		_, term := s.ownerClaim()
		m.sendAsync(m.t.Peers(), kindTakeover, idMsg{ID: s.ID(), Term: term})
	}
	targets := m.targets(s)
	surplus := !slices.Contains(targets, from)
	if !fresh && !surplus {
		return // from is one of its backups, as placement says
	}
	// Before from drops its copy, the backups get one, as a repair's
	// move sends both at once: one of them may not hold it yet.
	if to := slices.DeleteFunc(targets, func(r string) bool { return r == from }); len(to) > 0 {
		m.sendAsync(to, kindFull, s.full())
	}
	if surplus {
		m.sendAsync([]string{from}, kindDrop, idMsg{ID: s.ID()})
	}
}

// onHandoff makes this node the primary of a session its primary handed
// over on leaving.
func (m *replicated) onHandoff(from string, f Full) {
	m.onFull(from, f)
	if s := m.st.get(f.ID); s != nil {
		m.takeover(s, s.claim(m.cfg.Route, f.Term, serveClaim))
	}
}

// onTakeover updates this node's role for a session whose primary moved.
//
// Two nodes may claim one session at once after its primary fails: the
// surviving backup that the repair picks, and a node the balancer sent
// the user to, which fetched the session; or two nodes that each serve
// one of the user's tabs. The node serving the user wins over a repair: a
// repair's claim (not e.Serve) counts only while the primary this node
// knows of is gone, and weighs less (serveClaim). Between claims of equal
// weight, the claim's term and then the claimant's route decide, the same
// on every node, whatever order the claims arrive in; a primary that
// receives a losing claim answers with its own. A primary that loses its
// claim tells the backups it gave copies to, and that the winner does not
// use, to drop them.
func (m *replicated) onTakeover(from string, e idMsg) {
	s := m.st.get(e.ID)
	if s == nil {
		return
	}
	m.backup.ownMu.Lock()
	defer m.backup.ownMu.Unlock()
	members := m.members()
	owner, term := s.ownerClaim()
	if owner != from && (!e.Serve && slices.Contains(members, owner) ||
		e.Term < term || e.Term == term && from < owner) {
		// The claim loses: a repair's against a live primary, or any
		// outranked by the claim this node knows (yieldTo's order). The
		// primary answers with its own claim, so that a claimant which had
		// no copy yet when that claim went out learns that it lost.
		if owner == m.cfg.Route {
			m.sendAsync([]string{from}, kindTakeover, idMsg{ID: s.ID(), Serve: true, Term: term})
		}
		return
	}
	base, _ := SplitID(e.ID)
	after := placement(base, from, members, m.backup.k)
	if owner == m.cfg.Route {
		var drop []string
		for _, r := range placement(base, m.cfg.Route, members, m.backup.k) {
			if r != from && !slices.Contains(after, r) {
				drop = append(drop, r)
			}
		}
		if len(drop) > 0 {
			m.sendAsync(drop, kindDrop, idMsg{ID: s.ID()})
		}
	}
	s.yieldTo(from, e.Term) // a request still holding s commits to the winner
	if !slices.Contains(after, m.cfg.Route) {
		m.st.remove(s.ID())
	}
}

// PeersChanged tells the manager the membership changed. For Backup it
// starts a background repair: copies go to the backups the new placement
// names, and the sessions of a failed primary get a new one. For Delta it
// gives up a state transfer from a peer that is no longer one, so that
// the next peer is tried at once.
func (m *replicated) PeersChanged() {
	if m.backup == nil {
		m.dropLostSync()
		return
	}
	select {
	case m.backup.wake <- struct{}{}:
	default:
	}
}

// orphanWait is how long a backup of a failed primary's session waits for
// the survivor that placement names to take the session over before it
// takes it over itself: that survivor may hold no copy (it joined, or came
// back, after the copies were placed, and the primary died before moving
// them). A takeover comes within milliseconds.
const orphanWait = time.Second

// repairLoop runs repairs when the membership changes, and once more
// orphanWait after a repair that left a failed primary's session to
// another survivor. It exits when the manager closes.
func (m *replicated) repairLoop() {
	var late <-chan time.Time
	for {
		orphans := false
		select {
		case <-m.stop:
			return
		case <-m.backup.wake:
		case <-late:
			orphans = true
		}
		late = nil
		if m.repair(orphans) {
			late = time.After(orphanWait)
		}
	}
}

// repair moves copies after a membership change, at most RepairRate
// sessions per second. Of the sessions of a failed primary, it takes over
// those of which placement names this node the first survivor, or with
// orphans all that are still the failed primary's. It reports whether it
// left some to another survivor.
func (m *replicated) repair(orphans bool) (waiting bool) {
	b := m.backup
	b.repairing.Store(true)
	defer b.repairing.Store(false)
	b.peersMu.Lock()
	old := append(slices.Clone(b.peers), m.cfg.Route)
	b.peers = m.t.Peers()
	now := append(slices.Clone(b.peers), m.cfg.Route)
	b.peersMu.Unlock()
	m.noteCopies(len(now) - 1)

	type job struct {
		s    *Session
		to   []string
		drop []string
	}
	var jobs []job
	var surplus []*Session
	for _, s := range m.st.all() {
		id := s.ID()
		base, _ := SplitID(id)
		owner := s.ownerRoute()
		if owner != m.cfg.Route && !slices.Contains(now, owner) {
			// The primary failed. The surviving backup with the best score
			// takes over; the others wait for its copy.
			survivors := placement(base, owner, old, b.k)
			survivors = slices.DeleteFunc(survivors, func(r string) bool { return !slices.Contains(now, r) })
			if !orphans && (len(survivors) == 0 || survivors[0] != m.cfg.Route) {
				waiting = true
				continue
			}
			// A node the user was sent to may have claimed it since the
			// scan read its owner: that claim wins (onTakeover).
			b.ownMu.Lock()
			claimed := s.ownerRoute() == owner
			var term uint64
			if claimed {
				term = s.claim(m.cfg.Route, 0, repairClaim)
			}
			b.ownMu.Unlock()
			if !claimed {
				continue
			}
			jobs = append(jobs, job{s: s, to: placement(base, m.cfg.Route, now, b.k)})
			m.sendAsync(m.t.Peers(), kindTakeover, idMsg{ID: id, Term: term})
			continue
		}
		if owner != m.cfg.Route {
			if !slices.Contains(placement(base, owner, now, b.k), m.cfg.Route) &&
				!slices.Contains(placement(base, owner, old, b.k), m.cfg.Route) {
				// A copy that placement put here neither before this
				// change nor after it: the primary's repair moves only
				// the copies of the last change, and this node missed
				// a drop (it was not the primary's peer when that one
				// claimed the session, just after a restart). The copy
				// goes to the primary, which keeps the newer revision,
				// gives its backups a copy and tells this node to drop
				// its own if it is none of them (placeReturned).
				surplus = append(surplus, s)
			}
			continue
		}
		before := placement(base, m.cfg.Route, old, b.k)
		after := placement(base, m.cfg.Route, now, b.k)
		var add, drop []string
		for _, r := range after {
			if !slices.Contains(before, r) {
				add = append(add, r)
			}
		}
		for _, r := range before {
			if !slices.Contains(after, r) && slices.Contains(now, r) {
				drop = append(drop, r)
			}
		}
		if len(add) > 0 || len(drop) > 0 {
			jobs = append(jobs, job{s: s, to: add, drop: drop})
		}
	}
	for _, s := range surplus {
		m.sendAsync([]string{s.ownerRoute()}, kindFull, s.full())
	}
	if len(jobs) == 0 {
		return waiting
	}
	b.underReplicated.Store(int64(len(jobs)))
	start := time.Now()
	interval := time.Second / time.Duration(b.rate)
	next := time.Now()
	for i, j := range jobs {
		if d := time.Until(next); d > 0 {
			select {
			case <-m.stop:
				return false
			case <-time.After(d):
			}
		}
		next = next.Add(interval)
		b.ownMu.Lock()
		// Another node may have taken the session over meanwhile, and this
		// node dropped its copy if the winner's placement has no room for
		// it: a copy sent now would outlive both, owned by nobody who
		// knows of it.
		if j.s.ownerRoute() == m.cfg.Route && j.s.Valid() {
			if len(j.to) > 0 {
				m.sendAsync(j.to, kindFull, j.s.full())
			}
			if len(j.drop) > 0 {
				m.sendAsync(j.drop, kindDrop, idMsg{ID: j.s.ID()})
			}
		}
		b.ownMu.Unlock()
		b.underReplicated.Store(int64(len(jobs) - i - 1))
	}
	m.h.log.Info("replicas rebalanced", "sessions", len(jobs), "duration", time.Since(start))
	return waiting
}

// noteCopies records how many backup copies sessions get with peers
// peers, and says so when a cluster too small for Backups caps them:
// otherwise nothing would show that sessions have fewer copies than
// configured (they are not under-replicated, as no node could take one).
func (m *replicated) noteCopies(peers int) {
	b := m.backup
	n := int64(min(peers, b.k))
	if old := b.copies.Swap(n); old == n {
		return
	}
	switch {
	case n == int64(b.k):
		m.h.log.Info("enough peers for every backup copy again", "backups", b.k, "peers", peers)
	case peers > 0:
		m.h.log.Warn("fewer peers than backup copies: sessions get fewer copies until more nodes join",
			"backups", b.k, "copies", n, "peers", peers)
	}
}

// BackupCopies returns how many backup copies each session gets now:
// Backups, or fewer while the cluster has fewer peers; 0 for Delta.
func (m *replicated) BackupCopies() int {
	if m.backup == nil {
		return 0
	}
	return int(m.backup.copies.Load())
}

// UnderReplicated returns how many sessions wait for a copy to reach a new
// backup; 0 when replication is complete (always 0 for Delta).
func (m *replicated) UnderReplicated() int64 {
	if m.backup == nil {
		return 0
	}
	return m.backup.underReplicated.Load()
}
