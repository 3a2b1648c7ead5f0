package manager

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unique"
)

// ErrInvalidated is returned by Session methods once the session has been
// invalidated or has expired.
var ErrInvalidated = errors.New("manager: session invalidated")

// Session is one user's session: attributes plus the bookkeeping that
// expiry and replication need. Its methods are safe for concurrent use by
// the requests of one user; each takes the session's lock briefly and none
// blocks on the network.
type Session struct {
	host *host // the manager's shared state: types, listeners, filter

	mu          sync.Mutex
	id          string
	created     int64 // Unix ns: a third of a time.Time, on every session held
	lastAccess  int64 // Unix ns
	maxInactive time.Duration
	principal   string
	attrs       attrList
	rev         Rev    // the committed change this state is at
	owner       string // Backup manager: route of the primary, as this node knows it
	term        uint64 // Backup manager: the owner's claim (claim, yieldTo)
	isNew       bool   // created by this request; cleared by Commit
	valid       bool
	heard       bool // lastAccess is a peer's report, not a request here
	// stored says that the session is in its manager's table; counted,
	// that host.primaries counts it (recount).
	stored, counted bool
	pending         pending // changes since the last Commit
}

// attrEntry is one named attribute: 48 bytes, the name a handle to its
// interned copy.
type attrEntry struct {
	name unique.Handle[string]
	attr
}

// attrList holds a session's attributes sorted by name. A session has few
// attributes, and one slice costs far less memory than a map of pointers:
// on a replica holding many sessions the difference is most of the
// overhead over the attributes' encoded size.
type attrList []attrEntry

// index returns where name is, or would be inserted, and whether it is
// there. Most sessions hold a handful of attributes, which a scan finds
// sooner than a binary search through a comparison function.
func (l attrList) index(name string) (int, bool) {
	if len(l) > 8 {
		return slices.BinarySearchFunc(l, name, func(e attrEntry, n string) int { return strings.Compare(e.name.Value(), n) })
	}
	for i := range l {
		if v := l[i].name.Value(); v >= name {
			return i, v == name
		}
	}
	return len(l), false
}

// get returns the attribute of name, a pointer valid until the list
// changes.
func (l attrList) get(name string) (*attr, bool) {
	i, ok := l.index(name)
	if !ok {
		return nil, false
	}
	return &l[i].attr, true
}

// set stores a under name and returns the attribute it replaced, if any.
func (l *attrList) set(name string, a attr) (old attr, had bool) {
	i, ok := l.index(name)
	if ok {
		old = (*l)[i].attr
		(*l)[i].attr = a
		return old, true
	}
	*l = slices.Insert(*l, i, attrEntry{name: unique.Make(name), attr: a})
	return attr{}, false
}

// del removes the attribute of name and returns it, if there was one.
func (l *attrList) del(name string) (old attr, had bool) {
	i, ok := l.index(name)
	if !ok {
		return attr{}, false
	}
	old = (*l)[i].attr
	*l = slices.Delete(*l, i, i+1)
	return old, true
}

func (l attrList) names() []string {
	out := make([]string, len(l))
	for i, e := range l {
		out[i] = e.name.Value()
	}
	return out
}

// sortAttrs sorts a list built out of order.
func sortAttrs(l attrList) {
	slices.SortFunc(l, func(a, b attrEntry) int { return strings.Compare(a.name.Value(), b.name.Value()) })
}

// internName returns the canonical copy of a name that many sessions hold
// (a route): each would otherwise hold its own copy of the same string.
func internName(name string) string { return unique.Make(name).Value() }

// attr is one attribute. To keep one copy in memory, it holds either its
// wire form (received from a peer, not yet read) or its value (set here,
// or read); both only between Set and the next commit. A nil value keeps
// its wire form. Local-only attributes (Config.LocalOnly) have no wire
// form.
type attr struct {
	raw []byte // Types.encode form, or nil
	val any    // the decoded value, or nil
	// size is len(raw) when raw was dropped after a commit (Set's values,
	// which their caller may change in place, are encoded again when
	// needed), so that the session's size bound still counts them.
	size int32
}

