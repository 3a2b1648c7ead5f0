package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/gorilla/sessions"
)

// Store is a gorilla/sessions Store backed by a Cohort manager: an
// application written for gorilla/sessions switches to replicated sessions
// by replacing its store constructor. A gorilla session's Values are the
// Cohort session's attributes, so keys must be strings and values of
// registered types (see manager.Types).
//
// Unlike gorilla's own stores, the cookie is not signed: its value is the
// session id, <id>.<route>, which balancers read to route requests (the id
// is 192 random bits, so it needs no signature). Options.MaxAge < 0
// invalidates the session on every node. Options.MaxAge > 0 is the
// cookie's lifetime only: how long a session lives unused is the
// manager's Config.MaxInactive, or the session's own
// (manager.Session.SetMaxInactive), on every node. Store is safe for
// concurrent use.
//
// Values keep their types across nodes when the types are registered
// (manager.Types), as gob needs them registered for gorilla's own stores.
// Inside a value of an interface type, such as the []interface{} that
// holds flashes, a string, bool or float64 comes back as itself, but an
// int comes back as an int64 and a struct as a map[string]any: store
// flashes as strings, or a registered struct in a value of its own.
//
// Route binding: a session whose cookie names another node's route (the
// balancer failed the user over) is renamed to this node's route only
// where the new cookie reaches the client, else the balancer would go on
// sending the user to the old route, whose node would rename it back, on
// every request. Save renames it and sets the cookie. Get renames it only
// behind [Store.Middleware], which sets the cookie even when the handler
// never calls Save (a request that only reads); without the middleware, a
// request that only reads leaves the id as it is. Wrap the handlers in
// Middleware so that a failed-over user sticks to its new node at once.
type Store struct {
	ss *Sessions
	// Options are the defaults for new sessions' cookies: Path "/",
	// HttpOnly, SameSite Lax, no Max-Age (a browser-session cookie).
	Options *sessions.Options
}

// readKey is the request context key of what Get read (reads).
type readKey struct{}

// reads holds, for one request, what New read of each gorilla session it
// loaded, or what Save last stored of it: Save writes only what the
// handler changed since. It lives in the request's context, as gorilla's
// registry of the request's sessions does.
type reads struct {
	mu sync.Mutex
	of map[*sessions.Session]readValues
}

// readValues are the values of a Cohort session as one gorilla session
// last read or stored them: copies of their own, never handed out.
type readValues struct {
	id     string // the Cohort session's id then
	values map[string]any
}

// remember records values as what gs last read or stored of the Cohort
// session of id. Like sessions.GetRegistry, it puts what it keeps in r's
// context, in place.
func remember(r *http.Request, gs *sessions.Session, id string, values map[string]any) {
	rs, _ := r.Context().Value(readKey{}).(*reads)
	if rs == nil {
		rs = &reads{of: make(map[*sessions.Session]readValues, 1)}
		*r = *r.WithContext(context.WithValue(r.Context(), readKey{}, rs))
	}
	rs.mu.Lock()
	rs.of[gs] = readValues{id: id, values: values}
	rs.mu.Unlock()
}

// readOf returns what gs last read or stored of s in the request r, or nil
// when it holds nothing of s (a session New did not load, or another
// session, or a request derived from r before Get).
func readOf(r *http.Request, gs *sessions.Session, s *manager.Session) map[string]any {
	rs, _ := r.Context().Value(readKey{}).(*reads)
	if rs == nil {
		return nil
	}
	rs.mu.Lock()
	rv, ok := rs.of[gs]
	rs.mu.Unlock()
	if ok && sameBase(rv.id, s.ID()) {
		return rv.values
	}
	return nil
}

var _ sessions.Store = (*Store)(nil)

// NewStore returns a Store for the sessions of m. The cookies' defaults
// come from cfg's CookiePath, CookieDomain and Secure; cfg.CookieName is
// unused: gorilla names cookies after sessions.
func NewStore(m manager.Manager, cfg Config) (*Store, error) {
	ss, err := New(m, cfg)
	if err != nil {
		return nil, err
	}
	return &Store{ss: ss, Options: &sessions.Options{
		Path: ss.cfg.CookiePath, Domain: cfg.CookieDomain, HttpOnly: true, Secure: cfg.Secure, SameSite: http.SameSiteLaxMode,
	}}, nil
}

