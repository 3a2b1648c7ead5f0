package manager

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Delta is one committed change of a session, as it travels to replicas:
// the last operation per changed attribute and the session-level fields
// that changed, made on top of version Base.
type Delta struct {
	ID          string  `msgpack:"i"`
	Base        uint64  `msgpack:"b"`           // version the change was made from
	Version     uint64  `msgpack:"v"`           // Base+1
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
	Version     uint64            `msgpack:"v"`
	Created     int64             `msgpack:"c"` // Unix ms
	Access      int64             `msgpack:"a"` // Unix ms
	MaxInactive int64             `msgpack:"m"` // ms
	Principal   string            `msgpack:"p,omitempty"`
	Attrs       map[string][]byte `msgpack:"t,omitempty"`
}

// ErrVersionGap is returned by apply when a delta was made from a version
// the replica does not hold: the replica needs a full copy.
var ErrVersionGap = errors.New("manager: delta does not apply to this version")

// commit takes the pending changes. It returns a Delta and true when there
// was a change to replicate (which bumps the version), or false when the
// request only read the session.
func (s *Session) commit() (Delta, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = pending{}
	wasNew := s.isNew
	s.isNew = false
	if p.empty() && !wasNew {
		return Delta{}, false
	}
	d := Delta{ID: s.id, Base: s.version, Version: s.version + 1, Access: s.lastAccess.UnixMilli(), Invalidate: p.invalidated}
	s.version++
	if wasNew {
		d.Created = s.created.UnixMilli()
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
	for name, a := range p.ops {
		op := Op{Name: name}
		if a != nil {
			op.Value = a.raw
		}
		d.Ops = append(d.Ops, op)
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
		ID: s.id, Version: s.version, Created: s.created.UnixMilli(), Access: s.lastAccess.UnixMilli(),
		MaxInactive: s.maxInactive.Milliseconds(), Principal: s.principal,
	}
	for name, a := range s.attrs {
		if a.raw != nil {
			if f.Attrs == nil {
				f.Attrs = make(map[string][]byte, len(s.attrs))
			}
			f.Attrs[name] = a.raw
		}
	}
	return f
}

// fromFull builds a session from a full copy.
func (h *host) fromFull(f Full) *Session {
	s := &Session{
		host: h, id: f.ID, version: f.Version, valid: true,
		created: time.UnixMilli(f.Created), lastAccess: time.UnixMilli(f.Access),
		maxInactive: time.Duration(f.MaxInactive) * time.Millisecond, principal: f.Principal,
		attrs: make(map[string]*attr, len(f.Attrs)),
	}
	for name, raw := range f.Attrs {
		s.attrs[name] = &attr{raw: raw}
	}
	return s
}

// apply applies a delta received from a peer. It returns ErrVersionGap,
// changing nothing, unless the delta was made from this session's version.
// Listeners fire when notify is true.
func (s *Session) apply(d Delta, notify bool) error {
	s.mu.Lock()
	if d.Base != s.version || d.Version != d.Base+1 {
		have := s.version
		s.mu.Unlock()
		return fmt.Errorf("%w: delta %d->%d, replica at %d", ErrVersionGap, d.Base, d.Version, have)
	}
	s.version = d.Version
	if t := time.UnixMilli(d.Access); t.After(s.lastAccess) {
		s.lastAccess = t
	}
	if d.MaxInactive != nil {
		s.maxInactive = time.Duration(*d.MaxInactive) * time.Millisecond
	}
	if d.Principal != nil {
		s.principal = *d.Principal
	}
	type change struct {
		name     string
		old, new *attr
	}
	var changes []change
	for _, op := range d.Ops {
		old := s.attrs[op.Name]
		if op.Value == nil {
			delete(s.attrs, op.Name)
		} else {
			s.attrs[op.Name] = &attr{raw: op.Value}
		}
		changes = append(changes, change{op.Name, old, s.attrs[op.Name]})
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

// value returns an attribute's value, decoding it if needed.
func (h *host) value(a *attr) any {
	if a.known {
		return a.val
	}
	v, _ := h.types.decode(a.raw)
	return v
}

// EncodeDelta encodes a delta for the wire.
func EncodeDelta(d Delta) ([]byte, error) { return msgpack.Marshal(&d) }

// DecodeDelta decodes a delta received from a peer.
func DecodeDelta(b []byte) (Delta, error) {
	var d Delta
	if err := msgpack.Unmarshal(b, &d); err != nil {
		return Delta{}, fmt.Errorf("manager: decode delta: %w", err)
	}
	if d.ID == "" {
		return Delta{}, errors.New("manager: decode delta: empty session id")
	}
	return d, nil
}

// EncodeFull encodes a whole session for the wire or a file.
func EncodeFull(f Full) ([]byte, error) { return msgpack.Marshal(&f) }

// DecodeFull decodes a whole session.
func DecodeFull(b []byte) (Full, error) {
	var f Full
	if err := msgpack.Unmarshal(b, &f); err != nil {
		return Full{}, fmt.Errorf("manager: decode session: %w", err)
	}
	if f.ID == "" {
		return Full{}, errors.New("manager: decode session: empty session id")
	}
	return f, nil
}