// encodedLen is the attribute's size in a replication message, as last
// encoded; 0 for a local-only one.
func (a *attr) encodedLen() int {
	if a.raw != nil {
		return len(a.raw)
	}
	return int(a.size)
}

// known reports whether val holds the value.
func (a *attr) known() bool { return a.val != nil || a.raw == nil }

// wire returns the attribute's wire form, encoding its value if needed.
func (a *attr) wire(t *Types) ([]byte, error) {
	if a.raw != nil {
		return a.raw, nil
	}
	return t.encode(a.val)
}

// pending is what changed since the last Commit: the last operation per
// attribute, and the session-level fields.
type pending struct {
	ops         []Op           // the last operation per attribute: its new wire form, nil when removed
	index       map[string]int // position in ops by name, once ops is long
	principal   bool
	maxInactive bool
	invalidated bool
}

func (p *pending) empty() bool {
	return len(p.ops) == 0 && !p.principal && !p.maxInactive && !p.invalidated
}

// newID returns a session id base: 24 random bytes (192 bits) from
// crypto/rand, URL-safe base64 without padding.
func newID() string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// SplitID splits a session id into its base and its route:
// "abc.node1" gives "abc", "node1". An id without a route has an empty one.
func SplitID(id string) (base, route string) {
	if i := strings.LastIndexByte(id, '.'); i >= 0 {
		return id[:i], id[i+1:]
	}
	return id, ""
}

// JoinID builds an id from a base and a route.
func JoinID(base, route string) string {
	if route == "" {
		return base
	}
	return base + "." + route
}

// ID returns the session id, <base>.<route>. It is a bearer credential: log
// it through [RedactID].
func (s *Session) ID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// RedactID is a session id as a log value that shows only its route and the
// first 4 characters of its base.
type RedactID string

// LogValue implements slog.LogValuer.
func (id RedactID) LogValue() slog.Value {
	base, route := SplitID(string(id))
	if len(base) > 4 {
		base = base[:4] + "…"
	}
	return slog.StringValue(JoinID(base, route))
}

func (s *Session) ownerRoute() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner
}

func (s *Session) setOwner(route string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = route
	s.recount()
}

// setStored records whether s is in its manager's table. Called with
// s.mu held, by the store, with the store's lock held too.
func (s *Session) setStored(stored bool) {
	s.stored = stored
	s.recount()
}

// recount keeps host.primaries equal to the number of stored sessions
// whose primary is this node (no owner, or this node's route). Called
// with s.mu held whenever s.stored or s.owner changes.
func (s *Session) recount() {
	want := s.stored && (s.owner == "" || s.owner == s.host.route)
	if want == s.counted {
		return
	}
	s.counted = want
	if want {
		s.host.primaries.Add(1)
	} else {
		s.host.primaries.Add(-1)
	}
}

// Claim weights: a node the user was sent to outweighs a surviving backup
// that a repair picks, when both claim a session from the same term.
const (
	repairClaim = 1
	serveClaim  = 2
)

// claim makes route the primary of s with a claim of the given weight
// over the newest term it knows (its own, or seen in a copy), and returns
// the claim's term, which the takeover message carries.
func (s *Session) claim(route string, seen, weight uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = route
	s.term = max(s.term, seen) + weight
	s.recount()
	return s.term
}

// yieldTo records route's claim of term and reports whether it stands:
// it does unless the claim known outranks it. Claims are ordered by term,
// then by route, so that every holder of a session that two nodes claimed
// at once names the same primary, whatever order the claims reach it in.
func (s *Session) yieldTo(route string, term uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if route != s.owner && (term < s.term || term == s.term && route < s.owner) {
		return false
	}
	s.owner, s.term = route, max(s.term, term)
	s.recount()
	return true
}

// ownerClaim returns the owner and the term of its claim.
func (s *Session) ownerClaim() (string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner, s.term
}

// Created returns when the session was created.
func (s *Session) Created() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Unix(0, s.created)
}

// LastAccess returns when the session was last used.
func (s *Session) LastAccess() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Unix(0, s.lastAccess)
}

// MaxInactive returns how long the session lives without being used.
func (s *Session) MaxInactive() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInactive
}

