package web

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/manager"
)

// Config configures the HTTP side. Start from DefaultConfig.
type Config struct {
	// Route is this node's route: the suffix of the session ids it issues
	// and the one the route binder rebinds ids to. It must be the
	// manager's route; empty takes it.
	Route string
	// CookieName is the session cookie, and the name of the path parameter
	// (;jsessionid=) when it is JSESSIONID. Default "JSESSIONID".
	CookieName string
	// CookiePath is the cookie's Path. Default "/".
	CookiePath string
	// CookieDomain is the cookie's Domain. Empty means the request's host.
	CookieDomain string
	// Secure marks the cookie Secure: set it when clients reach the
	// application over HTTPS.
	Secure bool
	// Skip matches request paths that never touch sessions (static
	// resources, as Tomcat's ReplicationValve filter): the middleware
	// passes them straight through. Nil means DefaultSkip.
	Skip *regexp.Regexp
	// DisableRouteBinding turns the route binder off: a session id that
	// carries another node's route keeps it (Tomcat's JvmRouteBinderValve
	// disabled).
	DisableRouteBinding bool
	// Logger receives operational logs. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultSkip matches the paths of common static resources.
var DefaultSkip = regexp.MustCompile(`(?i)\.(css|js|mjs|map|png|jpe?g|gif|svg|ico|webp|woff2?|ttf|txt)$`)

// DefaultConfig returns the defaults: cookie JSESSIONID on path /, route
// binding on, static resources skipped.
func DefaultConfig() Config {
	return Config{CookieName: "JSESSIONID", CookiePath: "/", Skip: DefaultSkip}
}

// Sessions is the session middleware of one node. It is safe for
// concurrent use.
type Sessions struct {
	m   manager.Manager
	cfg Config
	log *slog.Logger

	rebinds, unavailable, commitErrors atomic.Int64
	// While a peer has failed but is not yet declared gone, every commit
	// and rebinding fails to reach it: one warning a second says so.
	commitWarn, rebindWarn everySecond
}

// everySecond lets a warning through at most once a second and counts
// the ones it held back, which the next one reports.
type everySecond struct {
	last       atomic.Int64 // Unix ns of the last one let through
	suppressed atomic.Int64
}

// allow reports whether to log now, and how many were held back since the
// last one logged.
func (e *everySecond) allow() (ok bool, suppressed int64) {
	now, last := time.Now().UnixNano(), e.last.Load()
	if now-last < int64(time.Second) || !e.last.CompareAndSwap(last, now) {
		e.suppressed.Add(1)
		return false, 0
	}
	return true, e.suppressed.Swap(0)
}

// Stats counts what the middleware, or a Store, did.
type Stats struct {
	Rebinds int64 // session ids rebound to this node's route
	// Unavailable counts sessions that could not be looked up: requests
	// the middleware answered 503, Store Get and Save calls that returned
	// the lookup's error. A lookup cut short by the client hanging up is
	// not counted, nor logged, and the middleware answers nothing.
	Unavailable  int64
	CommitErrors int64 // commits not confirmed by every peer
}

// Stats returns the middleware's counters.
func (ss *Sessions) Stats() Stats {
	return Stats{Rebinds: ss.rebinds.Load(), Unavailable: ss.unavailable.Load(), CommitErrors: ss.commitErrors.Load()}
}

// New returns the middleware for the sessions of m.
//
// cfg.Route must be the manager's route (an empty one takes it): with
// another, every session the manager issues would look like another
// node's and be rebound on every request.
func New(m manager.Manager, cfg Config) (*Sessions, error) {
	if r, ok := m.(interface{ Route() string }); ok && r.Route() != "" {
		switch {
		case cfg.Route == "":
			cfg.Route = r.Route()
		case cfg.Route != r.Route():
			return nil, fmt.Errorf("web: Config.Route %q is not the manager's route %q: set both to this node's route, or leave Config.Route empty", cfg.Route, r.Route())
		}
	}
	if cfg.Route == "" || strings.ContainsAny(cfg.Route, ". ;,/") {
		return nil, errors.New("web: Config.Route must be a non-empty name without '.', ';', ',', '/' or spaces")
	}
	if cfg.CookieName == "" {
		cfg.CookieName = "JSESSIONID"
	}
	if !ValidCookieName(cfg.CookieName) {
		return nil, fmt.Errorf("web: Config.CookieName %q is not a cookie name: use letters, digits and !#$%%&'*+-.^_`|~", cfg.CookieName)
	}
	if cfg.CookiePath == "" {
		cfg.CookiePath = "/"
	}
	if cfg.Skip == nil {
		cfg.Skip = DefaultSkip
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Sessions{m: m, cfg: cfg, log: log.With("component", "web", "route", cfg.Route)}, nil
}

// Manager returns the manager behind the middleware.
func (ss *Sessions) Manager() manager.Manager { return ss.m }

type ctxKey struct{}

// state is one request's view of its session.
type state struct {
	ss         *Sessions
	ctx        context.Context
	mu         sync.Mutex
	detached   context.Context // ctx without its cancellation, for commits
	s          *manager.Session
	originalID string // the id the request arrived with
	cookieID   string // the id the client holds; a cookie is sent when s's differs
	// known is an id of the session this request may reveal: the one it
	// found it by, made or renewed it to. A cookie is sent only for an id
	// of that base: not for one that another request's RenewID (a login)
	// gave the session meanwhile, nor for one found through the old id
	// within the grace period, which whoever holds the old id must not
	// learn.
	known     string
	cleared   bool // the session was invalidated: the cookie is deleted
	committed bool // the response has started and the session was committed
}

// Middleware finds the request's session, from the cookie or a
// ;jsessionid= path parameter, puts it in the request context for Get and
// Existing, and commits the session's changes before the response's first
// byte is written, and again, for changes made later, when the handler
// returns. A session id carrying another node's route is rebound to this
// node's route (see Config.DisableRouteBinding). Requests whose path
// matches Config.Skip pass straight through.
func (ss *Sessions) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Static paths pass straight through, tested without a
		// ;jsessionid= parameter (a URL-rewriting client's are as static).
		hasParam := strings.IndexByte(r.URL.Path, ';') >= 0
		if !hasParam && ss.skip(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		r, id := ss.requestID(r)
		if hasParam && ss.skip(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		// The request's state and its response writer, in one allocation.
		both := &struct {
			st state
			sw responseWriter
		}{st: state{ss: ss, originalID: id, cookieID: id}}
		st := &both.st
		ctx := context.WithValue(r.Context(), ctxKey{}, st)
		st.ctx = ctx
		// An empty first cookie (one a path or domain left behind, or a
		// deletion the browser kept) names no session either: the others
		// are read as after an unknown one.
		var s *manager.Session
		err := manager.ErrNotFound
		if id != "" {
			s, err = ss.find(ctx, id)
		}
		if errors.Is(err, manager.ErrNotFound) {
			if alt, as, aerr := ss.findOther(ctx, r, id); !errors.Is(aerr, manager.ErrNotFound) {
				s, err = as, aerr // found, or may exist: as for the first
				st.originalID, st.cookieID, id = alt, alt, alt
			}
		}
		switch {
		case err == nil:
			st.s = s
			if sameBase(s.ID(), id) {
				st.known = s.ID() // else found by an id renewed after a login (see known)
			}
		case errors.Is(err, manager.ErrNotFound):
		case r.Context().Err() != nil:
			return // the client hung up during the lookup: no one to answer
		default:
			// The session may exist (this node is still fetching its
			// state, or its holders did not answer in time): serving
			// the request without it would hand the user a new,
			// empty session. 503 lets the balancer or the client retry.
			ss.unavailable.Add(1)
			ss.log.Warn("session lookup failed", "session", manager.RedactID(id), "err", err)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "session temporarily unavailable", http.StatusServiceUnavailable)
			return
		}
		sw := &both.sw
		sw.ResponseWriter, sw.st = w, st
		// A handler that panics has changed the session here already:
		// its peers get the changes too (Tomcat's ReplicationValve
		// commits in a finally), and the panic goes on as it was.
		finished := false
		defer func() {
			if !finished {
				st.commit(nil)
			}
		}()
		next.ServeHTTP(sw, r.WithContext(ctx))
		sw.finish()
		finished = true
	})
}

