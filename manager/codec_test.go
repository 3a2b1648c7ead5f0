package manager

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
)

// TestEncodeScalarMatchesEncoder: the values encodeScalar writes by hand
// come out as msgpack's Encoder writes them, in no more room, at every
// boundary between two encodings.
func TestEncodeScalarMatchesEncoder(t *testing.T) {
	values := []any{true, false, int64(0), int64(-1), int64(math.MaxInt64), int64(math.MinInt64)}
	for _, n := range []int64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64} {
		values = append(values, int(n))
	}
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536} {
		values = append(values, strings.Repeat("é", n/2)+strings.Repeat("x", n%2))
	}
	for _, v := range values {
		checkScalar(t, v)
	}
}

// FuzzEncodeScalar compares encodeScalar with msgpack's Encoder for any
// int, int64 and string.
func FuzzEncodeScalar(f *testing.F) {
	f.Add(int64(0), "")
	f.Add(int64(-33), "count")
	f.Add(int64(math.MinInt64), strings.Repeat("x", 300))
	f.Fuzz(func(t *testing.T, n int64, s string) {
		checkScalar(t, int(n))
		checkScalar(t, n)
		checkScalar(t, s)
	})
}

func checkScalar(t *testing.T, v any) {
	t.Helper()
	name, ok := NewTypes().current().byType[reflect.TypeOf(v)]
	if !ok {
		t.Fatalf("%T is not a built-in type", v)
	}
	got, ok := encodeScalar(name, v)
	if !ok {
		t.Fatalf("%T %v: not written by hand", v, v)
	}
	want, err := encodeTagged(name, v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%T %v: wrote %x, msgpack writes %x", v, v, got, want)
	}
	if cap(got) > cap(want) {
		t.Errorf("%T %v: %d bytes in a buffer of %d, msgpack's in %d", v, v, len(got), cap(got), cap(want))
	}
}

// FuzzDecodeScalar: what decodeScalar reads straight from the bytes,
// msgpack's Decoder reads the same, type included.
func FuzzDecodeScalar(f *testing.F) {
	types := NewTypes()
	for _, v := range []any{0, -33, 1 << 40, int64(7), "", "count", strings.Repeat("x", 40), true, false} {
		b, err := types.encode(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x92, 0xa3, 'i', 'n', 't', 0xcb, 0, 0, 0, 0, 0, 0, 0, 0})                         // a float where an int belongs
	f.Add([]byte{0x92, 0xa3, 'i', 'n', 't', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // past MaxInt64
	f.Add([]byte{0x92, 0xa4, 'b', 'o', 'o', 'l', 0xc0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := types.decodeScalar(b)
		if !ok {
			return
		}
		want, err := types.decodeTagged(b)
		if err != nil {
			t.Fatalf("read %T %v from %x, msgpack refused it: %v", got, got, b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("from %x: read %T %v, msgpack read %T %v", b, got, got, want, want)
		}
	})
}

// TestDecodeScalarReadsEncodeScalar: every value encodeScalar writes reads
// back by hand as itself.
func TestDecodeScalarReadsEncodeScalar(t *testing.T) {
	types := NewTypes()
	for _, v := range []any{0, 127, -32, -129, math.MaxInt64, math.MinInt64, int64(-1), "", "é", true, false} {
		b, err := types.encode(v)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := types.decodeScalar(b); !ok || got != v {
			t.Errorf("%T %v: read %T %v, %v", v, v, got, got, ok)
		}
	}
}

// BenchmarkValueCodec writes and reads back an int attribute value by hand
// (Types.encode and decode, as Set and the gorilla Store's copies do) and
// through msgpack's Encoder and Decoder; x-msgpack is ns/op over
// msgpack's, from the same run.
//
//	go test -run '^$' -bench ValueCodec -benchmem ./manager/
func BenchmarkValueCodec(b *testing.B) {
	types := NewTypes()
	var msgpackNs float64
	for _, c := range []struct {
		name   string
		encode func(any) ([]byte, error)
		decode func([]byte) (any, error)
	}{
		{"msgpack", func(v any) ([]byte, error) { return encodeTagged("int", v) }, types.decodeTagged},
		{"by-hand", types.encode, types.decode},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				raw, err := c.encode(41)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.decode(raw); err != nil {
					b.Fatal(err)
				}
			}
			relate(b, c.name == "msgpack", &msgpackNs, "x-msgpack")
		})
	}
}

// relate keeps b's ns/op in *base when b is the baseline case, and reports
// it over *base as unit otherwise.
func relate(b *testing.B, isBase bool, base *float64, unit string) {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	if isBase {
		*base = ns
	} else if *base > 0 {
		b.ReportMetric(ns / *base, unit)
	}
}

// TestUnregisteredPointerOrValueHint: storing *T where T is registered,
// or T where *T is, is refused with an error that names the registered
// type and its name.
func TestUnregisteredPointerOrValueHint(t *testing.T) {
	type item struct{ N int }
	for _, tc := range []struct {
		name       string
		registered any
		as         string
		set        any
		want       string
	}{
		{"pointer for a value", item{}, "test.item", &item{1}, `type *manager.item is not registered, but manager.item is (as "test.item")`},
		{"value for a pointer", &item{}, "test.*item", item{1}, `type manager.item is not registered, but *manager.item is (as "test.*item")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			types := NewTypes()
			types.MustRegister(tc.as, tc.registered)
			if _, err := types.encode(tc.set); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("encode(%T) with %T registered = %v, want an error saying %q", tc.set, tc.registered, err, tc.want)
			}
		})
	}
	// Neither registered: no hint.
	if _, err := NewTypes().encode(&item{}); err == nil || strings.Contains(err.Error(), "but") {
		t.Errorf("encode of an unregistered type = %v, want the plain error", err)
	}
}