// SetMaxInactive changes how long the session lives without being used.
func (s *Session) SetMaxInactive(d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.valid {
		return ErrInvalidated
	}
	if d != s.maxInactive {
		s.maxInactive = d
		s.pending.maxInactive = true
	}
	return nil
}

// Principal returns the user the session is logged in as, or "".
func (s *Session) Principal() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.principal
}

// SetPrincipal records the logged-in user, the key of FindByPrincipal.
func (s *Session) SetPrincipal(p string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.valid {
		return ErrInvalidated
	}
	if p != s.principal {
		s.principal = p
		s.pending.principal = true
	}
	return nil
}

// Version returns the number of committed changes the session has seen.
func (s *Session) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev.N
}

// Rev returns the revision the session is at: its version and which node
// committed it when.
func (s *Session) Rev() Rev {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// IsNew reports whether the session was created by the current request.
func (s *Session) IsNew() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isNew
}

// Valid reports whether the session is neither invalidated nor expired.
func (s *Session) Valid() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.valid
}

// Touch records an access now.
func (s *Session) Touch() {
	s.touchAt(s.host.now())
}

// touchAt records an access at t by a request on this node.
func (s *Session) touchAt(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := t.UnixNano(); n > s.lastAccess {
		s.lastAccess, s.heard = n, false
	}
}

// heardAccess records an access at t that a peer reported.
func (s *Session) heardAccess(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := t.UnixNano(); n > s.lastAccess {
		s.lastAccess, s.heard = n, true
	}
}

// accessHeard reports whether the last access known here is a peer's
// report: a later one may still be on its way.
func (s *Session) accessHeard() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heard
}

// expired reports whether the session has been idle longer than its max
// inactive interval at now. A non-positive interval never expires.
func (s *Session) expiredAt(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInactive > 0 && time.Duration(now.UnixNano()-s.lastAccess) > s.maxInactive
}

// Get returns the value of an attribute. On a node that received the
// attribute from a peer, the value is decoded on first read, as the type it
// was registered under.
func (s *Session) Get(name string) (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.attrs.get(name)
	if !ok {
		return nil, false
	}
	if !a.known() {
		v, err := s.host.types.decode(a.raw)
		if err != nil {
			s.host.log.Warn("unreadable attribute", "session", RedactID(s.id), "attribute", name, "err", err)
			return nil, false
		}
		if v != nil {
			a.val, a.raw = v, nil
		}
		return v, true
	}
	return a.val, true
}

// GetCopy returns a copy of an attribute's value, decoded afresh from its
// wire form: changes made to the copy in place do not reach the session
// until it is Set. The gorilla/sessions Store hands out such copies, as
// gorilla's own stores do. A local-only attribute is returned as is.
func (s *Session) GetCopy(name string) (any, bool) {
	s.mu.Lock()
	a, ok := s.attrs.get(name)
	if !ok {
		s.mu.Unlock()
		return nil, false
	}
	c := s.copyOf(name, a)
	s.mu.Unlock()
	return c.value(s)
}

// GetCopies returns a copy of every attribute, as GetCopy does, all read
// at one moment: a concurrent SetCopies is seen whole or not at all.
func (s *Session) GetCopies() map[string]any {
	s.mu.Lock()
	copies := make([]attrCopy, 0, len(s.attrs))
	for _, name := range s.attrs.names() {
		a, _ := s.attrs.get(name)
		copies = append(copies, s.copyOf(name, a))
	}
	s.mu.Unlock()
	out := make(map[string]any, len(copies))
	for _, c := range copies {
		if v, ok := c.value(s); ok {
			out[c.name] = v
		}
	}
	return out
}

// attrCopy is what a copy of an attribute is made from, read under the
// session's lock and decoded after it.
type attrCopy struct {
	name  string
	local bool   // a local-only attribute: val as is
	val   any    // local
	raw   []byte // else its wire form
	err   error  // or why it has none
}

// copyOf reads a's copy. s.mu must be held.
func (s *Session) copyOf(name string, a *attr) attrCopy {
	if s.host.localOnly(name) {
		return attrCopy{name: name, local: true, val: a.val}
	}
	raw, err := a.wire(s.host.types)
	return attrCopy{name: name, raw: raw, err: err}
}

