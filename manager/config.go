package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// Errors returned by managers.
var (
	ErrNotFound        = errors.New("manager: session not found")
	ErrClosed          = errors.New("manager: closed")
	ErrTooManySessions = errors.New("manager: too many sessions: this node holds its maximum")
	// ErrSessionTooLarge is wrapped by the error of a Set that would make
	// a replicated session larger than DeltaConfig.MaxSessionSize.
	ErrSessionTooLarge = errors.New("session too large to replicate")
	// ErrNotConfirmed is wrapped by the error of an Invalidate that
	// destroyed the session on this node but that some peer did not
	// confirm in time (it is failing, or hangs): the live peers have the
	// invalidation or will, and a peer that stays silent is dropped.
	ErrNotConfirmed = errors.New("manager: done on this node, not confirmed by every peer")
	// ErrRecentlyInvalidated is Find's error for a session invalidated
	// within the last minute (a logout). It wraps ErrNotFound: a caller that may
	// create a session in place of a missing one can tell this case
	// apart, and must not bring back a logged-out user's state.
	ErrRecentlyInvalidated = fmt.Errorf("%w: invalidated", ErrNotFound)
	// ErrUnreachable is wrapped by the error of a Backup Find of a session
	// this node does not hold, when the nodes that may hold it did not
	// all answer (one has just died and membership has not declared it
	// failed yet, or it hangs) and none that answered holds it: the
	// session may exist. It is not ErrNotFound, so that no new session
	// replaces the user's; the web layer answers 503 and the client's
	// retry, once membership has caught up, finds it or learns it is gone.
	ErrUnreachable = errors.New("manager: the session's holders did not all answer")
)

// Manager is what every manager kind offers the web layer. All methods are
// safe for concurrent use.
type Manager interface {
	// Create starts a new session whose id ends with this node's route.
	Create(ctx context.Context) (*Session, error)
	// Find returns the session with the given id, or ErrNotFound. An id
	// recently replaced by ChangeID still finds the session for a grace
	// period. Find records an access.
	Find(ctx context.Context, id string) (*Session, error)
	// Invalidate destroys a session, on every node that holds it. An
	// error wrapping ErrNotConfirmed says it is destroyed here but not
	// confirmed by every peer; any other error, that it was not destroyed.
	Invalidate(ctx context.Context, id string) error
	// ChangeID gives a session a new id and returns it: a new random base
	// when base is "" (RenewID after login), or the given base (route
	// rebinding keeps the base), always with this node's route. When the
	// rename is done here but not every peer confirmed it, it returns the
	// new id and the error; it returns "" only when nothing changed.
	ChangeID(ctx context.Context, s *Session, base string) (string, error)
	// Commit ends a request's use of the session: it hands the request's
	// changes to replication, waiting as the send mode says.
	Commit(ctx context.Context, s *Session) error
	// FindByPrincipal returns the sessions logged in as principal.
	FindByPrincipal(ctx context.Context, principal string) ([]*Session, error)
	// Range calls f for each session held by this node until f returns
	// false.
	Range(f func(*Session) bool)
	// Count returns how many sessions this node holds.
	Count() int
	// AddListener registers session event callbacks.
	AddListener(l Listener)
	// Close stops the manager. What happens to the sessions depends on the
	// kind: the Standard manager saves them to its file.
	Close(ctx context.Context) error
}

// Listenable is a Manager whose listeners can be removed, for a listener
// that lives less long than its manager (a WebSocket hub closed and made
// again on one node). Every manager of this package is one; it is apart
// from Manager so that other implementations of Manager need not be.
type Listenable interface {
	Manager
	// Listen registers l, as AddListener does, and returns the function
	// that removes it; calling it again does nothing. Once remove has
	// returned, l hears of no later event, and the manager no longer
	// holds it; an event whose callbacks were being called as it was
	// removed may still reach it.
	Listen(l Listener) (remove func())
}

