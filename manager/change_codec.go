package manager

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/cohort-cluster/cohort/internal/mpguard"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// A Change is the one message every write sends to every replica, so it has
// its own codec: the same msgpack map, byte for byte, that msgpack's
// reflection makes of the struct tags (docs/wire-format.md), without the
// reflection. Each replica decodes every change, and reflection was most of
// that cost.

var (
	_ msgpack.CustomEncoder = Change{}
	_ msgpack.CustomDecoder = (*Change)(nil)
)

// errStructForm refuses a struct sent as an array, and errDuplicate a
// field sent twice: Cohort never sends either.
var (
	errStructForm = errors.New("msgpack: struct not encoded as a map")
	errDuplicate  = errors.New("msgpack: field sent twice")
)

// fieldSet records the fields of a struct read so far.
type fieldSet uint16

// see adds field i and fails if it was already read.
func (f *fieldSet) see(i int) error {
	if *f&(1<<i) != 0 {
		return errDuplicate
	}
	*f |= 1 << i
	return nil
}

// EncodeMsgpack writes c as the map its struct tags describe, leaving out
// the omitempty fields that are empty.
func (c Change) EncodeMsgpack(e *msgpack.Encoder) error {
	_, err := e.Writer().Write(appendChange(make([]byte, 0, c.sizeHint()), &c))
	return err
}

// sizeHint is at least the length of c's encoding.
func (c *Change) sizeHint() int {
	n := 112 + len(c.ID) + len(c.Base.Node) + len(c.Rev.Node)
	if c.Principal != nil {
		n += 5 + len(*c.Principal)
	}
	for i := range c.Ops {
		n += 16 + len(c.Ops[i].Name) + len(c.Ops[i].Value)
	}
	return n
}

// appendChange appends c's encoding to b. Every write sends one, so it is
// written straight into the message's bytes rather than through an
// Encoder, which costs a call through an interface per byte group.
func appendChange(b []byte, c *Change) []byte {
	n := 4 // i, b, r, a
	if c.Created != 0 {
		n++
	}
	if c.MaxInactive != nil {
		n++
	}
	if c.Principal != nil {
		n++
	}
	if len(c.Ops) > 0 {
		n++
	}
	if c.Invalidate {
		n++
	}
	b = appendLen(b, msgpcode.FixedMapLow, msgpcode.Map16, msgpcode.Map32, n)
	b = appendStr(b, "i")
	b = appendStr(b, c.ID)
	b = appendStr(b, "b")
	b = appendRev(b, &c.Base)
	b = appendStr(b, "r")
	b = appendRev(b, &c.Rev)
	if c.Created != 0 {
		b = appendStr(b, "c")
		b = append8(b, msgpcode.Int64, uint64(c.Created))
	}
	b = appendStr(b, "a")
	b = append8(b, msgpcode.Int64, uint64(c.Access))
	if c.MaxInactive != nil {
		b = appendStr(b, "m")
		b = append8(b, msgpcode.Int64, uint64(*c.MaxInactive))
	}
	if c.Principal != nil {
		b = appendStr(b, "p")
		b = appendStr(b, *c.Principal)
	}
	if len(c.Ops) > 0 {
		b = appendStr(b, "o")
		b = appendLen(b, msgpcode.FixedArrayLow, msgpcode.Array16, msgpcode.Array32, len(c.Ops))
		for i := range c.Ops {
			b = append(b, msgpcode.FixedMapLow|2)
			b = appendStr(b, "n")
			b = appendStr(b, c.Ops[i].Name)
			b = appendStr(b, "v")
			b = appendBin(b, c.Ops[i].Value)
		}
	}
	if c.Invalidate {
		b = appendStr(b, "x")
		b = append(b, msgpcode.True)
	}
	return b
}

// The append functions write what msgpack's Encoder writes for the same
// call: EncodeUint64 and EncodeInt64 always take 9 bytes, lengths the
// fewest.

func appendRev(b []byte, r *Rev) []byte {
	b = append(b, msgpcode.FixedMapLow|3)
	b = appendStr(b, "n")
	b = append8(b, msgpcode.Uint64, r.N)
	b = appendStr(b, "t")
	b = append8(b, msgpcode.Int64, uint64(r.At))
	b = appendStr(b, "o")
	return appendStr(b, r.Node)
}