// value decodes the copy, logging an attribute that cannot be read.
func (c attrCopy) value(s *Session) (any, bool) {
	if c.local {
		return c.val, true
	}
	err := c.err
	if err == nil {
		var v any
		if v, err = s.host.types.decode(c.raw); err == nil {
			return v, true
		}
	}
	s.host.log.Warn("unreadable attribute", "session", RedactID(s.ID()), "attribute", c.name, "err", err)
	return nil, false
}

// GetString returns a string attribute; ok is false when it is missing or
// not a string.
func (s *Session) GetString(name string) (v string, ok bool) {
	x, _ := s.Get(name)
	v, ok = x.(string)
	return v, ok
}

// GetInt returns an integer attribute of any integer type as an int64; ok
// is false when it is missing or not an integer.
func (s *Session) GetInt(name string) (int64, bool) {
	x, _ := s.Get(name)
	switch v := x.(type) {
	case int:
		return int64(v), true
	case int8:
		return int64(v), true
	case int16:
		return int64(v), true
	case int32:
		return int64(v), true
	case int64:
		return v, true
	case uint8:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint32:
		return int64(v), true
	case uint:
		return int64(v), v <= 1<<63-1
	case uint64:
		return int64(v), v <= 1<<63-1
	}
	return 0, false
}

// GetBool returns a boolean attribute.
func (s *Session) GetBool(name string) (v bool, ok bool) {
	x, _ := s.Get(name)
	v, ok = x.(bool)
	return v, ok
}

// GetFloat returns a float64 or float32 attribute as a float64.
func (s *Session) GetFloat(name string) (float64, bool) {
	x, _ := s.Get(name)
	switch v := x.(type) {
	case float64:
		return v, true
	case float32:
		return float64(v), true
	}
	return 0, false
}

// GetTime returns a time.Time attribute.
func (s *Session) GetTime(name string) (v time.Time, ok bool) {
	x, _ := s.Get(name)
	v, ok = x.(time.Time)
	return v, ok
}

// Attr returns an attribute as type T: ok is false when it is missing or of
// another type.
func Attr[T any](s *Session, name string) (v T, ok bool) {
	x, _ := s.Get(name)
	v, ok = x.(T)
	return v, ok
}

// Changed reports whether the session has changes that no Commit has
// taken yet.
func (s *Session) Changed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.pending.empty() || s.isNew
}

// Names returns the attribute names, sorted.
func (s *Session) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attrs.names()
}

// Set stores an attribute. Unless the name is local-only (Config.LocalOnly),
// the value must be replicable: of a registered type (see [Types]) that
// msgpack encodes, and small enough that the session stays within the
// manager's bound (DeltaConfig.MaxSessionSize). Otherwise Set returns a
// *NotDistributableError and changes nothing.
//
// The value is encoded now, and that encoding is what replicates. This
// node keeps v itself for its own reads, as a Java container keeps the
// object: changes made to v in place are seen here at once but reach the
// other nodes only with MarkDirty or another Set, and this node reads v
// while the others read a decoded copy (an unexported field is lost
// there, an int in a map comes back as int64). [Session.SetCopy] keeps
// the encoded form alone, so every node reads the same thing.
func (s *Session) Set(name string, v any) error {
	var raw []byte
	local := s.host.localOnly(name)
	if !local {
		var err error
		if raw, err = s.host.types.encode(v); err != nil {
			return &NotDistributableError{Key: name, Type: fmt.Sprintf("%T", v), Err: err}
		}
	}
	s.mu.Lock()
	if !s.valid {
		s.mu.Unlock()
		return ErrInvalidated
	}
	if err := s.fits(name, raw, v); err != nil {
		s.mu.Unlock()
		return err
	}
	a := attr{raw: raw, val: v}
	old, had := s.attrs.set(name, a)
	if !local {
		s.pending.op(name, raw)
	}
	s.mu.Unlock()
	s.fireSet(name, old, had, v)
	return nil
}

// SetCopy stores a copy of v: its encoded form, not v itself, unless the
// attribute already holds an equal value (the same encoded form). It
// reports whether the attribute changed. Unlike after Set, changes the
// caller goes on making to v in place never reach the session, and are
// seen as changes by the next SetCopy; the session never holds an object
// its caller may be changing. The gorilla/sessions Store saves values so.
// A local-only attribute is stored as by Set.
func (s *Session) SetCopy(name string, v any) (changed bool, err error) {
	return s.SetCopies(map[string]any{name: v}, nil)
}

