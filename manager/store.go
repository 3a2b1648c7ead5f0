package manager

import (
	"sync"
	"time"
)

// store is the in-memory session table every manager kind uses: sessions
// by id, ids recently replaced by ChangeID, and sessions by principal. It is
// guarded by one mutex; sessions have their own locks, always taken after
// the store's (lock order: store.mu, then Session.mu).
type store struct {
	h     *host
	mu    sync.RWMutex
	byID  map[string]*Session
	base  map[string]*Session // by the id's base: one session per base
	alias map[string]alias    // old id -> new id, until expiry
	grace time.Duration
}

type alias struct {
	to    string
	until time.Time
}

func newStore(h *host, grace time.Duration) *store {
	return &store{h: h, byID: make(map[string]*Session), base: make(map[string]*Session), alias: make(map[string]alias), grace: grace}
}

// newSession makes and stores a session with a fresh id.
func (st *store) newSession(route string, maxInactive time.Duration) *Session {
	now := st.h.now()
	s := &Session{
		host: st.h, id: JoinID(newID(), route), created: now, lastAccess: now,
		maxInactive: maxInactive, isNew: true, valid: true,
	}
	st.mu.Lock()
	st.byID[s.id] = s
	st.base[baseOf(s.id)] = s
	st.mu.Unlock()
	return s
}

// baseOf returns the base of a session id, without its route.
func baseOf(id string) string {
	b, _ := SplitID(id)
	return b
}

// getBase returns the session whose id has the same base as id, whatever
// its route: the same session, renamed on another node by route
// rebinding while the two could not talk.
func (st *store) getBase(id string) *Session {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.base[baseOf(id)]
}

// get returns the session for id, following a recent alias.
func (st *store) get(id string) *Session {
	st.mu.RLock()
	defer st.mu.RUnlock()
	if s, ok := st.byID[id]; ok {
		return s
	}
	if a, ok := st.alias[id]; ok && st.h.now().Before(a.until) {
		return st.byID[a.to]
	}
	return nil
}

// put stores s under its id, replacing any session of that id.
func (st *store) put(s *Session) {
	id := s.ID()
	st.mu.Lock()
	if old := st.base[baseOf(id)]; old != nil && old != s {
		delete(st.byID, old.ID())
	}
	st.byID[id] = s
	st.base[baseOf(id)] = s
	st.mu.Unlock()
}

// remove deletes the session of id and marks it invalid. It returns the
// session, or nil when there was none.
func (st *store) remove(id string) *Session {
	st.mu.Lock()
	s, ok := st.byID[id]
	if ok {
		delete(st.byID, id)
		if st.base[baseOf(id)] == s {
			delete(st.base, baseOf(id))
		}
	}
	st.mu.Unlock()
	if !ok {
		return nil
	}
	s.mu.Lock()
	s.valid = false
	s.mu.Unlock()
	return s
}

// rename moves s from its id to newID and keeps the old id as an alias for
// the grace period. It reports false when s is no longer stored.
func (st *store) rename(s *Session, newID string) (oldID string, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	oldID = s.id
	if st.byID[oldID] != s {
		return oldID, false
	}
	if oldID == newID {
		return oldID, true
	}
	delete(st.byID, oldID)
	if st.base[baseOf(oldID)] == s {
		delete(st.base, baseOf(oldID))
	}
	if other := st.byID[newID]; other != nil && other != s {
		other.mu.Lock()
		other.valid = false
		other.mu.Unlock()
	}
	st.byID[newID] = s
	st.base[baseOf(newID)] = s
	s.id = newID
	if st.grace > 0 {
		st.alias[oldID] = alias{to: newID, until: st.h.now().Add(st.grace)}
	}
	return oldID, true
}

// all returns the stored sessions.
func (st *store) all() []*Session {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]*Session, 0, len(st.byID))
	for _, s := range st.byID {
		out = append(out, s)
	}
	return out
}

func (st *store) count() int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return len(st.byID)
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
	st.mu.Lock()
	for id, a := range st.alias {
		if !now.Before(a.until) {
			delete(st.alias, id)
		}
	}
	st.mu.Unlock()
	return out
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