func append8(b []byte, code byte, n uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, code), n)
}

// appendLen writes a map or array header of n, with its fix, 16-bit and
// 32-bit codes.
func appendLen(b []byte, fix, c16, c32 byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, fix|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, c16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, c32), uint32(n))
}

// appendInt writes n as EncodeInt does: in the fewest bytes.
func appendInt(b []byte, n int64) []byte {
	switch {
	case n >= 0 && n <= math.MaxInt8, n < 0 && n >= -32:
		return append(b, byte(n)) // a positive or negative fixnum
	case n > 0 && n <= math.MaxUint8:
		return append(b, msgpcode.Uint8, byte(n))
	case n > 0 && n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, msgpcode.Uint16), uint16(n))
	case n > 0 && n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, msgpcode.Uint32), uint32(n))
	case n > 0:
		return append8(b, msgpcode.Uint64, uint64(n))
	case n >= math.MinInt8:
		return append(b, msgpcode.Int8, byte(n))
	case n >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, msgpcode.Int16), uint16(n))
	case n >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, msgpcode.Int32), uint32(n))
	}
	return append8(b, msgpcode.Int64, uint64(n))
}

func appendStr(b []byte, s string) []byte {
	if len(s) < 32 {
		b = append(b, msgpcode.FixedStrLow|byte(len(s)))
	} else {
		b = appendSize(b, len(s), msgpcode.Str8, msgpcode.Str16, msgpcode.Str32)
	}
	return append(b, s...)
}

// appendBin writes v as EncodeBytes does: nil as nil.
func appendBin(b []byte, v []byte) []byte {
	if v == nil {
		return append(b, msgpcode.Nil)
	}
	return append(appendSize(b, len(v), msgpcode.Bin8, msgpcode.Bin16, msgpcode.Bin32), v...)
}

// appendSize writes the header of a string or binary of n bytes, with its
// 8, 16 and 32-bit codes.
func appendSize(b []byte, n int, c8, c16, c32 byte) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(b, c8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, c16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, c32), uint32(n))
}

// Field names of Change, Rev, Op and Full, one byte each, by index:
// readStruct calls back with the index.
const (
	changeFields = "ibrcampox"
	revFields    = "nto"
	opFields     = "nv"
	fullFields   = "ircamptoe"
)

// DecodeMsgpack reads c from a map in any key order, skipping keys it does
// not know (a newer node's fields); nil reads as the zero Change.
func (c *Change) DecodeMsgpack(d *msgpack.Decoder) error { return fromRaw(d, c.decode) }

// fromRaw reads the next value of d whole and decodes it with decode.
func fromRaw(d *msgpack.Decoder, decode func([]byte) error) error {
	raw, err := d.DecodeRaw()
	if err != nil {
		return err
	}
	return decode(raw)
}

