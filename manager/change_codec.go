package manager

import (
	"errors"
	"fmt"
	"slices"

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
	w := encoder{e: e}
	w.mapLen(n)
	w.str("i")
	w.str(c.ID)
	w.str("b")
	w.rev(&c.Base)
	w.str("r")
	w.rev(&c.Rev)
	if c.Created != 0 {
		w.str("c")
		w.int(c.Created)
	}
	w.str("a")
	w.int(c.Access)
	if c.MaxInactive != nil {
		w.str("m")
		w.int(*c.MaxInactive)
	}
	if c.Principal != nil {
		w.str("p")
		w.str(*c.Principal)
	}
	if len(c.Ops) > 0 {
		w.str("o")
		if w.err == nil {
			w.err = e.EncodeArrayLen(len(c.Ops))
		}
		for i := range c.Ops {
			w.mapLen(2)
			w.str("n")
			w.str(c.Ops[i].Name)
			w.str("v")
			if w.err == nil {
				w.err = e.EncodeBytes(c.Ops[i].Value)
			}
		}
	}
	if c.Invalidate {
		w.str("x")
		if w.err == nil {
			w.err = e.EncodeBool(true)
		}
	}
	return w.err
}

// encoder keeps the first error of a sequence of writes.
type encoder struct {
	e   *msgpack.Encoder
	err error
}

func (w *encoder) mapLen(n int) {
	if w.err == nil {
		w.err = w.e.EncodeMapLen(n)
	}
}

func (w *encoder) str(s string) {
	if w.err == nil {
		w.err = w.e.EncodeString(s)
	}
}

// int writes n as msgpack's reflection writes an int64 field: always 9
// bytes.
func (w *encoder) int(n int64) {
	if w.err == nil {
		w.err = w.e.EncodeInt64(n)
	}
}

func (w *encoder) rev(r *Rev) {
	w.mapLen(3)
	w.str("n")
	if w.err == nil {
		w.err = w.e.EncodeUint64(r.N)
	}
	w.str("t")
	w.int(r.At)
	w.str("o")
	w.str(r.Node)
}

// Field names of Change, Rev and Op, by index: readStruct calls back with
// the index.
var (
	changeFields = []string{"i", "b", "r", "c", "a", "m", "p", "o", "x"}
	revFields    = []string{"n", "t", "o"}
	opFields     = []string{"n", "v"}
)

// DecodeMsgpack reads c from a map in any key order, skipping keys it does
// not know (a newer node's fields); nil reads as the zero Change.
func (c *Change) DecodeMsgpack(d *msgpack.Decoder) error {
	*c = Change{}
	err := readStruct(d, changeFields, func(f int) (err error) {
		switch f {
		case 0:
			c.ID, err = d.DecodeString()
		case 1:
			err = readRev(d, &c.Base)
		case 2:
			err = readRev(d, &c.Rev)
		case 3:
			c.Created, err = d.DecodeInt64()
		case 4:
			c.Access, err = d.DecodeInt64()
		case 5:
			c.MaxInactive = nil
			if ok, err := notNil(d); !ok || err != nil {
				return err
			}
			v := new(int64)
			*v, err = d.DecodeInt64()
			c.MaxInactive = v
		case 6:
			c.Principal = nil
			if ok, err := notNil(d); !ok || err != nil {
				return err
			}
			v := new(string)
			*v, err = d.DecodeString()
			c.Principal = v
		case 7:
			c.Ops, err = readOps(d)
		case 8:
			c.Invalidate, err = d.DecodeBool()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("decode change: %w", err)
	}
	return nil
}

// readStruct reads a struct encoded as a map (nil for none) whose field
// names are names, calling field with the index of each name it meets;
// it skips names it does not know and refuses one met twice.
func readStruct(d *msgpack.Decoder, names []string, field func(int) error) error {
	c, err := d.PeekCode()
	if err != nil {
		return err
	}
	if !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 && c != msgpcode.Nil {
		return errStructForm
	}
	n, err := d.DecodeMapLen()
	var seen fieldSet
	for i := 0; i < n && err == nil; i++ {
		var key string
		if key, err = d.DecodeString(); err != nil {
			break
		}
		if f := slices.Index(names, key); f < 0 {
			err = d.Skip()
		} else if err = seen.see(f); err == nil {
			err = field(f)
		}
	}
	return err
}

// notNil reports whether the next value is not nil, and reads it if it is.
func notNil(d *msgpack.Decoder) (bool, error) {
	c, err := d.PeekCode()
	if err != nil {
		return false, err
	}
	if c == msgpcode.Nil {
		return false, d.DecodeNil()
	}
	return true, nil
}

func readRev(d *msgpack.Decoder, r *Rev) error {
	return readStruct(d, revFields, func(f int) (err error) {
		switch f {
		case 0:
			r.N, err = d.DecodeUint64()
		case 1:
			r.At, err = d.DecodeInt64()
		case 2:
			r.Node, err = d.DecodeString()
		}
		return err
	})
}

// maxOpsPrealloc bounds the room made for a change's operations before
// they are read: a header may claim more than the frame holds.
const maxOpsPrealloc = 64

func readOps(d *msgpack.Decoder) ([]Op, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	ops := make([]Op, 0, min(n, maxOpsPrealloc))
	for range n {
		var op Op
		err := readStruct(d, opFields, func(f int) (err error) {
			if f == 0 {
				op.Name, err = d.DecodeString()
			} else {
				op.Value, err = d.DecodeBytes()
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

var _ msgpack.CustomDecoder = (*Full)(nil)

// fullFields are the field names of Full, by index.
var fullFields = []string{"i", "r", "c", "a", "m", "p", "t"}

// DecodeMsgpack reads f as reflection would from the map its struct tags
// describe (Full is written by reflection), but refuses an extension
// where the attribute map belongs: msgpack's own map decoding skips an
// extension header and reads the bytes after it as a map header, which
// lets a few bytes claim a million entries that mpguard.Check, reading
// them as the extension they are, cannot see.
func (f *Full) DecodeMsgpack(d *msgpack.Decoder) error {
	*f = Full{}
	err := readStruct(d, fullFields, func(i int) (err error) {
		switch i {
		case 0:
			f.ID, err = d.DecodeString()
		case 1:
			err = readRev(d, &f.Rev)
		case 2:
			f.Created, err = d.DecodeInt64()
		case 3:
			f.Access, err = d.DecodeInt64()
		case 4:
			f.MaxInactive, err = d.DecodeInt64()
		case 5:
			f.Principal, err = d.DecodeString()
		case 6:
			f.Attrs, err = readAttrs(d)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("decode session: %w", err)
	}
	return nil
}

// maxAttrsPrealloc bounds the room made for a session's attributes before
// they are read.
const maxAttrsPrealloc = 64

// readAttrs reads a map of attribute names to wire values; nil reads as
// nil.
func readAttrs(d *msgpack.Decoder) (map[string][]byte, error) {
	c, err := d.PeekCode()
	if err != nil {
		return nil, err
	}
	if c == msgpcode.Nil {
		return nil, d.DecodeNil()
	}
	if !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		return nil, fmt.Errorf("msgpack: attributes are not a map (code 0x%x)", c)
	}
	n, err := d.DecodeMapLen()
	if err != nil {
		return nil, err
	}
	attrs := make(map[string][]byte, min(n, maxAttrsPrealloc))
	for range n {
		name, err := d.DecodeString()
		if err != nil {
			return nil, err
		}
		if attrs[name], err = d.DecodeBytes(); err != nil {
			return nil, err
		}
	}
	return attrs, nil
}
