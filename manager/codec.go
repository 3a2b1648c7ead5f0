package manager

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"
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
	mu     sync.RWMutex
	byType map[reflect.Type]string
	byName map[string]reflect.Type
}

// NewTypes returns a registry holding the built-in types: string, bool,
// the sized and unsized integers, float32 and float64, []byte, time.Time,
// time.Duration, []string, []int, []int64, []float64, []any,
// map[string]string, map[string]int, map[string]int64, map[string]bool,
// map[string]float64 and map[string]any.
func NewTypes() *Types {
	t := &Types{byType: make(map[reflect.Type]string), byName: make(map[string]reflect.Type)}
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
		t.add(name, reflect.TypeOf(v))
	}
	return t
}

func (t *Types) add(name string, typ reflect.Type) {
	t.byType[typ] = name
	t.byName[name] = typ
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
	if old, ok := t.byName[name]; ok && old != typ {
		return fmt.Errorf("manager: type name %q already registered for %v", name, old)
	}
	if old, ok := t.byType[typ]; ok && old != name {
		return fmt.Errorf("manager: type %v already registered as %q", typ, old)
	}
	t.add(name, typ)
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
	t.mu.RLock()
	name, ok := t.byType[typ]
	t.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("type %v is not registered; register it with Types.Register on every node", typ)
	}
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

// decode reads a value written by encode as the registered type. The
// bytes come from peers: mpguard checks them first, and a panic of the
// decoder on malformed input is an error.
func (t *Types) decode(b []byte) (v any, err error) {
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
	t.mu.RLock()
	typ, ok := t.byName[name]
	t.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("manager: attribute type %q is not registered on this node", name)
	}
	p := reflect.New(typ)
	if err := dec.DecodeValue(p.Elem()); err != nil {
		return nil, fmt.Errorf("manager: decode %s: %w", name, err)
	}
	return p.Elem().Interface(), nil
}

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
