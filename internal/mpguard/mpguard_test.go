package mpguard

import (
	"bytes"
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

type sample struct {
	Name  string            `msgpack:"n"`
	Tags  []string          `msgpack:"t"`
	Attrs map[string][]byte `msgpack:"a"`
	At    time.Time         `msgpack:"w"`
	F     float64           `msgpack:"f"`
	G     float32           `msgpack:"g"`
	Ptr   *int64            `msgpack:"p"`
}

func samples() []any {
	big := int64(math.MaxInt64)
	return []any{
		nil, true, false, 0, 1, -1, 127, 128, -33, 255, 256, 65535, 65536, int64(math.MinInt64), uint64(math.MaxUint64),
		int8(-5), int16(-300), int32(-70000), uint8(200), uint16(60000), uint32(1 << 31), float32(1.5), 2.25,
		"", "short", strings.Repeat("x", 31), strings.Repeat("y", 32), strings.Repeat("z", 300), strings.Repeat("w", 70000),
		[]byte{}, []byte{1, 2, 3}, bytes.Repeat([]byte{7}, 300), bytes.Repeat([]byte{8}, 70000),
		[]any{}, []any{1, "a", nil}, make([]int, 16), make([]int, 70000),
		map[string]any{}, map[string]any{"a": 1, "b": []any{map[string]any{"c": nil}}}, map[int]int{1: 2, 3: 4},
		time.Unix(1700000000, 5), time.Unix(1<<40, 0), time.Unix(1, 0),
		sample{Name: "s", Tags: []string{"a", "b"}, Attrs: map[string][]byte{"k": {1}}, At: time.Unix(5, 6), F: 1e300, G: 3, Ptr: &big},
		[]sample{{}, {Name: "x"}},
	}
}

// TestCheckAcceptsWhatMsgpackWrites: every encoding msgpack writes passes,
// and the walk ends exactly at its end.
func TestCheckAcceptsWhatMsgpackWrites(t *testing.T) {
	for i, v := range samples() {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		n, err := walk(append(b, 0xc1, 0xc1)) // bytes after the value are not looked at
		if err != nil || n != len(b) {
			t.Errorf("sample %d (%T): walk = %d, %v; want %d, nil", i, v, n, err, len(b))
		}
	}
}

// TestCheckRefuses: claims beyond the input, truncation, reserved bytes
// and deep nesting are refused as ErrInvalid.
func TestCheckRefuses(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x91}, MaxDepth+1), 0x01)
	ok := append(bytes.Repeat([]byte{0x91}, MaxDepth), 0x01)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"array32 of 4G", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"map32 of 4G", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"array16 beyond the input", []byte{0xdc, 0x00, 0x03, 0x01, 0x02}},
		{"fixmap missing a value", []byte{0x81, 0xa1, 'k'}},
		{"str32 beyond the input", []byte{0xdb, 0x00, 0x00, 0x01, 0x00, 'a'}},
		{"bin8 beyond the input", []byte{0xc4, 0x05, 1, 2}},
		{"ext32 beyond the input", []byte{0xc9, 0x00, 0x10, 0x00, 0x00, 0x01}},
		{"truncated int64", []byte{0xd3, 0, 0, 0}},
		{"truncated length", []byte{0xda, 0x00}},
		{"reserved 0xc1", []byte{0xc1}},
		{"nested array claiming more than the rest", []byte{0x92, 0xdd, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01}},
		{"too deep", deep},
	} {
		if err := Check(tc.b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Check(%x) = %v, want ErrInvalid", tc.name, tc.b, err)
		}
	}
	if err := Check(ok); err != nil {
		t.Errorf("nesting of exactly MaxDepth refused: %v", err)
	}
}

// TestUnmarshalRefusesHugeClaims: the five bytes that make msgpack
// allocate billions of elements are refused before any allocation.
func TestUnmarshalRefusesHugeClaims(t *testing.T) {
	var s []int64
	// Averaged over many refusals, so that what the rest of the process
	// allocates meanwhile (the collector, the race detector) does not count.
	const n = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		if err := Unmarshal([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}, &s); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Unmarshal = %v, want ErrInvalid", err)
		}
	}
	runtime.ReadMemStats(&after)
	if got := (after.TotalAlloc - before.TotalAlloc) / n; got > 4096 { // the error itself
		t.Errorf("refusing the claim allocated %d bytes", got)
	}
	if err := Unmarshal([]byte{0x93, 1, 2, 3}, &s); err != nil || len(s) != 3 {
		t.Fatalf("Unmarshal of [1 2 3] = %v, %v", s, err)
	}
}

// noMaps is sample without its typed map: where msgpack expects a typed
// map it reads an extension's header and then a map header from the
// extension's data, which Check cannot see (see the package doc).
type noMaps struct {
	Name string    `msgpack:"n"`
	Tags []string  `msgpack:"t"`
	At   time.Time `msgpack:"w"`
	F    float64   `msgpack:"f"`
	G    float32   `msgpack:"g"`
	Ptr  *int64    `msgpack:"p"`
	Any  any       `msgpack:"a"`
}

// FuzzCheck: a value Check accepts decodes, whatever its shape, into at
// most a bounded number of bytes per input byte; neither Check nor
// Unmarshal panics.
func FuzzCheck(f *testing.F) {
	for _, v := range samples()[:40] {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x92, 0xdc, 0xff, 0xff, 0x91, 0x90})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := walk(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("walk went %d bytes into %d", n, len(b))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var anyV any
		_ = Unmarshal(b, &anyV)
		var ss []noMaps
		_ = Unmarshal(b, &ss)
		var strs [][]string
		_ = Unmarshal(b, &strs)
		runtime.ReadMemStats(&after)
		// One slot of at most a sample per input byte, plus msgpack's own
		// buffers (a string or binary value reads into up to 1 MiB).
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(4<<20+512*len(b)); got > limit {
			t.Fatalf("decoding %d checked bytes allocated %d bytes (limit %d): %x", len(b), got, limit, b)
		}
	})
}