// sameBase reports whether two session ids share their base: one session,
// whatever node each names.
func sameBase(a, b string) bool {
	ba, _ := manager.SplitID(a)
	bb, _ := manager.SplitID(b)
	return ba == bb
}

// defaultSkip is DefaultSkip as the package made it, which matches only a
// path whose last segment has an extension.
var defaultSkip = DefaultSkip

// skip reports whether path matches Config.Skip; a path without an
// extension is known not to match the default, and skips the regexp.
func (ss *Sessions) skip(path string) bool {
	if ss.cfg.Skip == defaultSkip && !strings.Contains(path[strings.LastIndexByte(path, '/')+1:], ".") {
		return false
	}
	return ss.cfg.Skip.MatchString(path)
}

// findOther finds the session of another of the request's cookies named
// like the session cookie, after the first, id, named none (or was empty,
// id ""): a browser sends a stale cookie of a parent domain or path first
// as readily as the live one. As in Tomcat, the first cookie that names a
// session wins.
func (ss *Sessions) findOther(ctx context.Context, r *http.Request, id string) (string, *manager.Session, error) {
	lines := r.Header["Cookie"]
	if len(lines) == 0 || len(lines) == 1 && strings.Count(lines[0], ss.cfg.CookieName+"=") < 2 {
		return "", nil, manager.ErrNotFound // one cookie at most: the usual case, parsed no further
	}
	for _, c := range r.CookiesNamed(ss.cfg.CookieName) {
		if c.Value == id || c.Value == "" {
			continue
		}
		if s, err := ss.find(ctx, c.Value); !errors.Is(err, manager.ErrNotFound) {
			return c.Value, s, err
		}
	}
	return "", nil, manager.ErrNotFound
}

