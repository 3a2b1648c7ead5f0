package manager

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Types maps attribute value types to the names they travel under, so that
// a value stored on one node reads back on another as the same Go type. It
// is Cohort's gob.Register: every node of a cluster must register the same
// names for the same types before it starts serving.
//
// NewTypes registers the common built-in types. Anything else, a struct
// above all, must be registered with [Types.Register]; [Session.Set]
// refuses an unregistered type with a *NotDistributableError, on the node
// where it is set, rather than letting a peer fail to read it.
//
// Values inside interface-typed containers (map[string]any, []any) decode
// as msgpack's loose types: integers as int64, unsigned integers as uint64,
// floats as float64, maps as map[string]any. Register a concrete type to
// keep exact types. time.Time values keep their instant and come back in
// the local time zone.
//
// A Types is safe for concurrent use.
type Types struct {
	mu  sync.Mutex // serializes Register
	reg atomic.Pointer[registry]
}

// registry is one version of a Types' names. Every attribute set or read
// looks a name up and Register is rare, so a registration replaces the
// registry instead of locking readers out.
type registry struct {
	byType map[reflect.Type]string
	byName map[string]reflect.Type
}

// current returns the registry, empty if nothing was registered.
func (t *Types) current() *registry {
	if r := t.reg.Load(); r != nil {
		return r
	}
	return &registry{}
}

// NewTypes returns a registry holding the built-in types: string, bool,
// the sized and unsized integers, float32 and float64, []byte, time.Time,
// time.Duration, []string, []int, []int64, []float64, []any,
// map[string]string, map[string]int, map[string]int64, map[string]bool,
// map[string]float64 and map[string]any.
func NewTypes() *Types {
	r := &registry{byType: make(map[reflect.Type]string), byName: make(map[string]reflect.Type)}
	for name, v := range map[string]any{
		"string": "", "bool": false,
		"int": int(0), "int8": int8(0), "int16": int16(0), "int32": int32(0), "int64": int64(0),
		"uint": uint(0), "uint8": uint8(0), "uint16": uint16(0), "uint32": uint32(0), "uint64": uint64(0),
		"float32": float32(0), "float64": float64(0), "bytes": []byte(nil),
		"time": time.Time{}, "duration": time.Duration(0),
		"[]string": []string(nil), "[]int": []int(nil), "[]int64": []int64(nil), "[]float64": []float64(nil),
		"[]any":              []any(nil),
		"map[string]string":  map[string]string(nil),
		"map[string]int":     map[string]int(nil),
		"map[string]int64":   map[string]int64(nil),
		"map[string]bool":    map[string]bool(nil),
		"map[string]float64": map[string]float64(nil),
		"map[string]any":     map[string]any(nil),
	} {
		r.byType[reflect.TypeOf(v)] = name
		r.byName[name] = reflect.TypeOf(v)
	}
	t := new(Types)
	t.reg.Store(r)
	return t
}

