package mpguard

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxDepth is the deepest nesting of arrays and maps Check accepts.
const MaxDepth = 64

// ErrInvalid is wrapped by every error Check returns.
var ErrInvalid = errors.New("mpguard: invalid msgpack")

// Unmarshal checks b with Check, then decodes it into v with
// msgpack.Unmarshal. A panic of the decoder is an error wrapping
// ErrInvalid: msgpack v5.4.1 panics on some malformed input (a nil where
// a struct such as time.Time is expected inside a struct sent as an
// array).
func Unmarshal(b []byte, v any) (err error) {
	if err := Check(b); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: decoder panicked: %v", ErrInvalid, r)
		}
	}()
	return msgpack.Unmarshal(b, v)
}

// Check walks the msgpack value at the start of b (bytes after it are not
// looked at) and reports whether it is complete, within MaxDepth, and
// claims no more elements than b has bytes left. It does not allocate.
func Check(b []byte) error {
	_, err := walk(b)
	return err
}

// Len is Check, returning the length of the value: a decoder skips a
// value it does not know with it.
func Len(b []byte) (int, error) { return walk(b) }

// walk is Check, returning the length of the value.
func walk(b []byte) (int, error) {
	// left[i] is how many values the container open at depth i still
	// holds; pending is their sum plus the values not yet begun at depth 0.
	var left [MaxDepth + 1]int64
	depth := 0
	left[0] = 1
	pending := int64(1)
	pos := 0
	for pending > 0 {
		for left[depth] == 0 {
			depth-- // the container at this depth is complete
		}
		if pos >= len(b) {
			return 0, fmt.Errorf("%w: ends inside a value at byte %d", ErrInvalid, pos)
		}
		c := b[pos]
		pos++
		left[depth]--
		pending--
		skip, elems, err := header(c, b[pos:])
		if err != nil {
			return 0, fmt.Errorf("%w: %v at byte %d", ErrInvalid, err, pos-1)
		}
		pos += skip
		if pos > len(b) {
			return 0, fmt.Errorf("%w: value at byte %d runs past the end", ErrInvalid, pos-1-skip)
		}
		if elems < 0 {
			continue // not a container
		}
		if pending+elems > int64(len(b)-pos) { // each takes a byte at least
			return 0, fmt.Errorf("%w: container at byte %d claims %d elements with %d bytes left", ErrInvalid, pos-1-skip, elems, len(b)-pos)
		}
		if elems == 0 {
			continue
		}
		if depth == MaxDepth {
			return 0, fmt.Errorf("%w: nested deeper than %d", ErrInvalid, MaxDepth)
		}
		depth++
		left[depth] = elems
		pending += elems
	}
	return pos, nil
}

// header reads the rest of the header of a value whose first byte is c,
// from rest. It returns how many bytes follow c up to the next value's
// first byte (for a string, the header and the string; for a container,
// the header only), and for an array or map the number of values it holds
// (a map's keys and values), or -1.
func header(c byte, rest []byte) (skip int, elems int64, err error) {
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixint, nil, bool
		return 0, -1, nil
	case c <= 0x8f: // fixmap
		return 0, 2 * int64(c&0x0f), nil
	case c <= 0x9f: // fixarray
		return 0, int64(c & 0x0f), nil
	case c <= 0xbf: // fixstr
		return int(c & 0x1f), -1, nil
	}
	switch c {
	case 0xcc, 0xd0: // uint8, int8
		return 1, -1, nil
	case 0xcd, 0xd1: // uint16, int16
		return 2, -1, nil
	case 0xca, 0xce, 0xd2: // float32, uint32, int32
		return 4, -1, nil
	case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
		return 8, -1, nil
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16: type, data
		return 1 + 1<<(c-0xd4), -1, nil
	case 0xc4, 0xd9: // bin8, str8
		return sized(rest, 1, 0)
	case 0xc5, 0xda: // bin16, str16
		return sized(rest, 2, 0)
	case 0xc6, 0xdb: // bin32, str32
		return sized(rest, 4, 0)
	case 0xc7: // ext8: length, type, data
		return sized(rest, 1, 1)
	case 0xc8: // ext16
		return sized(rest, 2, 1)
	case 0xc9: // ext32
		return sized(rest, 4, 1)
	case 0xdc, 0xdd, 0xde, 0xdf: // array 16/32, map 16/32
		size := 2
		if c == 0xdd || c == 0xdf {
			size = 4
		}
		l, err := length(rest, size)
		if c >= 0xde {
			l *= 2
		}
		return size, l, err
	}
	return 0, 0, fmt.Errorf("reserved byte 0x%x", c) // 0xc1
}

// sized is the skip of a string, binary or extension: a length of size
// bytes, extra bytes (an extension's type), then that many bytes.
func sized(rest []byte, size, extra int) (int, int64, error) {
	l, err := length(rest, size)
	if err != nil {
		return 0, 0, err
	}
	if left := int64(len(rest) - size - extra); l > left {
		return 0, 0, fmt.Errorf("%d bytes claimed, %d left", l, max(left, 0))
	}
	return size + extra + int(l), -1, nil
}

// length reads a big-endian length of size bytes (1, 2 or 4).
func length(rest []byte, size int) (int64, error) {
	if len(rest) < size {
		return 0, errors.New("length runs past the end")
	}
	switch size {
	case 1:
		return int64(rest[0]), nil
	case 2:
		return int64(binary.BigEndian.Uint16(rest)), nil
	}
	return int64(binary.BigEndian.Uint32(rest)), nil
}
