package manager

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"sync"
	"testing"
	"time"
)

type cart struct {
	Items map[string]int
	Note  string
	When  time.Time
}

// testHost is a manager's shared state with a cart type registered.
func testHost(t testing.TB) *host {
	t.Helper()
	c := DefaultConfig()
	c.Route = "node1"
	c.Types = NewTypes()
	c.Types.MustRegister("test.cart", cart{})
	c.Types.MustRegister("test.*cart", &cart{})
	c.LocalOnly = regexp.MustCompile(`^local\.`)
	c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	return c.host()
}

func TestAttributesRoundTripAsTheirOwnTypes(t *testing.T) {
	a, b := testHost(t), testHost(t)
	src := newStore(a, 0).newSession("node1", time.Hour)
	when := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	values := map[string]any{
		"int":      7,
		"int64":    int64(1 << 40),
		"uint8":    uint8(200),
		"float":    2.5,
		"string":   "hello",
		"bool":     true,
		"bytes":    []byte{1, 2, 3},
		"time":     when,
		"duration": 3 * time.Second,
		"strings":  []string{"a", "b"},
		"map":      map[string]int{"x": 1},
		"cart":     cart{Items: map[string]int{"apple": 3}, Note: "n", When: when},
		"cartptr":  &cart{Items: map[string]int{"pear": 1}},
		"any":      map[string]any{"n": 1, "s": "x"},
	}
	for k, v := range values {
		if err := src.Set(k, v); err != nil {
			t.Fatalf("Set(%q, %T) = %v", k, v, err)
		}
	}
	d, ok := src.commit()
	if !ok {
		t.Fatal("commit of a new session gave no delta")
	}
	wire, err := EncodeChange(d)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := DecodeChange(wire)
	if err != nil {
		t.Fatal(err)
	}
	replica := b.fromFull(Full{ID: d2.ID, Created: d2.Created})
	if err := replica.apply(d2, false); err != nil {
		t.Fatal(err)
	}
	for k, want := range values {
		got, ok := replica.Get(k)
		if k == "any" {
			// Inside interface containers, integers come back as int64.
			want = map[string]any{"n": int64(1), "s": "x"}
		}
		// Times keep their instant; msgpack gives them the local zone.
		if c, isCart := got.(cart); isCart && c.When.Equal(when) {
			c.When = when
			got = c
		}
		if tm, isTime := got.(time.Time); isTime && tm.Equal(when) {
			got = when
		}
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("replica Get(%q) = %#v (%T), want %#v (%T)", k, got, got, want, want)
		}
	}
	if n, ok := replica.GetInt("uint8"); !ok || n != 200 {
		t.Errorf("GetInt(uint8) = %d, %v", n, ok)
	}
	if c, ok := Attr[cart](replica, "cart"); !ok || c.Items["apple"] != 3 {
		t.Errorf("Attr[cart] = %+v, %v", c, ok)
	}
	if replica.Version() != 1 || src.Version() != 1 {
		t.Errorf("versions %d, %d; want 1, 1", src.Version(), replica.Version())
	}
}

func TestSetRefusesWhatCannotReplicate(t *testing.T) {
	s := newStore(testHost(t), 0).newSession("node1", time.Hour)
	type unregistered struct{ A int }
	for _, tc := range []struct {
		name string
		v    any
	}{
		{"struct", unregistered{1}},
		{"chan", make(chan int)},
		{"func", func() {}},
		{"nil", nil},
	} {
		err := s.Set(tc.name, tc.v)
		var nd *NotDistributableError
		if !errors.As(err, &nd) || nd.Key != tc.name {
			t.Errorf("Set(%q, %T) = %v, want a NotDistributableError naming the attribute", tc.name, tc.v, err)
		}
		if _, ok := s.Get(tc.name); ok {
			t.Errorf("refused attribute %q was stored", tc.name)
		}
	}
	// Local-only attributes hold anything and never replicate.
	if err := s.Set("local.conn", make(chan int)); err != nil {
		t.Errorf("Set(local.conn) = %v", err)
	}
	d, _ := s.commit()
	for _, op := range d.Ops {
		if op.Name == "local.conn" {
			t.Error("a local-only attribute was replicated")
		}
	}
	if err := NewTypes().Register("x", make(chan int)); err == nil {
		t.Error("Register accepted a channel type")
	}
}

