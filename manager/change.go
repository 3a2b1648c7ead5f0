package manager

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unique"

	"github.com/vmihailenco/msgpack/v5"
)

// Rev identifies one committed state of a session: its version number and
// the node and time that committed it. Two nodes that change a session
// concurrently both make version N+1; the revisions tell them apart, and
// their order (Less) decides which one every replica keeps.
type Rev struct {
	N    uint64 `msgpack:"n"` // version number: committed changes so far
	At   int64  `msgpack:"t"` // commit time, Unix ms, on the committing node
	Node string `msgpack:"o"` // route of the committing node
}

// Less orders revisions: by version, then commit time, then node route.
// The greater revision wins a conflict; the order is total, so every node
// picks the same winner.
func (r Rev) Less(o Rev) bool {
	if r.N != o.N {
		return r.N < o.N
	}
	if r.At != o.At {
		return r.At < o.At
	}
	return r.Node < o.Node
}

// Change is one committed change of a session, as it travels to replicas:
// the last operation per changed attribute and the session-level fields
// that changed, made on top of revision Base.
type Change struct {
	ID          string  `msgpack:"i"`
	Base        Rev     `msgpack:"b"`           // revision the change was made from
	Rev         Rev     `msgpack:"r"`           // revision it makes, Base.N+1
	Created     int64   `msgpack:"c,omitempty"` // Unix ms; set when the session is new
	Access      int64   `msgpack:"a"`           // last access, Unix ms
	MaxInactive *int64  `msgpack:"m,omitempty"` // ms; set when changed (always for a new session)
	Principal   *string `msgpack:"p,omitempty"` // set when changed
	Ops         []Op    `msgpack:"o,omitempty"` // sorted by name
	Invalidate  bool    `msgpack:"x,omitempty"`
}

// Op is the last operation on one attribute: a set with its wire value, or
// a removal (Value nil).
type Op struct {
	Name  string `msgpack:"n"`
	Value []byte `msgpack:"v"`
}

// Full is a whole session, as state transfer, resynchronisation and the
// Standard manager's file carry it.
type Full struct {
	ID          string            `msgpack:"i"`
	Rev         Rev               `msgpack:"r"`
	Created     int64             `msgpack:"c"` // Unix ms
	Access      int64             `msgpack:"a"` // Unix ms
	MaxInactive int64             `msgpack:"m"` // ms
	Principal   string            `msgpack:"p,omitempty"`
	Attrs       map[string][]byte `msgpack:"t,omitempty"`
	// Backup manager: the primary as the sender knows it, and its claim's
	// term (Session.claim). An empty Owner means the sender.
	Owner string `msgpack:"o,omitempty"`
	Term  uint64 `msgpack:"e,omitempty"`
}

// ErrVersionGap is returned by apply when a delta was made from a version
// the replica does not hold: the replica needs a full copy.
var ErrVersionGap = errors.New("manager: delta does not apply to this version")

