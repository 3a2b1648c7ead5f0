package manager

import (
	"log/slog"
	"regexp"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Reason says why a session was destroyed.
type Reason int

const (
	Invalidated Reason = iota // the application or a peer invalidated it
	Expired                   // it was idle longer than its max inactive interval
)

func (r Reason) String() string {
	if r == Expired {
		return "expired"
	}
	return "invalidated"
}

// Listener receives session events. Every field is optional. Callbacks run
// synchronously on the goroutine that caused the event (a request, the
// expiry sweep, or the replication receiver), without the session's lock
// held: they may call the session's methods, and they must not block for
// long, since a slow listener slows that goroutine down. A callback that
// panics is recovered and logged at error, with its stack, and the other
// listeners still run: a listener's bug must not stop the expiry sweep or
// a peer's replication, nor take the process down.
//
// Whether callbacks also fire for changes received from peers is
// Config.NotifyOnReplication (Tomcat's notifyListenersOnReplication).
type Listener struct {
	Created           func(s *Session)
	Destroyed         func(s *Session, why Reason)
	AttributeAdded    func(s *Session, name string, value any)
	AttributeReplaced func(s *Session, name string, old, value any)
	AttributeRemoved  func(s *Session, name string, old any)
	IDChanged         func(s *Session, oldID string)
}

// host is the state a manager shares with its sessions.
type host struct {
	route     string
	types     *types
	log       *slog.Logger
	clock     func() time.Time
	local     *regexp.Regexp // attribute names that are never replicated; nil: none
	mu        sync.RWMutex   // guards listeners
	listeners []*Listener    // copy on write: fire ranges over a snapshot
	// attrListeners says whether a listener has an attribute callback:
	// without one, a replica need not decode the values a change carries.
	attrListeners atomic.Bool
	// notifyReplicated says whether listeners hear about changes received
	// from peers (Config.NotifyOnReplication).
	notifyReplicated bool
	// maxSize bounds a session's names and encoded values together, in
	// bytes (DeltaConfig.MaxSessionSize); 0: no bound.
	maxSize int
	// primaries counts the stored sessions this node is the primary of
	// (owner empty or route), kept by Session.recount, so that counting
	// them for a metrics scrape does not visit every session.
	primaries atomic.Int64
}

// types is an alias so host can name the registry without a field called
// Types on every Session.
type types = Types

func (h *host) now() time.Time { return h.clock() }

func (h *host) localOnly(name string) bool {
	return h.local != nil && h.local.MatchString(name)
}

// fire calls f for every listener, in registration order. A panic in
// one is logged, and the next one runs.
func (h *host) fire(f func(Listener)) {
	h.mu.RLock()
	ls := h.listeners
	h.mu.RUnlock()
	for i, l := range ls {
		h.call(i, *l, f)
	}
}

func (h *host) call(i int, l Listener, f func(Listener)) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("session listener panicked", "listener", i, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	f(l)
}

// addListener registers l and returns the function that removes it.
func (h *host) addListener(l Listener) (remove func()) {
	p := &l
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listeners = append(h.listeners[:len(h.listeners):len(h.listeners)], p)
	if l.hasAttr() {
		h.attrListeners.Store(true)
	}
	var once sync.Once
	return func() { once.Do(func() { h.removeListener(p) }) }
}

func (h *host) removeListener(p *Listener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listeners = slices.DeleteFunc(slices.Clone(h.listeners), func(q *Listener) bool { return q == p })
	attr := false
	for _, q := range h.listeners {
		attr = attr || q.hasAttr()
	}
	h.attrListeners.Store(attr)
}

func (l *Listener) hasAttr() bool {
	return l.AttributeAdded != nil || l.AttributeReplaced != nil || l.AttributeRemoved != nil
}