// requestID returns the session id of the request and the request with
// any ;jsessionid= path parameter removed from its path (and from its
// encoded form, which keeps the rest of the path as it came: an encoded
// slash stays one).
//
// The parameter is read from the path as the client sent it: a ';' that
// came encoded (%3B) is part of a segment's name, not a parameter's start,
// as in Tomcat and in mod_proxy_balancer's stickysession.
func (ss *Sessions) requestID(r *http.Request) (*http.Request, string) {
	param := ";" + ss.cfg.CookieName + "="
	id := cookieValue(r, ss.cfg.CookieName)
	if indexFoldASCII(r.URL.Path, param) < 0 {
		return r, id
	}
	escaped, value, ok := cutParam(r.URL.EscapedPath(), param)
	if !ok {
		return r, id
	}
	path, err := url.PathUnescape(escaped)
	if err != nil {
		return r, id
	}
	if v, err := url.PathUnescape(value); err == nil {
		value = v
	}
	if id == "" {
		id = value
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = path, ""
	if r.URL.RawPath != "" {
		r2.URL.RawPath = escaped
	}
	return r2, id
}

// cutParam returns path without its first param (";jsessionid=") and the
// param's value, which ends at the next ';' or '/'.
func cutParam(path, param string) (rest, value string, ok bool) {
	i := indexFoldASCII(path, param)
	if i < 0 {
		return path, "", false
	}
	after := path[i+len(param):]
	end := strings.IndexAny(after, ";/")
	if end < 0 {
		end = len(after)
	}
	return path[:i] + after[end:], after[:end], true
}

// cookieValue returns the value of the request's first cookie named name,
// as r.Cookie reads it, or "". The usual Cookie header, one line of a few
// cookies where name's value is plain, is read in place, without making a
// Cookie of every cookie the browser sent; anything else (a quoted or
// unusual value, several lines, a great many cookies) is left to r.Cookie.
func cookieValue(r *http.Request, name string) string {
	lines := r.Header["Cookie"]
	if len(lines) != 1 || strings.Count(lines[0], ";") >= 64 {
		return parsedCookieValue(r, name)
	}
	for line := lines[0]; line != ""; {
		var part string
		part, line, _ = strings.Cut(line, ";")
		k, v, _ := strings.Cut(textproto.TrimString(part), "=")
		if textproto.TrimString(k) != name {
			continue
		}
		if plainCookieValue(v) {
			return v
		}
		return parsedCookieValue(r, name)
	}
	return ""
}

func parsedCookieValue(r *http.Request, name string) string {
	if c, err := r.Cookie(name); err == nil {
		return c.Value
	}
	return ""
}

// ValidCookieName reports whether name can name the session cookie: a
// token (RFC 7230), the only cookie name net/http sends and reads. New
// refuses any other.
func ValidCookieName(name string) bool {
	return name != "" && alnumOr(name, "!#$%&'*+-.^_`|~")
}

// plainCookieValue reports whether v holds only letters, digits and
// "-._~", which net/http reads as they are: a session id is one.
func plainCookieValue(v string) bool { return alnumOr(v, "-._~") }

// alnumOr reports whether every byte of s is an ASCII letter or digit or
// one of extra.
func alnumOr(s, extra string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// indexFoldASCII is the index of the first instance of sub in s, ASCII
// letters matched regardless of case, or -1. Unlike searching
// strings.ToLower(s), its index is a byte offset into s even when s is not
// valid UTF-8 (ToLower turns each invalid byte into three).
func indexFoldASCII(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if equalFoldASCII(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// find looks a session up and, unless route binding is off, rebinds an id
// that carries another node's route to this node's route. Two concurrent
// requests rebinding one session end with the same id: the base is kept.
// lookupFailed counts a session that could not be looked up (Unavailable),
// unless the lookup ended because the request's client hung up: that
// request is gone, not refused.
func (ss *Sessions) lookupFailed(ctx context.Context) {
	if ctx.Err() == nil {
		ss.unavailable.Add(1)
	}
}

func (ss *Sessions) find(ctx context.Context, id string) (*manager.Session, error) {
	s, err := ss.m.Find(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := ss.rebind(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// rebind renames s to this node's route, keeping its base, unless route
// binding is off or the route is this node's already. It returns an error
// only when s was not renamed (it is gone).
func (ss *Sessions) rebind(ctx context.Context, s *manager.Session) error {
	if ss.cfg.DisableRouteBinding {
		return nil
	}
	base, route := manager.SplitID(s.ID())
	if route == ss.cfg.Route {
		return nil
	}
	newID, err := ss.m.ChangeID(ctx, s, base)
	if newID == "" {
		return err
	}
	if err != nil {
		// Renamed here, but not every peer confirmed: typically the node
		// that just failed. The request goes on, as with a commit.
		if ok, n := ss.rebindWarn.allow(); ok {
			ss.log.Warn("rebinding not confirmed by every peer", "session", manager.RedactID(newID), "err", err, "suppressed", n)
		}
	}
	ss.rebinds.Add(1)
	ss.log.Info("session rebound to this node", "from", route, "session", manager.RedactID(newID))
	return nil
}

// Get returns the request's session, creating one if the request has none.
// Creating one fails once the response has started (ErrResponseStarted:
// its cookie could not be sent), and when the manager refuses
// (manager.ErrTooManySessions, manager.ErrClosed), so a handler checks the
// error. Get panics when the request did not pass through Middleware, or
// its path matched Config.Skip: a wiring mistake.
func Get(r *http.Request) (*manager.Session, error) {
	st := mustState(r)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s != nil && st.s.Valid() {
		return st.s, nil
	}
	if st.committed {
		return nil, ErrResponseStarted
	}
	s, err := st.ss.m.Create(st.ctx)
	if err != nil {
		return nil, err
	}
	st.s, st.cleared, st.known = s, false, s.ID()
	return s, nil
}

// Existing returns the request's session, or nil when it has none.
func Existing(r *http.Request) *manager.Session {
	st, _ := r.Context().Value(ctxKey{}).(*state)
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s == nil || !st.s.Valid() {
		return nil
	}
	return st.s
}

// OriginalID returns the session id the request arrived with, before any
// route rebinding, or "".
func OriginalID(r *http.Request) string {
	st, _ := r.Context().Value(ctxKey{}).(*state)
	if st == nil {
		return ""
	}
	return st.originalID
}

// RenewID gives the request's session a new random id, replicated like any
// id change: call it after a login, against session fixation, and before
// writing the response, which carries the new id's cookie
// (ErrResponseStarted otherwise, and the id is kept). A request without a
// session gets manager.ErrNotFound. A renewal that some peer did not
// confirm is done, as a commit is: counted and logged, not returned.
// Only this request's response carries the new id: another request of the
// session that is still running (one that arrived with the old id, which
// may be an attacker's) never sends it.
func RenewID(r *http.Request) (string, error) {
	st := mustState(r)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s == nil {
		return "", manager.ErrNotFound
	}
	if st.committed {
		return "", ErrResponseStarted
	}
	id, err := st.ss.m.ChangeID(st.ctx, st.s, "")
	if id == "" {
		return "", err
	}
	st.known = id
	if err != nil {
		// Renewed here, but not every peer confirmed it: the login goes
		// on, as a commit does.
		st.ss.notConfirmed("session id renewal not confirmed by every peer", id, err)
	}
	return id, nil
}

// Commit commits the request's session now, as the middleware does before
// the response's first byte, and returns a header holding the session's
// cookie when the client needs one. It is for a response the middleware
// does not write: the handshake of a WebSocket that the application's own
// gorilla/websocket Upgrader answers takes the header as Upgrade's
// responseHeader.
func Commit(r *http.Request) http.Header {
	h := http.Header{}
	mustState(r).commit(h)
	return h
}

// Invalidate destroys the request's session on every node and deletes its
// cookie; a cookie naming no session is deleted too. When the session could not be destroyed (its holders did not
// answer, with the Backup manager, or this node is still fetching its
// sessions), it returns the error and the session and its cookie stay. An invalidation that some peer did not confirm is
// done, as a commit is: counted and logged, not returned.
func Invalidate(r *http.Request) error {
	st := mustState(r)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s == nil {
		// No session to destroy (the cookie names one that expired or
		// was destroyed elsewhere): the stale cookie goes all the same,
		// as a logout promises.
		st.cleared = true
		return nil
	}
	if err := st.ss.invalidate(st.ctx, st.s.ID()); err != nil {
		return err
	}
	st.s, st.cleared = nil, true
	return nil
}

// invalidate destroys the session of id everywhere. It returns nil when
// the session is gone from this node: it was, or it is now, even if some
// peer did not confirm it (counted and logged, as a failed commit).
func (ss *Sessions) invalidate(ctx context.Context, id string) error {
	err := ss.m.Invalidate(ctx, id)
	switch {
	case err == nil, errors.Is(err, manager.ErrNotFound):
		return nil
	case errors.Is(err, manager.ErrNotConfirmed):
		ss.notConfirmed("session invalidation not confirmed by every peer", id, err)
		return nil
	default:
		ss.lookupFailed(ctx)
		return fmt.Errorf("web: session %s: %w", manager.RedactID(id), err)
	}
}

func mustState(r *http.Request) *state {
	st, _ := r.Context().Value(ctxKey{}).(*state)
	if st == nil {
		panic("web: request did not pass through Sessions.Middleware, or its path matched Config.Skip (by default, paths of static files such as .css, .js, .txt)")
	}
	return st
}

// commit hands the session's changes to the manager and sets the cookie
// header when the client's id is stale. Called before the first byte of
// the response and after the handler.
func (st *state) commit(h http.Header) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s != nil {
		// A client that hangs up does not cut the commit short: the
		// changes are this node's already, and its peers must have them
		// too. The manager's send timeout bounds the wait.
		if st.detached == nil {
			st.detached = context.WithoutCancel(st.ctx)
		}
		_ = st.ss.commit(st.detached, st.s) // counted and logged; the response goes on
		if id := st.s.ID(); id != st.cookieID && sameBase(id, st.known) && h != nil {
			h.Add("Set-Cookie", st.ss.cookie(id, 0).String())
			st.cookieID = id
		}
	} else if st.cleared && st.cookieID != "" && h != nil {
		h.Add("Set-Cookie", st.ss.cookie("", -1).String())
		st.cookieID = ""
	}
	if h != nil {
		st.committed = true
	}
}

// ErrResponseStarted is returned by Get for a request without a session,
// and by RenewID, once the response has started: the cookie that carries
// the new id can no longer be sent, so the client would never present it
// and the session would be lost.
var ErrResponseStarted = errors.New("web: the response has started, so a new session id cannot reach the client: call Get or RenewID before writing the response")

// commit commits s. An error means the changes are this node's but some
// peer did not confirm them (it just died, or timed out): it is counted,
// logged and returned, and the middleware's request goes on. ctx must not
// be the request's own: a client that hangs up must not cut the commit
// short (the manager's send timeout bounds the wait), so callers pass it
// WithoutCancel.
func (ss *Sessions) commit(ctx context.Context, s *manager.Session) error {
	err := ss.m.Commit(ctx, s)
	if err != nil {
		ss.notConfirmed("session commit failed", s.ID(), err)
	}
	return err
}

// notConfirmed counts, and logs at a bounded rate, a change to the session
// of id that is done on this node but that some peer did not confirm (or
// a commit that failed): the request goes on.
func (ss *Sessions) notConfirmed(msg, id string, err error) {
	ss.commitErrors.Add(1)
	if ok, n := ss.commitWarn.allow(); ok {
		ss.log.Warn(msg, "session", manager.RedactID(id), "err", err, "suppressed", n)
	}
}

func (ss *Sessions) cookie(id string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: ss.cfg.CookieName, Value: id, Path: ss.cfg.CookiePath, Domain: ss.cfg.CookieDomain,
		MaxAge: maxAge, HttpOnly: true, Secure: ss.cfg.Secure, SameSite: http.SameSiteLaxMode,
	}
}

// responseWriter commits the session (or, behind Store.Middleware, sets
// the cookies of rebound sessions) just before the response starts.
type responseWriter struct {
	http.ResponseWriter
	st      committer
	started bool
}

// committer is what a responseWriter calls: commit(h) before the response
// starts, with its header, and commit(nil) once the handler returned after
// it started (the header can no longer change then).
type committer interface{ commit(h http.Header) }

func (w *responseWriter) start() {
	if !w.started {
		w.started = true
		w.st.commit(w.Header())
	}
}

// finish commits what the handler changed, once it returned: with the
// header when the response has not started, without otherwise.
func (w *responseWriter) finish() {
	if !w.started {
		w.st.commit(w.Header())
		return
	}
	w.st.commit(nil)
}

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code >= 200 || code == http.StatusSwitchingProtocols {
		w.start() // an informational response (103 Early Hints) is not the response
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	w.start()
	return w.ResponseWriter.Write(b)
}

// Hijack commits the session, then hands over the connection, for an
// application's own WebSocket endpoint behind the middleware (gorilla's
// Upgrader asks for an http.Hijacker). After a hijack the upgrader writes
// its own response, so a session created by the upgrading request itself
// gets no cookie: pass Upgrade the header Commit returns, or let Hub do
// it.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.start()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Push starts an HTTP/2 server push through the writer the middleware
// wraps, as http.Pusher, or returns http.ErrNotSupported when that writer
// cannot push (HTTP/1, or a client that disabled push).
func (w *responseWriter) Push(target string, opts *http.PushOptions) error {
	if p, ok := w.ResponseWriter.(http.Pusher); ok {
		return p.Push(target, opts)
	}
	return http.ErrNotSupported
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush commits, then flushes, through any writers the middleware wraps.
func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError is Flush that returns the flush's error, as
// http.ResponseController's Flush does: a streaming handler learns that
// its client went away, or that no writer below can flush
// (http.ErrNotSupported).
func (w *responseWriter) FlushError() error {
	w.start()
	return http.NewResponseController(w.ResponseWriter).Flush()
}