// Config configures a manager. Start from DefaultConfig; New functions
// copy it and never write to it.
type Config struct {
	// Route is this node's route, the suffix of the ids it issues.
	Route string
	// MaxInactive is how long a new session lives without being used.
	// Default 30m.
	MaxInactive time.Duration
	// SweepInterval is how often expired sessions are removed. A session
	// expires within one SweepInterval of its deadline; a copy whose
	// last access came from a peer (with Backup, another node's session)
	// and whose expiry never came from that peer (it died) within three,
	// since it waits two for the peer's last accesses.
	// Default 10s.
	SweepInterval time.Duration
	// IDGracePeriod is how long the old id of a session renewed by ChangeID
	// with a new base (RenewID after a login) keeps finding the session.
	// Default 0: the old id stops working at once, as with Tomcat's
	// changeSessionId, so an id planted on a user before their login
	// (session fixation) never reaches the logged-in session. A longer
	// period lets parallel requests that still carry the old cookie find
	// the session, at the price of leaving the old id usable that long;
	// the web middleware and Store never hand such a request the new id.
	// Route rebinding keeps the base, so it needs no grace period.
	IDGracePeriod time.Duration
	// Types registers the attribute types sessions may hold. Nil means
	// NewTypes(): the built-in types only.
	Types *Types
	// LocalOnly matches attribute names that stay on this node and are
	// never replicated (Tomcat's sessionAttributeNameFilter, inverted).
	// Their values need not be replicable. Nil means none.
	LocalOnly *regexp.Regexp
	// NotifyOnReplication says whether listeners fire for changes received
	// from peers (Tomcat's notifyListenersOnReplication). Default true.
	NotifyOnReplication bool
	// File is where the Standard manager saves its sessions on Close and
	// loads them from on start. Empty means no persistence.
	File string
	// MaxSessions bounds the sessions a node holds, as Tomcat's
	// maxActiveSessions: Create fails with ErrTooManySessions, counted as
	// rejected, when it is reached. Zero means no limit.
	MaxSessions int
	// LargeSession is the size of a committed change, in bytes, above
	// which a warning is logged: large sessions slow replication and state
	// transfers. Zero means 256 KiB; negative turns the warning off.
	LargeSession int
	// Logger receives operational logs. Nil means slog.Default().
	Logger *slog.Logger
	// Clock returns the current time. Nil means time.Now; tests set it.
	Clock func() time.Time
}

// DefaultConfig returns the defaults: 30m sessions swept every 10s, no id
// grace period, listeners notified of replicated changes.
func DefaultConfig() Config {
	return Config{
		MaxInactive:         30 * time.Minute,
		SweepInterval:       10 * time.Second,
		NotifyOnReplication: true,
	}
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field, Value, Want string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("manager: invalid %s %q: want %s", e.Field, e.Value, e.Want)
}

// ValidRoute reports whether s can be a node's route: 1 to 128 ASCII
// letters, digits, '-' and '_', which a cookie value, a URL path and a
// balancer's route= setting keep as they are (net/http drops a cookie
// value's quotes, backslashes and control characters). The '.' is the
// separator of the session id.
func ValidRoute(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (c *Config) validate() error {
	if !ValidRoute(c.Route) {
		return &ConfigError{"Route", c.Route, "a name of 1 to 128 letters, digits, '-' and '_', such as node1"}
	}
	if c.MaxInactive < 0 {
		return &ConfigError{"MaxInactive", c.MaxInactive.String(), "a duration of at least 0 (0: never expires)"}
	}
	if c.SweepInterval <= 0 {
		return &ConfigError{"SweepInterval", c.SweepInterval.String(), "a positive duration such as 10s"}
	}
	if c.IDGracePeriod < 0 {
		return &ConfigError{"IDGracePeriod", c.IDGracePeriod.String(), "a duration of at least 0"}
	}
	return nil
}

func (c *Config) host() *host {
	h := &host{route: c.Route, types: c.Types, log: c.Logger, clock: c.Clock, local: c.LocalOnly, notifyReplicated: c.NotifyOnReplication}
	if h.types == nil {
		h.types = NewTypes()
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("component", "manager", "route", c.Route)
	if h.clock == nil {
		h.clock = time.Now
	}
	return h
}