// MaxAge sets Options.MaxAge, the lifetime of new sessions' cookies in
// seconds, as gorilla's stores' MaxAge does. It does not change how long
// a session lives unused on the nodes (see Store).
func (st *Store) MaxAge(age int) { st.Options.MaxAge = age }

// Stats returns the Store's counters: its own, apart from any
// middleware's (Sessions.Stats).
func (st *Store) Stats() Stats { return st.ss.Stats() }

// Get returns the session of name for r, cached for the request in
// gorilla's registry.
func (st *Store) Get(r *http.Request, name string) (*sessions.Session, error) {
	return sessions.GetRegistry(r).Get(st, name)
}

// New returns the session of name for r without caching it: the Cohort
// session its cookie names (of several cookies of the name, the first
// that names one, as through the middleware), or a new, empty session
// when there is none.
// Behind [Store.Middleware], and before the response has started, a
// session that came from another node is rebound to this node's route and
// the response sets its new cookie; otherwise Save rebinds it. It never
// returns a nil session. When the session may exist but could not be
// looked up (this node is still receiving the cluster's state, or the
// session's holders did not answer in time), it returns a new session and
// the error: saving that session would replace the user's, so answer such
// a request with an error (503) instead, as the middleware does.
//
// A request that only reads its session counts as an access on every
// node, as through the middleware, without a Save.
func (st *Store) New(r *http.Request, name string) (*sessions.Session, error) {
	gs := sessions.NewSession(st, name)
	opts := *st.Options
	gs.Options = &opts
	gs.IsNew = true
	// Of several cookies of the name (a stale or empty one of a parent
	// domain or path sent first), the first that names a session is the
	// request's, as through the middleware.
	var s *manager.Session
	id, err := "", error(manager.ErrNotFound)
	for _, id = range cookieIDs(r, name) {
		if s, err = st.lookup(r, name, id, gs.Options); !errors.Is(err, manager.ErrNotFound) {
			break
		}
	}
	if errors.Is(err, manager.ErrNotFound) {
		return gs, nil // none, unknown or expired: a new session
	}
	if err != nil {
		st.ss.lookupFailed(r.Context())
		return gs, fmt.Errorf("web: session %s: %w", manager.RedactID(id), err)
	}
	// A read-only commit only queues the access for the peers; changes
	// wait for Save.
	if !s.Changed() {
		_ = st.ss.commit(context.WithoutCancel(r.Context()), s)
	}
	gs.ID, gs.IsNew = s.ID(), false
	if !sameBase(s.ID(), id) {
		gs.ID = id // renewed after a login: the old id's holder must not learn the new one
	}
	// Copies, all read at one moment: a handler that changes a value in
	// place (a map, a slice, a struct through a pointer) changes only its
	// copy, so Save sees the difference and replicates it.
	read := s.GetCopies()
	for k, v := range read {
		gs.Values[k] = v
	}
	// What Save compares the Values with.
	for k, v := range read {
		keepRead(read, s, k, v)
	}
	remember(r, gs, s.ID(), read)
	return gs, nil
}

// keepRead records in read what Save is to compare the value v of name
// with: v itself when a handler cannot change it in place, else a copy of
// the session's own.
func keepRead(read map[string]any, s *manager.Session, name string, v any) {
	if !immutable(reflect.TypeOf(v)) {
		c, ok := s.GetCopy(name)
		if !ok {
			delete(read, name)
			return
		}
		v = c
	}
	read[name] = v
}

// immutables caches immutable's answers by type.
var immutables sync.Map // reflect.Type -> bool