// commit takes the pending changes. It returns a Change and true when there
// was a change to replicate (which bumps the version), or false when the
// request only read the session.
func (s *Session) commit() (Change, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = pending{}
	wasNew := s.isNew
	s.isNew = false
	if p.empty() && !wasNew {
		return Change{}, false
	}
	next := Rev{N: s.rev.N + 1, At: s.host.now().UnixMilli(), Node: s.host.route}
	if next.At <= s.rev.At {
		next.At = s.rev.At + 1 // commit times of one session only go up
	}
	d := Change{ID: s.id, Base: s.rev, Rev: next, Access: s.lastAccess / 1e6, Invalidate: p.invalidated}
	s.rev = next
	if wasNew {
		d.Created = s.created / 1e6
		p.maxInactive = true
	}
	if p.maxInactive {
		ms := s.maxInactive.Milliseconds()
		d.MaxInactive = &ms
	}
	if p.principal || (wasNew && s.principal != "") {
		pr := s.principal
		d.Principal = &pr
	}
	d.Ops = p.ops
	for _, op := range d.Ops {
		if a, ok := s.attrs.get(op.Name); ok && a.val != nil {
			a.size = int32(len(a.raw))
			a.raw = nil // the value stays; full copies re-encode it
		}
	}
	slices.SortFunc(d.Ops, func(a, b Op) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return d, true
}

// full returns the whole session.
func (s *Session) full() Full {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := Full{
		ID: s.id, Rev: s.rev, Created: s.created / 1e6, Access: s.lastAccess / 1e6,
		MaxInactive: s.maxInactive.Milliseconds(), Principal: s.principal,
		Owner: s.owner, Term: s.term,
	}
	for _, e := range s.attrs {
		name, a := e.name.Value(), e.attr
		if s.host.localOnly(name) {
			continue
		}
		raw, err := a.wire(s.host.types)
		if err != nil || raw == nil {
			s.host.log.Warn("attribute left out of a full copy", "session", RedactID(s.id), "attribute", name, "err", err)
			continue
		}
		if f.Attrs == nil {
			f.Attrs = make(map[string][]byte, len(s.attrs))
		}
		f.Attrs[name] = raw
	}
	return f
}

// Size returns the session's encoded size in bytes, as a full copy of it
// travels in a state transfer.
func (s *Session) Size() int {
	b, err := EncodeFull(s.full())
	if err != nil {
		return 0
	}
	return len(b)
}

// fromFull builds a session from a full copy.
func (h *host) fromFull(f Full) *Session {
	f.Rev.Node = internName(f.Rev.Node)
	s := &Session{
		host: h, id: f.ID, rev: f.Rev, valid: true,
		created: f.Created * 1e6, lastAccess: f.Access * 1e6, heard: true,
		maxInactive: time.Duration(f.MaxInactive) * time.Millisecond, principal: f.Principal,
		owner: internName(f.Owner), term: f.Term,
		attrs: make(attrList, 0, len(f.Attrs)),
	}
	for name, raw := range f.Attrs {
		s.attrs = append(s.attrs, attrEntry{name: unique.Make(name), attr: attr{raw: raw}})
	}
	sortAttrs(s.attrs)
	return s
}

// apply applies a delta received from a peer. It returns ErrVersionGap,
// changing nothing, unless the delta was made from this session's exact
// revision. Attribute listeners fire when notify is true.
//
// A request on this node may be changing the session meanwhile: its
// changes commit next, on top of the delta's revision, so they win over
// the delta's for the attributes and fields they touch, here as on every
// replica that applies the two in turn.
func (s *Session) apply(d Change, notify bool) error {
	notify = notify && s.host.attrListeners.Load()
	s.mu.Lock()
	if d.Base != s.rev || d.Rev.N != d.Base.N+1 {
		have := s.rev
		s.mu.Unlock()
		return fmt.Errorf("%w: delta %d->%d, replica at %d", ErrVersionGap, d.Base.N, d.Rev.N, have.N)
	}
	s.rev = d.Rev // its route is the decoder's shared copy (wireNames)
	if t := d.Access * 1e6; t > s.lastAccess {
		s.lastAccess, s.heard = t, true
	}
	if d.MaxInactive != nil && !s.pending.maxInactive {
		s.maxInactive = time.Duration(*d.MaxInactive) * time.Millisecond
	}
	if d.Principal != nil && !s.pending.principal {
		s.principal = *d.Principal
	}
	type change struct {
		name     string
		old, new *attr
	}
	var changes []change
	for _, op := range d.Ops {
		if len(s.pending.ops) > 0 && s.pending.has(op.Name) {
			continue
		}
		var old attr
		var had bool
		if op.Value == nil {
			old, had = s.attrs.del(op.Name)
		} else {
			old, had = s.attrs.set(op.Name, attr{raw: op.Value})
		}
		if !notify {
			continue
		}
		c := change{name: op.Name}
		if had {
			c.old = &old
		}
		if op.Value != nil {
			c.new = &attr{raw: op.Value}
		}
		changes = append(changes, c)
	}
	s.mu.Unlock()
	if !notify {
		return nil
	}
	h := s.host
	for _, c := range changes {
		switch {
		case c.old == nil && c.new != nil:
			v, _ := s.Get(c.name)
			h.fire(func(l Listener) {
				if l.AttributeAdded != nil {
					l.AttributeAdded(s, c.name, v)
				}
			})
		case c.old != nil && c.new != nil:
			ov := h.value(c.old)
			v, _ := s.Get(c.name)
			h.fire(func(l Listener) {
				if l.AttributeReplaced != nil {
					l.AttributeReplaced(s, c.name, ov, v)
				}
			})
		case c.old != nil:
			ov := h.value(c.old)
			h.fire(func(l Listener) {
				if l.AttributeRemoved != nil {
					l.AttributeRemoved(s, c.name, ov)
				}
			})
		}
	}
	return nil
}

// replace installs a full copy if its revision is greater than the
// session's. It fires no listeners: a replaced copy is a repair, not a
// user's change. As in apply, what a request on this node changed and has
// not committed yet stays: it commits next, on top of the copy.
func (s *Session) replace(f Full) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.rev.Less(f.Rev) {
		return false
	}
	s.rev = f.Rev
	s.rev.Node = internName(f.Rev.Node)
	s.created = f.Created * 1e6
	if t := f.Access * 1e6; t > s.lastAccess {
		s.lastAccess, s.heard = t, true
	}
	if !s.pending.maxInactive {
		s.maxInactive = time.Duration(f.MaxInactive) * time.Millisecond
	}
	if !s.pending.principal {
		s.principal = f.Principal
	}
	attrs := make(attrList, 0, len(f.Attrs))
	for _, e := range s.attrs {
		// Never replicated, or changed by a request not committed yet:
		// kept.
		if name := e.name.Value(); s.host.localOnly(name) || s.pending.has(name) {
			attrs = append(attrs, e)
		}
	}
	kept := attrs
	for name, raw := range f.Attrs {
		if _, ok := kept.index(name); !ok && !s.pending.has(name) {
			attrs = append(attrs, attrEntry{name: unique.Make(name), attr: attr{raw: raw}})
		}
	}
	sortAttrs(attrs)
	s.attrs = attrs
	return true
}

// value returns an attribute's value, decoding it if needed.
func (h *host) value(a *attr) any {
	if a.known() {
		return a.val
	}
	v, _ := h.types.decode(a.raw)
	return v
}

// EncodeChange encodes a delta for the wire.
func EncodeChange(d Change) ([]byte, error) { return msgpack.Marshal(&d) }

// DecodeChange decodes a delta received from a peer.
func DecodeChange(b []byte) (Change, error) {
	var d Change
	if err := d.decode(b); err != nil {
		return Change{}, fmt.Errorf("manager: decode delta: %w", err)
	}
	if d.ID == "" {
		return Change{}, errors.New("manager: decode delta: empty session id")
	}
	return d, nil
}

// EncodeFull encodes a whole session for the wire or a file.
func EncodeFull(f Full) ([]byte, error) { return msgpack.Marshal(&f) }

// DecodeFull decodes a whole session.
func DecodeFull(b []byte) (Full, error) {
	var f Full
	if _, err := f.decode(b); err != nil {
		return Full{}, fmt.Errorf("manager: decode session: %w", err)
	}
	if f.ID == "" {
		return Full{}, errors.New("manager: decode session: empty session id")
	}
	return f, nil
}