func TestDeltaCarriesLastOperationPerAttribute(t *testing.T) {
	s := newStore(testHost(t), 0).newSession("node1", time.Hour)
	_ = s.Set("a", 1)
	_ = s.Set("b", 1)
	s.commit()
	_ = s.Set("a", 2)
	_ = s.Set("a", 3)
	_ = s.Remove("b")
	_ = s.SetPrincipal("alice")
	c := cart{Items: map[string]int{}}
	_ = s.Set("cart", &c)
	d, ok := s.commit()
	if !ok || d.Base.N != 1 || d.Rev.N != 2 || d.Rev.Node != "node1" || d.Created != 0 || d.Principal == nil || *d.Principal != "alice" {
		t.Fatalf("delta = %+v", d)
	}
	if len(d.Ops) != 3 || d.Ops[0].Name != "a" || d.Ops[1].Name != "b" || d.Ops[1].Value != nil || d.Ops[2].Name != "cart" {
		t.Fatalf("ops = %+v, want a set, b removed, cart set", d.Ops)
	}
	// A read-only request replicates nothing.
	s.Touch()
	if d, ok := s.commit(); ok {
		t.Errorf("read-only commit gave %+v", d)
	}
	// A value mutated in place replicates after MarkDirty.
	c.Items["plum"] = 2
	if err := s.MarkDirty("cart"); err != nil {
		t.Fatal(err)
	}
	d, ok = s.commit()
	if !ok || len(d.Ops) != 1 {
		t.Fatalf("MarkDirty delta = %+v", d)
	}
	v, _ := testHost(t).types.decode(d.Ops[0].Value)
	if got := v.(*cart).Items["plum"]; got != 2 {
		t.Errorf("replicated cart has plum=%d, want 2", got)
	}
}

// TestDeltaOfManyAttributes: past the length at which a request's
// operations are indexed by name, each attribute still carries only its
// last operation, and the delta applies to a replica.
func TestDeltaOfManyAttributes(t *testing.T) {
	h := testHost(t)
	s := newStore(h, 0).newSession("node1", time.Hour)
	d0, _ := s.commit()
	replica := h.fromFull(Full{ID: s.ID(), Rev: d0.Rev})
	const n = 3 * indexAt
	for round := range 3 {
		for i := range n {
			_ = s.Set(fmt.Sprintf("k%02d", i), round*100+i)
		}
	}
	for i := 0; i < n; i += 2 {
		_ = s.Remove(fmt.Sprintf("k%02d", i))
	}
	d, ok := s.commit()
	if !ok || len(d.Ops) != n {
		t.Fatalf("delta has %d ops, want %d", len(d.Ops), n)
	}
	for i, op := range d.Ops {
		if want := fmt.Sprintf("k%02d", i); op.Name != want || (op.Value == nil) != (i%2 == 0) {
			t.Fatalf("op %d = %s (removed %v), want %s removed %v", i, op.Name, op.Value == nil, want, i%2 == 0)
		}
	}
	if err := replica.apply(d, false); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		v, ok := replica.Get(fmt.Sprintf("k%02d", i))
		if i%2 == 0 && ok || i%2 == 1 && (!ok || fmt.Sprint(v) != fmt.Sprint(200+i)) {
			t.Fatalf("replica k%02d = %v, %v", i, v, ok)
		}
	}
}

func TestApplyNeedsTheBaseVersion(t *testing.T) {
	h := testHost(t)
	s := newStore(h, 0).newSession("node1", time.Hour)
	_ = s.Set("a", 1)
	d1, _ := s.commit()
	_ = s.Set("a", 2)
	d2, _ := s.commit()
	r := h.fromFull(Full{ID: s.ID()})
	if err := r.apply(d2, false); !errors.Is(err, ErrVersionGap) {
		t.Fatalf("apply out of order = %v, want ErrVersionGap", err)
	}
	if err := r.apply(d1, false); err != nil {
		t.Fatal(err)
	}
	if err := r.apply(d1, false); !errors.Is(err, ErrVersionGap) {
		t.Errorf("applying a delta twice = %v, want ErrVersionGap", err)
	}
	if err := r.apply(d2, false); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.GetInt("a"); v != 2 || r.Version() != 2 {
		t.Errorf("replica a=%d v%d, want a=2 v2", v, r.Version())
	}
}