// SetCopies stores copies of the values of set, as SetCopy stores each,
// and removes the attributes named in remove, as one change: when any
// value cannot be stored (a *NotDistributableError, as SetCopy returns,
// for the session's size counted with every value of set in and every
// attribute of remove out) or the session is invalidated, it returns the
// error and changes nothing. A name in both is set. It reports whether
// any attribute changed; listeners hear of each change once all are made.
func (s *Session) SetCopies(set map[string]any, remove []string) (changed bool, err error) {
	batch, err := s.host.encodeAll(set)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	if !s.valid {
		s.mu.Unlock()
		return false, ErrInvalidated
	}
	// Values equal to what the session holds are no change.
	n := 0
	for _, a := range batch {
		if a.raw != nil {
			if cur, ok := s.attrs.get(a.name); ok {
				if w, err := cur.wire(s.host.types); err == nil && bytes.Equal(w, a.raw) {
					continue
				}
			}
		}
		batch[n] = a
		n++
	}
	batch = batch[:n]
	if err := s.host.fits(s.attrs, batch, remove); err != nil {
		s.mu.Unlock()
		return false, err
	}
	type event struct {
		name     string
		old      attr
		had, set bool
		v        any
	}
	var events []event
	for _, a := range batch {
		stored := attr{raw: a.raw}
		if a.raw == nil {
			stored.val = a.v // local-only, as Set keeps it
		} else {
			s.pending.op(a.name, a.raw)
		}
		old, had := s.attrs.set(a.name, stored)
		events = append(events, event{name: a.name, old: old, had: had, set: true, v: a.v})
	}
	for _, name := range remove {
		if _, ok := set[name]; ok {
			continue
		}
		old, had := s.attrs.del(name)
		if !had {
			continue
		}
		if !s.host.localOnly(name) {
			s.pending.op(name, nil)
		}
		events = append(events, event{name: name, old: old})
	}
	s.mu.Unlock()
	for _, e := range events {
		if e.set {
			s.fireSet(e.name, e.old, e.had, e.v)
		} else {
			s.fireRemoved(e.name, e.old)
		}
	}
	return len(events) > 0, nil
}

// newAttr is an attribute value to store, encoded.
type newAttr struct {
	name string
	v    any
	raw  []byte // v's wire form; nil for a local-only attribute
}

// encodeAll encodes the values of set, in name order, as SetCopy does one:
// it returns the *NotDistributableError of the first that cannot be.
func (h *host) encodeAll(set map[string]any) ([]newAttr, error) {
	batch := make([]newAttr, 0, len(set))
	for name, v := range set {
		batch = append(batch, newAttr{name: name, v: v})
	}
	slices.SortFunc(batch, func(a, b newAttr) int { return strings.Compare(a.name, b.name) })
	for i := range batch {
		a := &batch[i]
		if h.localOnly(a.name) {
			continue
		}
		raw, err := h.types.encode(a.v)
		if err != nil {
			return nil, &NotDistributableError{Key: a.name, Type: fmt.Sprintf("%T", a.v), Err: err}
		}
		a.raw = raw
	}
	return batch, nil
}

// checkNew returns the error SetCopies would return for a new session
// holding values.
func (h *host) checkNew(values map[string]any) error {
	batch, err := h.encodeAll(values)
	if err != nil {
		return err
	}
	return h.fits(nil, batch, nil)
}

// fits returns a *NotDistributableError if setting name to raw (v
// encoded; nil for a local-only attribute) would make the session larger
// than the manager's bound. s.mu is held.
func (s *Session) fits(name string, raw []byte, v any) error {
	if s.host.maxSize <= 0 || raw == nil {
		return nil
	}
	return s.host.fits(s.attrs, []newAttr{{name: name, v: v, raw: raw}}, nil)
}

