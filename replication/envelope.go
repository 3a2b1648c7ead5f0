package replication

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The envelope is a msgpack array of seven fields. It is encoded and
// decoded by hand rather than through msgpack's reflection: it is on the
// path of every frame, and the hand-written codec allocates nothing and
// lets the receiver hand the body to its handler without copying it. Any
// msgpack implementation reads and writes the same bytes.

// appendEnvelope appends the msgpack encoding of e to b.
func appendEnvelope(b []byte, e *Envelope) []byte {
	b = append(b, 0x97) // fixarray of 7
	b = appendUint(b, uint64(e.Version))
	b = appendUint(b, uint64(e.Type))
	b = appendStr(b, e.From)
	b = appendStr(b, e.Domain)
	b = appendUint(b, e.Seq)
	b = appendUint(b, uint64(e.Mode))
	return appendBin(b, e.Body)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 0x80:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendBin(b []byte, p []byte) []byte {
	if p == nil {
		return append(b, 0xc0) // nil, as msgpack writes a nil slice
	}
	n := len(p)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, p...)
}

// envelopeView is a decoded envelope whose strings and body still point
// into the frame buffer.
type envelopeView struct {
	Version uint8
	Type    MsgType
	From    []byte
	Domain  []byte
	Seq     uint64
	Mode    SendMode
	Body    []byte
}

// parseEnvelope decodes b without copying: the view is valid as long as b
// is. It accepts every msgpack form of each field, and refuses trailing
// bytes.
func parseEnvelope(b []byte) (envelopeView, error) {
	var v envelopeView
	r := reader{b: b}
	if n, ok := r.arrayLen(); !ok || n != 7 {
		return v, fmt.Errorf("%w: envelope is not an array of 7", ErrMalformed)
	}
	version, ok1 := r.uint(math.MaxUint8)
	typ, ok2 := r.uint(math.MaxUint16)
	v.From, ok1 = r.str(ok1 && ok2)
	v.Domain, ok1 = r.str(ok1)
	v.Seq, ok2 = r.uint(math.MaxUint64)
	mode, ok3 := r.uint(math.MaxUint8)
	v.Body, ok1 = r.bin(ok1 && ok2 && ok3)
	if !ok1 || r.i != len(b) {
		return envelopeView{}, fmt.Errorf("%w: bad envelope field at byte %d", ErrMalformed, r.i)
	}
	v.Version, v.Type, v.Mode = uint8(version), MsgType(typ), SendMode(mode)
	if v.Version != ProtocolVersion {
		return envelopeView{}, fmt.Errorf("%w: %d", ErrVersion, v.Version)
	}
	if v.Mode > Sync {
		return envelopeView{}, fmt.Errorf("%w: send mode %d", ErrMalformed, v.Mode)
	}
	return v, nil
}

// reader walks a msgpack buffer; every method reports failure instead of
// panicking on short or malformed input.
type reader struct {
	b []byte
	i int
}

func (r *reader) take(n int) ([]byte, bool) {
	if n < 0 || len(r.b)-r.i < n {
		return nil, false
	}
	p := r.b[r.i : r.i+n]
	r.i += n
	return p, true
}

func (r *reader) byte() (byte, bool) {
	p, ok := r.take(1)
	if !ok {
		return 0, false
	}
	return p[0], true
}

// size reads a 1, 2 or 4-byte big-endian length.
func (r *reader) size(width int) (int, bool) {
	p, ok := r.take(width)
	if !ok {
		return 0, false
	}
	switch width {
	case 1:
		return int(p[0]), true
	case 2:
		return int(binary.BigEndian.Uint16(p)), true
	}
	return int(binary.BigEndian.Uint32(p)), true
}

func (r *reader) arrayLen() (int, bool) {
	c, ok := r.byte()
	switch {
	case !ok:
		return 0, false
	case c&0xf0 == 0x90:
		return int(c & 0x0f), true
	case c == 0xdc:
		return r.size(2)
	case c == 0xdd:
		return r.size(4)
	}
	return 0, false
}

// uint reads a non-negative integer of at most max.
func (r *reader) uint(max uint64) (uint64, bool) {
	c, ok := r.byte()
	if !ok {
		return 0, false
	}
	var v uint64
	switch {
	case c < 0x80:
		v = uint64(c)
	case c == 0xcc || c == 0xcd || c == 0xce || c == 0xcf:
		p, ok := r.take(1 << (c - 0xcc))
		if !ok {
			return 0, false
		}
		for _, x := range p {
			v = v<<8 | uint64(x)
		}
	default:
		return 0, false
	}
	return v, v <= max
}

// str reads a string; ok carries the earlier fields' success.
func (r *reader) str(ok bool) ([]byte, bool) {
	if !ok {
		return nil, false
	}
	c, ok := r.byte()
	var n int
	switch {
	case !ok:
		return nil, false
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xd9:
		n, ok = r.size(1)
	case c == 0xda:
		n, ok = r.size(2)
	case c == 0xdb:
		n, ok = r.size(4)
	default:
		return nil, false
	}
	if !ok {
		return nil, false
	}
	return r.take(n)
}

// bin reads a byte string (or nil, or a string); ok carries the earlier
// fields' success.
func (r *reader) bin(ok bool) ([]byte, bool) {
	if !ok || r.i >= len(r.b) {
		return nil, false
	}
	var n int
	switch c := r.b[r.i]; c {
	case 0xc0:
		r.i++
		return nil, true
	case 0xc4, 0xc5, 0xc6:
		r.i++
		n, ok = r.size(1 << (c - 0xc4))
	default:
		return r.str(true)
	}
	if !ok {
		return nil, false
	}
	return r.take(n)
}