// A full copy installed while a request has changes pending keeps them:
// they commit next, on top of the copy.
func TestReplaceKeepsPendingChanges(t *testing.T) {
	h := testHost(t)
	s := newStore(h, 0).newSession("node1", time.Hour)
	_ = s.Set("a", 1)
	_ = s.Set("b", 1)
	_ = s.Set("gone", 1)
	_, _ = s.commit()
	_ = s.Set("a", 2)
	_ = s.Remove("gone")
	_ = s.SetMaxInactive(time.Minute)
	newer := s.full()
	newer.Rev = Rev{N: 5, Node: "node2"}
	newer.Attrs = map[string][]byte{}
	for name, v := range map[string]int{"a": 9, "b": 9, "gone": 9} {
		raw, err := h.types.encode(v)
		if err != nil {
			t.Fatal(err)
		}
		newer.Attrs[name] = raw
	}
	newer.MaxInactive = time.Hour.Milliseconds()
	if !s.replace(newer) {
		t.Fatal("a greater revision was not installed")
	}
	a, _ := s.GetInt("a")
	b, _ := s.GetInt("b")
	_, gone := s.Get("gone")
	if a != 2 || b != 9 || gone || s.MaxInactive() != time.Minute {
		t.Errorf("after replace a=%d b=%d gone present=%v max inactive %v, want 2, 9, false, 1m", a, b, gone, s.MaxInactive())
	}
	d, _ := s.commit()
	if d.Base != newer.Rev || len(d.Ops) != 2 {
		t.Errorf("the pending change commits on %+v with %d ops, want on %+v with 2", d.Base, len(d.Ops), newer.Rev)
	}
}

func TestListeners(t *testing.T) {
	h := testHost(t)
	var mu sync.Mutex
	var got []string
	rec := func(s string) { mu.Lock(); got = append(got, s); mu.Unlock() }
	h.addListener(Listener{
		AttributeAdded:    func(s *Session, n string, v any) { rec("added " + n) },
		AttributeReplaced: func(s *Session, n string, o, v any) { rec("replaced " + n) },
		AttributeRemoved:  func(s *Session, n string, o any) { rec("removed " + n) },
	})
	s := newStore(h, 0).newSession("node1", time.Hour)
	_ = s.Set("a", 1)
	_ = s.Set("a", 2)
	_ = s.Remove("a")
	_ = s.Set("b", 1)
	d, _ := s.commit()
	r := h.fromFull(Full{ID: s.ID()})
	_ = r.apply(d, true)
	want := []string{"added a", "replaced a", "removed a", "added b", "added b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func FuzzDecodeChange(f *testing.F) {
	h := testHost(f)
	s := newStore(h, 0).newSession("node1", time.Hour)
	_ = s.Set("cart", cart{Items: map[string]int{"a": 1}})
	_ = s.SetPrincipal("bob")
	d, _ := s.commit()
	b, _ := EncodeChange(d)
	f.Add(b)
	full, _ := EncodeFull(s.full())
	f.Add(full)
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := DecodeChange(b); err == nil {
			b2, err := EncodeChange(d)
			if err != nil {
				t.Fatalf("EncodeChange(%+v) = %v", d, err)
			}
			if d2, err := DecodeChange(b2); err != nil || !reflect.DeepEqual(normChange(d), normChange(d2)) {
				t.Fatalf("round trip %+v -> %+v, %v", d, d2, err)
			}
			// A decoded delta applies or is refused; it never panics.
			r := h.fromFull(Full{ID: d.ID})
			_ = r.apply(d, true)
			for _, op := range d.Ops {
				r.Get(op.Name)
			}
		}
		if fl, err := DecodeFull(b); err == nil {
			r := h.fromFull(fl)
			for name := range fl.Attrs {
				r.Get(name)
			}
		}
		_, _ = h.types.decode(b)
	})
}

// normChange makes empty and nil slices compare equal.
func normChange(d Change) Change {
	if len(d.Ops) == 0 {
		d.Ops = nil
	}
	for i := range d.Ops {
		if d.Ops[i].Value != nil && len(d.Ops[i].Value) == 0 {
			d.Ops[i].Value = []byte{}
		}
	}
	return d
}

// TestAttrListIndex: index finds every name and the insertion point of
// every missing one, by scan in short lists and by binary search in long
// ones.
func TestAttrListIndex(t *testing.T) {
	for n := range 12 {
		var l attrList
		for i := n - 1; i >= 0; i-- {
			l.set(fmt.Sprintf("a%02d", i*2), attr{})
		}
		for i := range 2*n + 1 {
			name := fmt.Sprintf("a%02d", i)
			if j, ok := l.index(name); ok != (i%2 == 0 && i < 2*n) || j != (i+1)/2 {
				t.Errorf("%d attributes: index(%s) = %d, %v", n, name, j, ok)
			}
		}
	}
}