// immutable reports whether a value of type t, held in an interface, can
// only be replaced, not changed in place: it holds no pointer, map, slice,
// channel, function or interface (a time.Time's location aside, which
// never changes).
func immutable(t reflect.Type) bool {
	if t == nil {
		return true
	}
	if v, ok := immutables.Load(t); ok {
		return v.(bool)
	}
	var ok bool
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		ok = true
	case reflect.Array:
		ok = immutable(t.Elem())
	case reflect.Struct:
		ok = t == reflect.TypeFor[time.Time]()
		if !ok {
			ok = true
			for i := range t.NumField() {
				if !immutable(t.Field(i).Type) {
					ok = false
					break
				}
			}
		}
	}
	immutables.Store(t, ok)
	return ok
}

// cookieIDs returns the values of r's cookies of name, in the order the
// browser sent them, leaving out empty ones.
func cookieIDs(r *http.Request, name string) []string {
	if lines := r.Header["Cookie"]; len(lines) == 1 && strings.Count(lines[0], name+"=") < 2 {
		// One cookie of the name at most, the usual case: read in place.
		if id := cookieValue(r, name); id != "" {
			return []string{id}
		}
		return nil
	}
	var ids []string
	for _, c := range r.CookiesNamed(name) {
		if c.Value != "" {
			ids = append(ids, c.Value)
		}
	}
	return ids
}

// named returns the id of the first of r's cookies of name whose session
// this node does not answer not found for, the one New would have
// loaded, and the lookup's error; "" when every one is unknown or gone.
func (st *Store) named(ctx context.Context, r *http.Request, name string) (string, error) {
	for _, id := range cookieIDs(r, name) {
		if _, err := st.ss.m.Find(ctx, id); !errors.Is(err, manager.ErrNotFound) {
			return id, err
		}
	}
	return "", nil
}

// lookup finds the session of id, the value of the cookie of name, for
// New. It rebinds the session to this node's route only when its new
// cookie can reach the client: through Middleware, before the response
// has started. The cookie is then queued for the response, as it is for a
// cookie whose route is stale.
func (st *Store) lookup(r *http.Request, name, id string, opts *sessions.Options) (*manager.Session, error) {
	ctx := r.Context()
	rc, _ := ctx.Value(storeCookiesKey{}).(*storeCookies)
	if rc == nil {
		return st.ss.m.Find(ctx, id)
	}
	// Held while rebinding: the response does not start in between, to
	// go out without the cookie.
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.started {
		return st.ss.m.Find(ctx, id)
	}
	s, err := st.ss.find(ctx, id)
	if err == nil {
		if sid := s.ID(); sid != id && sameBase(sid, id) {
			rc.set(sessions.NewCookie(name, sid, opts))
		}
	}
	return s, err
}

// Middleware lets Get rebind a session that came from another node (see
// Store) and send its new cookie even when the handler does not call
// Save: the cookie is set just before the response's first byte, or when
// the handler returns. A Save of the session sets the cookie itself, and
// the middleware then sets none for it. Wrap every handler that calls Get
// in it.
func (st *Store) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The cookies and the response writer, in one allocation.
		both := &struct {
			rc storeCookies
			sw responseWriter
		}{}
		sw := &both.sw
		sw.ResponseWriter, sw.st = w, &both.rc
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), storeCookiesKey{}, &both.rc)))
		sw.finish()
	})
}

type storeCookiesKey struct{}

// storeCookies are one request's cookies of the sessions that Get
// rebound, which Store.Middleware sets before the response starts.
type storeCookies struct {
	mu      sync.Mutex
	cookies []*http.Cookie
	started bool // the response has started: a cookie can no longer be set
}

// set queues c, in place of any cookie of its name. rc.mu is held.
func (rc *storeCookies) set(c *http.Cookie) {
	rc.cookies = slices.DeleteFunc(rc.cookies, func(o *http.Cookie) bool { return o.Name == c.Name })
	rc.cookies = append(rc.cookies, c)
}

// drop forgets the cookie of name: Save sets it.
func (rc *storeCookies) drop(name string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.cookies = slices.DeleteFunc(rc.cookies, func(o *http.Cookie) bool { return o.Name == name })
}

// commit sets the queued cookies in h, before the response starts.
func (rc *storeCookies) commit(h http.Header) {
	if h == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, c := range rc.cookies {
		if v := c.String(); v != "" {
			h.Add("Set-Cookie", v)
		}
	}
	rc.cookies, rc.started = nil, true
}

