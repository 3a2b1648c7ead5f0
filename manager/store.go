package manager

import (
	"sync"
	"time"
)

// store is the in-memory session table every manager kind uses: sessions
// by the base of their id, and ids recently replaced by a new base
// (RenewID). It is guarded by one mutex; sessions have their own locks,
// always taken after the store's (lock order: store.mu, then Session.mu).
//
// Sessions are keyed by base, not by whole id: the route is where the
// session is served, not which session it is. An id whose route is stale
// (<base>.node1 after the session was rebound to node2) still finds the
// session, and a copy rebound on the other side of a partition is
// recognised as the same session. One map entry per session also keeps the
// table small.
type store struct {
	h      *host
	mu     sync.RWMutex
	byBase map[string]*Session
	alias  map[string]alias     // old base -> new base, until expiry
	graves map[string]time.Time // bases of sessions invalidated lately, until when
	// renamed holds the ids given lately to sessions renewed with a new
	// base, by old id, until graveTime after: a peer catching up hears of
	// them again.
	renamed map[string]alias
	grace   time.Duration
}

// graveTime is how long the base of an invalidated session is remembered:
// far longer than a peer's change or full copy of it can be in flight.
const graveTime = time.Minute

type alias struct {
	to    string
	until time.Time
}

func newStore(h *host, grace time.Duration) *store {
	return &store{
		h: h, byBase: make(map[string]*Session), alias: make(map[string]alias),
		graves: make(map[string]time.Time), renamed: make(map[string]alias), grace: grace,
	}
}

// newSession makes and stores a session with a fresh id.
func (st *store) newSession(route string, maxInactive time.Duration) *Session {
	now := st.h.now()
	s := &Session{
		host: st.h, id: JoinID(newID(), route), created: now.UnixNano(), lastAccess: now.UnixNano(),
		maxInactive: maxInactive, isNew: true, valid: true,
	}
	st.mu.Lock()
	st.enter(s)
	st.mu.Unlock()
	return s
}

// enter puts s in the table in place of any session of its base, which
// leaves it. Called with st.mu held.
func (st *store) enter(s *Session) {
	base := baseOf(s.id)
	if old := st.byBase[base]; old != nil && old != s {
		old.mu.Lock()
		old.setStored(false)
		old.mu.Unlock()
	}
	st.byBase[base] = s
	s.mu.Lock()
	s.setStored(true)
	s.mu.Unlock()
}

// baseOf returns the base of a session id, without its route.
func baseOf(id string) string {
	b, _ := SplitID(id)
	return b
}

// get returns the session of id's base, whatever its route, following a
// recent alias.
func (st *store) get(id string) *Session {
	base := baseOf(id)
	st.mu.RLock()
	defer st.mu.RUnlock()
	if s, ok := st.byBase[base]; ok {
		return s
	}
	if a, ok := st.alias[base]; ok && st.h.now().Before(a.until) {
		return st.byBase[a.to]
	}
	return nil
}

// put stores s, replacing any session of the same base.
func (st *store) put(s *Session) {
	st.mu.Lock()
	st.enter(s)
	st.mu.Unlock()
}

// add stores s unless a session of its base is stored already, and
// returns the session stored: s, or the one that was there. Two copies of
// one session arriving at once (a fetch's reply and a repair's copy, or
// two peers' changes) must end as one session, not as the later one
// hiding the first from the request that holds it.
func (st *store) add(s *Session) *Session {
	base := baseOf(s.ID())
	st.mu.Lock()
	defer st.mu.Unlock()
	if got, ok := st.byBase[base]; ok {
		return got
	}
	st.enter(s)
	return s
}

// remove deletes the session of id and marks it invalid. It returns the
// session, or nil when there was none.
func (st *store) remove(id string) *Session {
	base := baseOf(id)
	st.mu.Lock()
	s, ok := st.byBase[base]
	if ok {
		delete(st.byBase, base)
	}
	st.mu.Unlock()
	if !ok {
		return nil
	}
	s.mu.Lock()
	s.valid = false
	s.setStored(false)
	s.mu.Unlock()
	return s
}

// bury removes the session of id, as remove does, and remembers its base
// for graveTime: a peer's change or copy of it that was already on its way
// does not bring an invalidated (logged out) session back.
func (st *store) bury(id string) *Session {
	st.mu.Lock()
	st.graves[baseOf(id)] = st.h.now().Add(graveTime)
	st.mu.Unlock()
	return st.remove(id)
}

// buried reports whether the session of id was invalidated lately.
func (st *store) buried(id string) bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	until, ok := st.graves[baseOf(id)]
	return ok && st.h.now().Before(until)
}

// graveIDs returns the bases of the sessions invalidated lately.
func (st *store) graveIDs() []string {
	now := st.h.now()
	st.mu.RLock()
	defer st.mu.RUnlock()
	var out []string
	for base, until := range st.graves {
		if now.Before(until) {
			out = append(out, base)
		}
	}
	return out
}

// renames returns the renewals of the last graveTime, old id to new.
func (st *store) renames() []rename {
	now := st.h.now()
	st.mu.RLock()
	defer st.mu.RUnlock()
	var out []rename
	for old, a := range st.renamed {
		if now.Before(a.until) {
			out = append(out, rename{Old: old, New: a.to})
		}
	}
	return out
}

// rename gives s the id newID. When the base changes, the old base stays
// an alias for the grace period. It reports false when s is no longer
// stored.
func (st *store) rename(s *Session, newID string) (oldID string, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	oldID = s.id
	oldBase, newBase := baseOf(oldID), baseOf(newID)
	if st.byBase[oldBase] != s {
		return oldID, false
	}
	if oldID == newID {
		return oldID, true
	}
	if oldBase != newBase {
		delete(st.byBase, oldBase)
		if other := st.byBase[newBase]; other != nil && other != s {
			other.mu.Lock()
			other.valid = false
			other.setStored(false)
			other.mu.Unlock()
		}
		st.byBase[newBase] = s
		now := st.h.now()
		if st.grace > 0 {
			st.alias[oldBase] = alias{to: newBase, until: now.Add(st.grace)}
		}
		st.renamed[oldID] = alias{to: newID, until: now.Add(graveTime)}
	}
	s.id = newID
	return oldID, true
}

// all returns the stored sessions.
func (st *store) all() []*Session {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]*Session, 0, len(st.byBase))
	for _, s := range st.byBase {
		out = append(out, s)
	}
	return out
}

func (st *store) count() int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return len(st.byBase)
}

// expired removes and returns the sessions idle past their deadline at now,
// and forgets aliases past their grace period.
func (st *store) expired(now time.Time) []*Session {
	var out []*Session
	for _, s := range st.all() {
		if s.expiredAt(now) {
			if r := st.remove(s.ID()); r != nil {
				out = append(out, r)
			}
		}
	}
	st.forget(now)
	return out
}

// forget forgets the aliases, renewals and graves past their time at now.
func (st *store) forget(now time.Time) {
	st.mu.Lock()
	for _, m := range []map[string]alias{st.alias, st.renamed} {
		for id, a := range m {
			if !now.Before(a.until) {
				delete(m, id)
			}
		}
	}
	for base, until := range st.graves {
		if !now.Before(until) {
			delete(st.graves, base)
		}
	}
	st.mu.Unlock()
}

// byPrincipal returns the sessions logged in as p. It scans: principals
// are looked up on logout, not per request.
func (st *store) byPrincipal(p string) []*Session {
	var out []*Session
	for _, s := range st.all() {
		if s.Principal() == p {
			out = append(out, s)
		}
	}
	return out
}