// decode reads c from the start of b as DecodeMsgpack does, straight from
// the bytes: the path every replica takes for every change.
func (c *Change) decode(b []byte) error {
	*c = Change{}
	r := wire{b: b}
	err := r.readStruct(changeFields, func(f int) (err error) {
		switch f {
		case 0:
			c.ID, err = r.str()
		case 1:
			err = r.readRev(&c.Base)
		case 2:
			err = r.readRev(&c.Rev)
		case 3:
			c.Created, err = r.int()
		case 4:
			c.Access, err = r.int()
		case 5:
			c.MaxInactive = nil
			if r.null() {
				return nil
			}
			v := new(int64)
			*v, err = r.int()
			c.MaxInactive = v
		case 6:
			c.Principal = nil
			if r.null() {
				return nil
			}
			v := new(string)
			*v, err = r.str()
			c.Principal = v
		case 7:
			c.Ops, err = r.readOps()
		case 8:
			c.Invalidate, err = r.bool()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("decode change: %w", err)
	}
	return nil
}

var _ msgpack.CustomDecoder = (*Full)(nil)

// DecodeMsgpack reads f as reflection would from the map its struct tags
// describe (Full is written by reflection), but refuses an extension
// where the attribute map belongs: msgpack's own map decoding skips an
// extension header and reads the bytes after it as a map header, which
// lets a few bytes claim a million entries that mpguard.Check, reading
// them as the extension they are, cannot see.
func (f *Full) DecodeMsgpack(d *msgpack.Decoder) error {
	return fromRaw(d, func(b []byte) error {
		_, err := f.decode(b)
		return err
	})
}

// decode reads f from the start of b as DecodeMsgpack does and returns
// how many bytes it read.
func (f *Full) decode(b []byte) (int, error) {
	*f = Full{}
	r := wire{b: b}
	err := r.readStruct(fullFields, func(i int) (err error) {
		switch i {
		case 0:
			f.ID, err = r.str()
		case 1:
			err = r.readRev(&f.Rev)
		case 2:
			f.Created, err = r.int()
		case 3:
			f.Access, err = r.int()
		case 4:
			f.MaxInactive, err = r.int()
		case 5:
			f.Principal, err = r.str()
		case 6:
			f.Attrs, err = r.readAttrs()
		case 7:
			f.Owner, err = r.str()
		case 8:
			f.Term, err = r.uint()
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("decode session: %w", err)
	}
	return r.i, nil
}

// decodeFulls reads an array of sessions (nil reads as none).
func decodeFulls(b []byte) ([]Full, error) {
	r := wire{b: b}
	n, err := r.arrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]Full, 0, min(n, maxPrealloc))
	for range n {
		var f Full
		k, err := f.decode(r.b[r.i:])
		if err != nil {
			return nil, err
		}
		r.i += k
		out = append(out, f)
	}
	return out, nil
}

// maxPrealloc bounds the room made for a container's elements before they
// are read: a header may claim more than the input holds.
const maxPrealloc = 64

// wire reads msgpack values from a byte slice, each as msgpack's Decoder
// reads it into the same Go type: integers of any width and sign into an
// int64 or a uint64, strings and binaries alike into a string or a
// []byte, nil into the zero value. Strings and bytes are copied out of b.
type wire struct {
	b []byte
	i int
}

// errEnd is a value that runs past the end of the input.
var errEnd = errors.New("msgpack: unexpected end of input")

// code reads one byte.
func (r *wire) code() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errEnd
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

// next reads n bytes, without copying them.
func (r *wire) next(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.i {
		return nil, errEnd
	}
	s := r.b[r.i : r.i+n]
	r.i += n
	return s, nil
}

// be reads a big-endian unsigned integer of size bytes (1, 2, 4 or 8).
func (r *wire) be(size int) (uint64, error) {
	s, err := r.next(size)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range s {
		n = n<<8 | uint64(c)
	}
	return n, nil
}

// null reads a nil and reports whether there was one.
func (r *wire) null() bool {
	if r.i < len(r.b) && r.b[r.i] == msgpcode.Nil {
		r.i++
		return true
	}
	return false
}

// skip steps over one value of any type.
func (r *wire) skip() error {
	n, err := mpguard.Len(r.b[r.i:])
	r.i += n
	return err
}

// length reads the header of a container whose codes are fix (with its
// mask), c16 and c32; nil reads as -1.
func (r *wire) length(what string, low, high, c16, c32 byte) (int, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	switch {
	case c == msgpcode.Nil:
		return -1, nil
	case c >= low && c <= high:
		return int(c - low), nil
	case c == c16:
		n, err := r.be(2)
		return int(n), err
	case c == c32:
		n, err := r.be(4)
		return int(n), err
	}
	return 0, fmt.Errorf("msgpack: invalid code=%x decoding %s length", c, what)
}

func (r *wire) arrayLen() (int, error) {
	return r.length("array", msgpcode.FixedArrayLow, msgpcode.FixedArrayHigh, msgpcode.Array16, msgpcode.Array32)
}

// mapLen reads a map header. Unlike msgpack's DecodeMapLen, it refuses an
// extension header before it.
func (r *wire) mapLen() (int, error) {
	return r.length("map", msgpcode.FixedMapLow, msgpcode.FixedMapHigh, msgpcode.Map16, msgpcode.Map32)
}

// raw reads a string or binary without copying it; nil reads as nil.
func (r *wire) raw() ([]byte, error) {
	c, err := r.code()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c == msgpcode.Nil:
		return nil, nil
	case msgpcode.IsFixedString(c):
		n = uint64(c & msgpcode.FixedStrMask)
	case c == msgpcode.Str8 || c == msgpcode.Bin8:
		n, err = r.be(1)
	case c == msgpcode.Str16 || c == msgpcode.Bin16:
		n, err = r.be(2)
	case c == msgpcode.Str32 || c == msgpcode.Bin32:
		n, err = r.be(4)
	default:
		return nil, fmt.Errorf("msgpack: invalid code=%x decoding string/bytes length", c)
	}
	if err != nil {
		return nil, err
	}
	return r.next(int(n)) // empty, not nil, for an empty one
}

func (r *wire) str() (string, error) {
	s, err := r.raw()
	return string(s), err
}

// name reads a string that recurs from message to message (a route, an
// attribute name) as its shared copy in wireNames.
func (r *wire) name() (string, error) {
	s, err := r.raw()
	return wireNames.get(s), err
}

// bytes reads a copy of a binary or string: nil for nil, empty (not nil)
// for an empty one.
func (r *wire) bytes() ([]byte, error) {
	s, err := r.raw()
	if s == nil || err != nil {
		return nil, err
	}
	return append(make([]byte, 0, len(s)), s...), nil
}

func (r *wire) bool() (bool, error) {
	c, err := r.code()
	if err != nil {
		return false, err
	}
	switch c {
	case msgpcode.Nil, msgpcode.False:
		return false, nil
	case msgpcode.True:
		return true, nil
	}
	return false, fmt.Errorf("msgpack: invalid code=%x decoding bool", c)
}

// uint reads any integer as msgpack's DecodeUint64 does: a negative one
// wraps.
func (r *wire) uint() (uint64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	if msgpcode.IsFixedNum(c) {
		return uint64(int8(c)), nil
	}
	var n uint64
	switch c {
	case msgpcode.Nil:
		return 0, nil
	case msgpcode.Uint8:
		n, err = r.be(1)
	case msgpcode.Int8:
		n, err = r.be(1)
		n = uint64(int8(n))
	case msgpcode.Uint16:
		n, err = r.be(2)
	case msgpcode.Int16:
		n, err = r.be(2)
		n = uint64(int16(n))
	case msgpcode.Uint32:
		n, err = r.be(4)
	case msgpcode.Int32:
		n, err = r.be(4)
		n = uint64(int32(n))
	case msgpcode.Uint64, msgpcode.Int64:
		n, err = r.be(8)
	default:
		return 0, fmt.Errorf("msgpack: invalid code=%x decoding integer", c)
	}
	return n, err
}

func (r *wire) int() (int64, error) {
	n, err := r.uint()
	return int64(n), err
}

// readStruct reads a struct encoded as a map (nil for none) whose field
// names are the bytes of names, calling field with the index of each name
// it meets; it skips names it does not know and refuses one met twice.
func (r *wire) readStruct(names string, field func(int) error) error {
	if r.i < len(r.b) {
		if c := r.b[r.i]; !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 && c != msgpcode.Nil {
			return errStructForm
		}
	}
	n, err := r.mapLen()
	var seen fieldSet
	for i := 0; i < n && err == nil; i++ {
		var key []byte
		if key, err = r.raw(); err != nil {
			break
		}
		f := -1
		if len(key) == 1 {
			f = strings.IndexByte(names, key[0])
		}
		if f < 0 {
			err = r.skip()
		} else if err = seen.see(f); err == nil {
			err = field(f)
		}
	}
	return err
}

func (r *wire) readRev(rev *Rev) error {
	return r.readStruct(revFields, func(f int) (err error) {
		switch f {
		case 0:
			rev.N, err = r.uint()
		case 1:
			rev.At, err = r.int()
		case 2:
			rev.Node, err = r.name()
		}
		return err
	})
}

func (r *wire) readOps() ([]Op, error) {
	n, err := r.arrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	ops := make([]Op, 0, min(n, maxPrealloc))
	for range n {
		var op Op
		err := r.readStruct(opFields, func(f int) (err error) {
			if f == 0 {
				op.Name, err = r.name()
			} else {
				op.Value, err = r.bytes()
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// readAttrs reads a map of attribute names to wire values; nil reads as
// nil.
func (r *wire) readAttrs() (map[string][]byte, error) {
	n, err := r.mapLen()
	if err != nil || n < 0 {
		return nil, err
	}
	attrs := make(map[string][]byte, min(n, maxPrealloc))
	for range n {
		name, err := r.str()
		if err != nil {
			return nil, err
		}
		if attrs[name], err = r.bytes(); err != nil {
			return nil, err
		}
	}
	return attrs, nil
}