// responseStarted reports whether, behind Store.Middleware, the response
// has started: a cookie set now would not reach the client, so the
// session must not be rebound (see Store).
func responseStarted(r *http.Request) bool {
	rc, _ := r.Context().Value(storeCookiesKey{}).(*storeCookies)
	if rc == nil {
		return false
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.started
}

// setCookie sets the cookie of a saved session, in place of any that
// Middleware would set for it.
func setCookie(r *http.Request, w http.ResponseWriter, c *http.Cookie) {
	if rc, _ := r.Context().Value(storeCookiesKey{}).(*storeCookies); rc != nil {
		rc.drop(c.Name)
	}
	http.SetCookie(w, c)
}

// Save stores gs's Values in its Cohort session, commits them (replicating
// as the manager's send mode says) and sets the cookie. With
// Options.MaxAge < 0 it invalidates the session everywhere and deletes the
// cookie.
//
// Save writes what the handler changed in the Values since Get read the
// session, or since the last Save of gs: the values it set, changed or
// deleted. A value it left as it read it stays as the session holds it,
// which another request of the user may have changed meanwhile: a page's
// request that saves what it read does not undo a login, a logout or a
// cart change saved by another request at the same time, as each
// middleware request commits only what it changed. Two requests that
// change the same value still end with the last one's. What Get read is
// kept in the request's context, as gorilla's registry is: a Save given a
// request derived from r before Get (r.WithContext) cannot tell what
// changed, and writes all of the Values, as gorilla's own stores do.
//
// Save stores all of the Values or none: when one cannot be stored (a key
// that is not a string, a value of a type not registered, a session that
// would grow too large to replicate; a *manager.NotDistributableError),
// Save returns the error and the session is as it was. The first Save of
// a session checks the Values before it creates the session, so a
// failing one leaves none behind (with a manager that cannot check values
// first, such as a wrapper of one, the session it created is invalidated
// again).
//
// A session that may exist but cannot be looked up (as for New) is not
// replaced: Save returns the error and sets no cookie. The same holds for
// a gs that New returned with such an error (gorilla's documented idiom,
// `session, _ := store.Get(r, name)`, ignores it): it is empty, and Save
// refuses to put it in place of the session the request's cookie names,
// unless that session is gone. A logout (MaxAge < 0) through such a gs
// still destroys the sessions the request's cookies name.
//
// A Save of a session that another request invalidated since Get (a
// logout in another tab) saves nothing and deletes the cookie, returning
// nil: making a new session of its values would log the user back in. A
// logout that some peer did not confirm is done, as an unconfirmed commit
// is (below); one that could not destroy the session returns the error
// and keeps the cookie.
//
// A commit that some peer did not confirm (it has just failed and is not
// yet declared gone, or it hangs) is kept on this node, its cookie set,
// and counted ([Store.Stats] CommitErrors) and logged, as through the
// middleware, and Save returns nil: the session is saved, the live peers have it or will,
// and a gorilla handler that answers a Save error with 500 must not fail
// every write of the seconds a node takes to be declared gone.
func (st *Store) Save(r *http.Request, w http.ResponseWriter, gs *sessions.Session) error {
	ctx := r.Context()
	m := st.ss.m
	if gs.Options.MaxAge < 0 {
		// Without a session loaded by Get (it could not be looked up, or
		// it is gone), the sessions the request's cookies name.
		ids := []string{gs.ID}
		if gs.ID == "" {
			ids = cookieIDs(r, gs.Name())
		}
		for _, id := range ids {
			if err := st.ss.invalidate(ctx, id); err != nil {
				return err // not destroyed: the session and its cookie stay
			}
		}
		gs.ID = ""
		setCookie(r, w, sessions.NewCookie(gs.Name(), "", gs.Options))
		return nil
	}
	if gs.ID == "" {
		// Get did not load a session. It may have failed to (gorilla's
		// documented idiom ignores its error): gs is empty, and saving
		// it would replace the user's session. Only one that is gone is
		// replaced.
		if unloaded, err := st.named(ctx, r, gs.Name()); unloaded != "" {
			st.ss.lookupFailed(ctx)
			if err == nil {
				err = errors.New("it exists but Get could not load it; answer 503 so that the client retries")
			}
			return fmt.Errorf("web: session %s not replaced: %w", manager.RedactID(unloaded), err)
		}
	}
	set := make(map[string]any, len(gs.Values))
	for k, v := range gs.Values {
		name, ok := k.(string)
		if !ok {
			return &manager.NotDistributableError{Key: fmt.Sprint(k), Type: fmt.Sprintf("%T key", k),
				Err: errors.New("session keys must be strings")}
		}
		if v != nil { // nil is stored as no value: removed, read back as absent
			set[name] = v
		}
	}
	var s *manager.Session
	if gs.ID != "" {
		var err error
		// Gone since Get (invalidated by another request of the user, or
		// expired): a new session takes its place. Otherwise it may exist,
		// and a new one would replace the user's.
		if s, err = m.Find(ctx, gs.ID); err != nil && !errors.Is(err, manager.ErrNotFound) {
			st.ss.lookupFailed(ctx)
			return fmt.Errorf("web: session %s: %w", manager.RedactID(gs.ID), err)
		}
		if errors.Is(err, manager.ErrRecentlyInvalidated) {
			// Logged out by another request since Get: saving a new
			// session of gs's values would log the user back in.
			gone := *gs.Options
			gone.MaxAge = -1
			gs.ID = ""
			setCookie(r, w, sessions.NewCookie(gs.Name(), "", &gone))
			return nil
		}
	}
	// Reached through an id renewed after a login: whoever holds that id
	// must not learn the new one, so the cookie stays as it is.
	renewed := s != nil && !sameBase(s.ID(), gs.ID)
	created := s == nil
	if created {
		if c, ok := m.(interface{ CheckAttributes(map[string]any) error }); ok {
			if err := c.CheckAttributes(set); err != nil {
				return err
			}
		}
		var err error
		if s, err = m.Create(ctx); err != nil {
			return err
		}
	}
	// Only what the handler changed since Get read the session (or the
	// last Save stored it) is written: a value another request of the
	// user changed meanwhile (a login, a logout, an item added to the
	// cart in another tab) stays as that request left it. Without such a
	// reading the Values are the whole session.
	var remove []string
	var read map[string]any
	if !created {
		read = readOf(r, gs, s)
	}
	if read != nil {
		for name, old := range read {
			if v := gs.Values[name]; v == nil {
				remove = append(remove, name) // deleted since
			} else if reflect.DeepEqual(v, old) {
				delete(set, name) // unchanged: the session's value stays
			}
		}
		for k, v := range gs.Values {
			if _, had := read[k.(string)]; v == nil && !had {
				remove = append(remove, k.(string))
			}
		}
	} else if !created {
		for _, name := range s.Names() {
			if _, ok := set[name]; !ok {
				remove = append(remove, name)
			}
		}
	}
	// Copies, compared by their encoded form: a value the handler changes
	// in place after this Save is a change at the next one, and the
	// session never holds the handler's own object.
	if _, err := s.SetCopies(set, remove); err != nil {
		if created {
			_ = m.Invalidate(context.WithoutCancel(ctx), s.ID())
		}
		return err
	}
	// What a later Save of gs compares with: what was read, as changed
	// now.
	stored := read
	if stored == nil {
		stored = make(map[string]any, len(set))
	}
	for _, name := range remove {
		delete(stored, name)
	}
	for name, v := range set {
		keepRead(stored, s, name, v)
	}
	remember(r, gs, s.ID(), stored)
	if !renewed && !responseStarted(r) {
		// Another node's route: the cookie set below names this node's.
		if err := st.ss.rebind(ctx, s); err != nil {
			return fmt.Errorf("web: session %s: %w", manager.RedactID(s.ID()), err)
		}
	}
	_ = st.ss.commit(context.WithoutCancel(ctx), s) // counted and logged; the session is saved
	if !renewed {
		gs.ID, gs.IsNew = s.ID(), false
		setCookie(r, w, sessions.NewCookie(gs.Name(), gs.ID, gs.Options))
	}
	return nil
}
