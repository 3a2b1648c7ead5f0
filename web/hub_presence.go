package web

import (
	"context"
	"encoding/binary"
	"slices"
	"time"

	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
)

// A presence message holds at most presenceChunk entries and about
// presenceChunkBytes of them.
const (
	presenceChunk      = 4096
	presenceChunkBytes = 64 << 10
)

// presenceRetry is how soon the run goroutine tries again to send its
// presence to a member that is not yet, or no longer, a channel peer.
const presenceRetry = 100 * time.Millisecond

// poke wakes the run goroutine.
func (h *Hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// localChanged records this node's current socket count for user in the
// registry and marks it for the peers.
func (h *Hub) localChanged(user string) {
	h.pmu.Lock()
	h.mu.RLock()
	n := len(h.users[user])
	h.mu.RUnlock()
	h.setCount(user, h.route, n)
	h.dirty[user] = struct{}{}
	h.pmu.Unlock()
	h.poke()
}

// setCount sets node's count for user, noting a change of the user's
// cluster-wide presence. pmu must be held.
func (h *Hub) setCount(user, node string, n int) {
	nodes := h.presence[user]
	was := len(nodes) > 0
	if n > 0 {
		if nodes == nil {
			nodes = make(map[string]int)
			h.presence[user] = nodes
		}
		nodes[node] = n
	} else if nodes != nil {
		delete(nodes, node)
		if len(nodes) == 0 {
			delete(h.presence, user)
		}
	}
	if is := len(h.presence[user]) > 0; is != was && h.cfg.OnPresence != nil {
		h.notes = append(h.notes, presenceNote{user, is})
	}
}

// applyPresence applies a peer's presence message. The messages of a
// snapshot, from reset to the last with more unset, replace the peer's
// counts without first forgetting them: a user it still holds must not be
// reported gone and back. Their counts apply as they come, and the users
// none of them holds are forgotten at the last.
func (h *Hub) applyPresence(from string, reset, more bool, entries []presenceEntry) {
	if from == h.route {
		return
	}
	h.pmu.Lock()
	if h.down[from] {
		// A late message from a node declared failed or left.
		h.pmu.Unlock()
		return
	}
	h.hubs[from] = true
	keep, snapshot := h.keeping[from]
	if reset {
		keep, snapshot = make(map[string]bool, len(entries)), true
	}
	for _, e := range entries {
		n := int(min(e.Sockets, 1<<31))
		h.setCount(e.User, from, n)
		if snapshot {
			keep[e.User] = n > 0
		}
	}
	switch {
	case !snapshot:
	case more:
		h.keeping[from] = keep
	default:
		delete(h.keeping, from)
		for user, nodes := range h.presence {
			if _, held := nodes[from]; held && !keep[user] {
				h.setCount(user, from, 0)
			}
		}
	}
	notes := len(h.notes) > 0
	h.pmu.Unlock()
	if notes {
		h.poke()
	}
}

// purgeLocked forgets every socket of node. pmu must be held.
func (h *Hub) purgeLocked(node string) {
	delete(h.keeping, node)
	for user, nodes := range h.presence {
		if _, ok := nodes[node]; ok {
			h.setCount(user, node, 0)
		}
	}
}

// hubPeers returns the replication peers whose hub has spoken since they
// joined: a node whose hub is not running yet would drop an operation,
// and its caller wait DeliverTimeout for the count.
func (h *Hub) hubPeers() []string {
	peers := h.ch.Peers()
	h.pmu.Lock()
	defer h.pmu.Unlock()
	return slices.DeleteFunc(peers, func(p string) bool { return !h.hubs[p] })
}

// nodesOf returns the peers that presence says hold sockets of user.
func (h *Hub) nodesOf(user string) []string {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	var out []string
	for n := range h.presence[user] {
		if n != h.route {
			out = append(out, n)
		}
	}
	return out
}

// live reports whether m is a member the hub exchanges presence with.
func live(m membership.Member) bool {
	return m.State == membership.StateAlive && !m.Meta.Leaving
}

// run owns presence traffic: it follows membership (purging the sockets of
// failed and departed nodes, sending our whole presence to each new member
// and asking for theirs), sends this node's changed counts, refreshes
// every peer's copy every PresenceRefresh, and calls OnPresence. It
// returns when the hub closes.
func (h *Hub) run() {
	refresh := time.NewTicker(h.cfg.PresenceRefresh)
	defer refresh.Stop()
	retry := time.NewTimer(presenceRetry)
	defer retry.Stop()
	synced := map[string]time.Time{} // member -> start time of the incarnation we sent our presence to
	seen := map[string]time.Time{}   // member -> start time of the latest incarnation seen live
	events := h.sub.C
	for {
		members := false
		select {
		case <-h.done:
			// Tell the peers about the sockets Close just closed.
			if h.ch != nil {
				h.flushDirty(synced)
			}
			return
		case ev, ok := <-events:
			if !ok {
				events = nil // the node closed
				continue
			}
			if ev.Type == membership.EventLeave || ev.Type == membership.EventFail {
				h.pmu.Lock()
				h.down[ev.Member.Name] = true
				delete(h.hubs, ev.Member.Name)
				h.purgeLocked(ev.Member.Name)
				h.pmu.Unlock()
				delete(synced, ev.Member.Name)
			}
			members = true
		case <-retry.C:
			members = true
		case <-refresh.C:
			clear(synced)
			members = true
		case <-h.wake:
		}
		if h.ch != nil {
			again := members && h.syncMembers(synced, seen)
			h.sendAsked()
			if h.flushDirty(synced) || again {
				retry.Reset(presenceRetry)
			}
		}
		h.notify()
	}
}

// syncMembers sends our whole presence to each live member of a new
// incarnation, and asks for theirs, and forgets the sockets of members no
// longer live. A member seen live with another start time than before
// restarted without being declared failed: the sockets of its earlier
// incarnation are gone, and its hub may not run yet, so they are
// forgotten and it is left out of cluster-wide operations until its new
// hub speaks. It reports whether some member must be tried again.
func (h *Hub) syncMembers(synced, seen map[string]time.Time) (retry bool) {
	peers := map[string]bool{}
	for _, p := range h.ch.Peers() {
		peers[p] = true
	}
	alive := map[string]bool{}
	for _, m := range h.node.Members() {
		if m.Name == h.route {
			continue
		}
		if !live(m) {
			if _, ok := synced[m.Name]; ok {
				delete(synced, m.Name)
				h.pmu.Lock()
				h.down[m.Name] = true
				delete(h.hubs, m.Name)
				h.purgeLocked(m.Name)
				h.pmu.Unlock()
			}
			continue
		}
		alive[m.Name] = true
		h.pmu.Lock()
		delete(h.down, m.Name)
		if prev, ok := seen[m.Name]; ok && !prev.Equal(m.Meta.Started) {
			delete(h.hubs, m.Name)
			h.purgeLocked(m.Name)
		}
		h.pmu.Unlock()
		seen[m.Name] = m.Meta.Started
		if started, ok := synced[m.Name]; ok && started.Equal(m.Meta.Started) {
			continue
		}
		if !peers[m.Name] {
			retry = true // the cluster has not connected the channel yet
			continue
		}
		if err := h.sendSnapshot(m.Name, true); err != nil {
			retry = true
			continue
		}
		synced[m.Name] = m.Meta.Started
	}
	for name := range synced {
		if !alive[name] {
			delete(synced, name)
		}
	}
	return retry
}

// sendAsked sends our whole presence to the peers that asked for it.
func (h *Hub) sendAsked() {
	h.pmu.Lock()
	if len(h.asked) == 0 {
		h.pmu.Unlock()
		return
	}
	asked := h.asked
	h.asked = map[string]bool{}
	h.pmu.Unlock()
	for peer := range asked {
		if err := h.sendSnapshot(peer, false); err != nil {
			h.log.Debug("presence not sent", "peer", peer, "err", err)
		}
	}
}

// sendSnapshot sends peer every local user's count, replacing what it
// holds for this node, in chunks, and, when ask is set, asks for the
// peer's. The counts are read and queued under pmu so that no later
// update is queued before them.
func (h *Hub) sendSnapshot(peer string, ask bool) error {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	var entries []presenceEntry
	for user, nodes := range h.presence {
		if n := nodes[h.route]; n > 0 {
			entries = append(entries, presenceEntry{user, uint64(n)})
		}
	}
	to := []string{peer}
	for _, body := range presenceMsgs(entries, true) {
		if err := h.ch.Send(context.Background(), to, HubMsgType, body, replication.Async); err != nil {
			return err
		}
	}
	if ask {
		body := appendHubMsg(nil, &hubMsg{Kind: kindAskPresence})
		return h.ch.Send(context.Background(), to, HubMsgType, body, replication.Async)
	}
	return nil
}

// presenceMsgs encodes entries as presence messages within the chunk
// bounds. With snapshot set they are one snapshot, of at least one
// message; otherwise updates, none when entries is empty.
func presenceMsgs(entries []presenceEntry, snapshot bool) [][]byte {
	var msgs [][]byte
	for first := true; len(entries) > 0 || (first && snapshot); first = false {
		k, size := 0, 0
		for k < len(entries) && k < presenceChunk && (k == 0 || size < presenceChunkBytes) {
			size += len(entries[k].User) + binary.MaxVarintLen64
			k++
		}
		m := hubMsg{Kind: kindPresence, Entries: entries[:k]}
		entries = entries[k:]
		m.Reset, m.More = snapshot && first, snapshot && len(entries) > 0
		msgs = append(msgs, appendHubMsg(nil, &m))
	}
	return msgs
}

// flushDirty sends every peer this node's counts of the users that
// changed. A peer that misses them (its queue is full) is forgotten from
// synced, so that the retry sends it our whole presence again; it then
// reports true.
func (h *Hub) flushDirty(synced map[string]time.Time) (retry bool) {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	if len(h.dirty) == 0 {
		return false
	}
	entries := make([]presenceEntry, 0, len(h.dirty))
	for user := range h.dirty {
		entries = append(entries, presenceEntry{user, uint64(h.presence[user][h.route])})
	}
	clear(h.dirty)
	for _, body := range presenceMsgs(entries, false) {
		err := h.ch.Send(context.Background(), nil, HubMsgType, body, replication.Async)
		for peer := range failedPeers(err) {
			delete(synced, peer)
			retry = true
		}
	}
	return retry
}

// notify calls OnPresence for the changes noted so far, in order.
func (h *Hub) notify() {
	h.pmu.Lock()
	notes := h.notes
	h.notes = nil
	h.pmu.Unlock()
	for _, n := range notes {
		h.cfg.OnPresence(n.user, n.online)
	}
}