// TestSetCopiesIsAllOrNothing: SetCopies stores and removes a batch of
// attributes at once, or, when one value cannot be stored, changes
// nothing at all.
func TestSetCopiesIsAllOrNothing(t *testing.T) {
	type unregistered struct{ A int }
	big := func(c byte) string { return string(bytes.Repeat([]byte{c}, 60)) }
	for _, tc := range []struct {
		name    string
		set     map[string]any
		remove  []string
		wantErr error  // errors.Is; nil: ok
		wantKey string // the NotDistributableError's attribute
	}{
		{"unregistered", map[string]any{"a": "changed", "b": "new", "z": unregistered{1}}, []string{"keep"}, nil, "z"},
		{"nil value", map[string]any{"a": "changed", "z": nil}, nil, nil, "z"},
		{"too large together", map[string]any{"a": big('a'), "b": big('b')}, []string{"keep"}, ErrSessionTooLarge, "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHost(t)
			h.maxSize = 100
			events := recordEvents(h)
			s := newStore(h, 0).newSession("node1", time.Hour)
			_ = s.Set("a", "x")
			_ = s.Set("keep", "k")
			_, _ = s.commit()
			*events = nil
			changed, err := s.SetCopies(tc.set, tc.remove)
			var nd *NotDistributableError
			if changed || !errors.As(err, &nd) || nd.Key != tc.wantKey || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("SetCopies = %v, %v; want false and a NotDistributableError for %q wrapping %v", changed, err, tc.wantKey, tc.wantErr)
			}
			if a, _ := s.GetString("a"); a != "x" || !reflect.DeepEqual(s.Names(), []string{"a", "keep"}) || s.Changed() || *events != nil {
				t.Errorf("after a refused SetCopies: a=%q, names %v, changed %v, events %v; want a=x, [a keep], nothing changed", a, s.Names(), s.Changed(), *events)
			}
		})
	}
}

// recordEvents records the attribute events of h's sessions.
func recordEvents(h *host) *[]string {
	var events []string
	h.addListener(Listener{
		AttributeAdded:    func(_ *Session, n string, _ any) { events = append(events, "added "+n) },
		AttributeReplaced: func(_ *Session, n string, _, _ any) { events = append(events, "replaced "+n) },
		AttributeRemoved:  func(_ *Session, n string, _ any) { events = append(events, "removed "+n) },
	})
	return &events
}

// TestSetCopies stores copies, skips values that did not change, removes,
// counts the session's size after the removals, and keeps local-only
// attributes as they are.
func TestSetCopies(t *testing.T) {
	h := testHost(t)
	h.maxSize = 110
	events := recordEvents(h)
	st := newStore(h, 0)
	s := st.newSession("node1", time.Hour)
	_ = s.Set("same", "x")
	_, _ = s.SetCopy("big", string(bytes.Repeat([]byte{'b'}, 50)))
	_, _ = s.commit()
	*events = nil
	items := map[string]int{"apple": 1}
	conn := make(chan int)
	changed, err := s.SetCopies(map[string]any{
		"same":       "x",
		"items":      items,
		"other":      string(bytes.Repeat([]byte{'o'}, 50)), // fits once big is gone
		"local.conn": conn,
	}, []string{"big", "absent"})
	if err != nil || !changed {
		t.Fatalf("SetCopies = %v, %v", changed, err)
	}
	items["apple"] = 2 // a copy was stored
	if got, _ := Attr[map[string]int](s, "items"); got["apple"] != 1 {
		t.Errorf("items = %v; want the copy taken by SetCopies", got)
	}
	if got, _ := s.Get("local.conn"); got != conn {
		t.Error("the local-only attribute is not the value given")
	}
	if want := []string{"items", "local.conn", "other", "same"}; !reflect.DeepEqual(s.Names(), want) {
		t.Errorf("names %v, want %v", s.Names(), want)
	}
	if want := []string{"added items", "added local.conn", "added other", "removed big"}; !reflect.DeepEqual(*events, want) {
		t.Errorf("events %q, want %q", *events, want)
	}
	d, _ := s.commit()
	var ops []string
	for _, op := range d.Ops {
		ops = append(ops, fmt.Sprintf("%s:%v", op.Name, op.Value != nil))
	}
	if want := []string{"big:false", "items:true", "other:true"}; !reflect.DeepEqual(ops, want) {
		t.Errorf("committed ops %v, want %v", ops, want)
	}
	if changed, err := s.SetCopies(map[string]any{"same": "x"}, []string{"absent"}); changed || err != nil {
		t.Errorf("SetCopies of nothing new = %v, %v; want false, nil", changed, err)
	}
	st.remove(s.ID())
	if _, err := s.SetCopies(map[string]any{"a": "x"}, nil); !errors.Is(err, ErrInvalidated) {
		t.Errorf("SetCopies on an invalidated session = %v, want ErrInvalidated", err)
	}
}