// fits returns a *NotDistributableError, for the first attribute of batch
// (sorted by name) past the manager's bound, if a session holding attrs
// would grow larger than the bound once batch is stored and the attributes
// named in remove are gone.
func (h *host) fits(attrs attrList, batch []newAttr, remove []string) error {
	limit := h.maxSize
	if limit <= 0 {
		return nil
	}
	size := 0
	for i := range attrs {
		e := &attrs[i]
		n := e.encodedLen()
		if n == 0 {
			continue
		}
		name := e.name.Value()
		if _, replaced := slices.BinarySearchFunc(batch, name, func(a newAttr, n string) int { return strings.Compare(a.name, n) }); replaced || slices.Contains(remove, name) {
			continue
		}
		size += len(name) + n
	}
	for _, a := range batch {
		if a.raw == nil {
			continue
		}
		if size += len(a.name) + len(a.raw); size > limit {
			return &NotDistributableError{Key: a.name, Type: fmt.Sprintf("%T", a.v),
				Err: fmt.Errorf("%w: the session would take %d bytes encoded, and at most %d go in one replication message (DeltaConfig.MaxSessionSize); keep large data out of the session, or raise the channel's MaxFrameSize", ErrSessionTooLarge, size, limit)}
		}
	}
	return nil
}

// fireSet tells the listeners that name was set to v, replacing old when
// it had a value.
func (s *Session) fireSet(name string, old attr, had bool, v any) {
	if had {
		oldVal := old.val
		if !old.known() {
			oldVal, _ = s.host.types.decode(old.raw)
		}
		s.host.fire(func(l Listener) {
			if l.AttributeReplaced != nil {
				l.AttributeReplaced(s, name, oldVal, v)
			}
		})
	} else {
		s.host.fire(func(l Listener) {
			if l.AttributeAdded != nil {
				l.AttributeAdded(s, name, v)
			}
		})
	}
}

// MarkDirty re-encodes an attribute whose value was changed in place (a
// pointer, slice or map mutated by the handler), so the change replicates.
func (s *Session) MarkDirty(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.valid {
		return ErrInvalidated
	}
	a, ok := s.attrs.get(name)
	if !ok || !a.known() || s.host.localOnly(name) {
		return nil
	}
	raw, err := s.host.types.encode(a.val)
	if err != nil {
		return &NotDistributableError{Key: name, Type: fmt.Sprintf("%T", a.val), Err: err}
	}
	a.raw = raw
	s.pending.op(name, raw)
	return nil
}

// Remove deletes an attribute.
func (s *Session) Remove(name string) error {
	s.mu.Lock()
	if !s.valid {
		s.mu.Unlock()
		return ErrInvalidated
	}
	old, had := s.attrs.del(name)
	if !had {
		s.mu.Unlock()
		return nil
	}
	if !s.host.localOnly(name) {
		s.pending.op(name, nil)
	}
	s.mu.Unlock()
	s.fireRemoved(name, old)
	return nil
}

// fireRemoved tells the listeners that name, which held old, was removed.
func (s *Session) fireRemoved(name string, old attr) {
	oldVal := old.val
	if !old.known() {
		oldVal, _ = s.host.types.decode(old.raw)
	}
	s.host.fire(func(l Listener) {
		if l.AttributeRemoved != nil {
			l.AttributeRemoved(s, name, oldVal)
		}
	})
}

// indexAt is how many operations a request keeps before it indexes
// them by name: a request changes one or a few attributes, and a short
// slice costs less than a map.
const indexAt = 16

// has reports whether the attribute of name has an operation pending.
func (p *pending) has(name string) bool {
	if p.index != nil {
		_, ok := p.index[name]
		return ok
	}
	for i := range p.ops {
		if p.ops[i].Name == name {
			return true
		}
	}
	return false
}

func (p *pending) op(name string, raw []byte) {
	if p.index != nil {
		if i, ok := p.index[name]; ok {
			p.ops[i].Value = raw
			return
		}
	} else {
		for i := range p.ops {
			if p.ops[i].Name == name {
				p.ops[i].Value = raw
				return
			}
		}
	}
	p.ops = append(p.ops, Op{Name: name, Value: raw})
	if len(p.ops) == indexAt {
		p.index = make(map[string]int, 2*indexAt)
		for i, o := range p.ops {
			p.index[o.Name] = i
		}
	} else if p.index != nil {
		p.index[name] = len(p.ops) - 1
	}
}