// Register makes the type of sample storable in sessions under name. Use a
// name that is stable across releases, such as "shop.Cart"; pointer and
// value types are distinct, so register the one the application stores.
// Registering a name or type twice is an error unless both match.
func (t *Types) Register(name string, sample any) error {
	if name == "" || sample == nil {
		return errors.New("manager: Register needs a name and a non-nil sample value")
	}
	typ := reflect.TypeOf(sample)
	if _, err := msgpack.Marshal(sample); err != nil {
		return &NotDistributableError{Type: typ.String(), Err: err}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.current()
	if old, ok := r.byName[name]; ok && old != typ {
		return fmt.Errorf("manager: type name %q already registered for %v", name, old)
	}
	if old, ok := r.byType[typ]; ok && old != name {
		return fmt.Errorf("manager: type %v already registered as %q", typ, old)
	}
	next := &registry{byType: maps.Clone(r.byType), byName: maps.Clone(r.byName)}
	if next.byType == nil {
		next.byType, next.byName = make(map[reflect.Type]string), make(map[string]reflect.Type)
	}
	next.byType[typ], next.byName[name] = name, typ
	t.reg.Store(next)
	return nil
}

// MustRegister is Register for program initialisation: it panics on error.
func (t *Types) MustRegister(name string, sample any) {
	if err := t.Register(name, sample); err != nil {
		panic(err)
	}
}

// encode returns the wire form of v: a msgpack array of the type's name and
// the value.
func (t *Types) encode(v any) ([]byte, error) {
	if v == nil {
		return nil, errors.New("nil value; use Remove")
	}
	typ := reflect.TypeOf(v)
	r := t.current()
	name, ok := r.byType[typ]
	if !ok {
		return nil, r.unregistered(typ)
	}
	if b, ok := encodeScalar(name, v); ok {
		return b, nil
	}
	return encodeTagged(name, v)
}

// unregistered is the error for a value of typ, which is not registered.
// When typ's pointer or value counterpart is (the application registered
// Cart{} and stores &Cart{}, or the reverse), it says so.
func (r *registry) unregistered(typ reflect.Type) error {
	other := reflect.PointerTo(typ)
	if typ.Kind() == reflect.Pointer {
		other = typ.Elem()
	}
	if name, ok := r.byType[other]; ok {
		return fmt.Errorf("type %v is not registered, but %v is (as %q): pointer and value types are distinct, so store a %v, or register %v too, on every node", typ, other, name, other, typ)
	}
	return fmt.Errorf("type %v is not registered; register it with Types.Register on every node", typ)
}

// encodeTagged writes the array of name and v with msgpack's Encoder.
func encodeTagged(name string, v any) ([]byte, error) {
	// Keys sorted: equal values encode equally, so replicas compare.
	return encodeExact(true, func(enc *msgpack.Encoder) error {
		if err := enc.EncodeArrayLen(2); err != nil {
			return err
		}
		if err := enc.EncodeString(name); err != nil {
			return err
		}
		return enc.Encode(v)
	})
}

// encodeScalar writes the values sessions hold most, counters, names and
// flags (int, int64, string, bool), as encode's msgpack Encoder writes
// them, without one; ok is false for any other value.
func encodeScalar(name string, v any) ([]byte, bool) {
	var tmp [64]byte // written here, then copied out at its size
	w := appendStr(append(tmp[:0], msgpcode.FixedArrayLow|2), name)
	switch v := v.(type) {
	case int:
		w = appendInt(w, int64(v))
	case int64:
		w = append8(w, msgpcode.Int64, uint64(v))
	case string:
		w = appendStr(w, v)
	case bool:
		c := msgpcode.False
		if v {
			c = msgpcode.True
		}
		w = append(w, c)
	default:
		return nil, false
	}
	return bytes.Clone(w), true
}

// decode reads a value written by encode as the registered type.
func (t *Types) decode(b []byte) (v any, err error) {
	if v, ok := t.decodeScalar(b); ok {
		return v, nil
	}
	return t.decodeTagged(b)
}

// decodeTagged reads a value written by encode with msgpack's Decoder.
// The bytes come from peers: mpguard checks them first, and a panic of
// the decoder on malformed input is an error.
func (t *Types) decodeTagged(b []byte) (v any, err error) {
	if err := mpguard.Check(b); err != nil {
		return nil, fmt.Errorf("manager: malformed attribute value: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("manager: malformed attribute value: decoder panicked: %v", r)
		}
	}()
	dec := msgpack.GetDecoder()
	defer msgpack.PutDecoder(dec)
	dec.Reset(bytes.NewReader(b))
	dec.UseLooseInterfaceDecoding(true)
	n, err := dec.DecodeArrayLen()
	if err != nil || n != 2 {
		return nil, fmt.Errorf("manager: malformed attribute value (array of %d): %v", n, err)
	}
	name, err := dec.DecodeString()
	if err != nil {
		return nil, fmt.Errorf("manager: malformed attribute type: %w", err)
	}
	typ, ok := t.current().byName[name]
	if !ok {
		return nil, fmt.Errorf("manager: attribute type %q is not registered on this node", name)
	}
	p := reflect.New(typ)
	if err := dec.DecodeValue(p.Elem()); err != nil {
		return nil, fmt.Errorf("manager: decode %s: %w", name, err)
	}
	return p.Elem().Interface(), nil
}

// decodeScalar reads an int, int64, string or bool in the form
// encodeScalar writes it, straight from the bytes: the gorilla Store
// decodes a fresh copy of every value it hands out, on every request. ok
// is false for any other value or form, which decode reads with msgpack.
func (t *Types) decodeScalar(b []byte) (v any, ok bool) {
	r := wire{b: b}
	if n, err := r.arrayLen(); err != nil || n != 2 || r.i >= len(b) || !msgpcode.IsString(b[r.i]) {
		return nil, false
	}
	name, err := r.raw()
	if err != nil || r.i >= len(b) {
		return nil, false
	}
	c := b[r.i]
	switch typ := t.current().byName[string(name)]; typ {
	case intType, int64Type:
		if !msgpcode.IsFixedNum(c) && (c < msgpcode.Uint8 || c > msgpcode.Int64) {
			return nil, false
		}
		n, err := r.uint()
		if err != nil || c == msgpcode.Uint64 && n > math.MaxInt64 {
			return nil, false
		}
		if v = int64(n); typ == intType {
			v = int(n)
		}
	case stringType:
		if !msgpcode.IsString(c) {
			return nil, false
		}
		s, err := r.raw()
		if err != nil {
			return nil, false
		}
		v = string(s)
	case boolType:
		if c != msgpcode.True && c != msgpcode.False {
			return nil, false
		}
		r.i++
		v = c == msgpcode.True
	default:
		return nil, false
	}
	return v, r.i == len(b)
}

var (
	intType    = reflect.TypeFor[int]()
	int64Type  = reflect.TypeFor[int64]()
	stringType = reflect.TypeFor[string]()
	boolType   = reflect.TypeFor[bool]()
)

// NotDistributableError reports a value that cannot be stored in a
// replicated session: its type is not registered, or msgpack cannot encode
// it. Set returns it on the node where the value is set.
type NotDistributableError struct {
	Key  string // attribute name; empty from Types.Register
	Type string // the value's Go type
	Err  error
}

func (e *NotDistributableError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("manager: %s cannot be replicated: %v", e.Type, e.Err)
	}
	return fmt.Sprintf("manager: attribute %q of type %s cannot be replicated: %v", e.Key, e.Type, e.Err)
}

func (e *NotDistributableError) Unwrap() error { return e.Err }
