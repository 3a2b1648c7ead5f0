package manager

import (
	"bytes"
	"reflect"
	"runtime"
	"testing"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"
)

// reflected is Change without its codec: msgpack encodes and decodes it by
// reflection over the same struct tags, the reference the codec must match.
type reflected Change

func codecSamples() []Change {
	ms, pr, empty := int64(1800000), "bob", ""
	neg := int64(-5)
	return []Change{
		{},
		{ID: "abc.n1", Base: Rev{N: 0}, Rev: Rev{N: 1, At: 1700000000000, Node: "n1"}, Created: 1700000000000, Access: 1700000000000, MaxInactive: &ms},
		{ID: "abc.n1", Base: Rev{N: 41, At: 5, Node: "n2"}, Rev: Rev{N: 1<<64 - 1, At: -1, Node: "n1"}, Access: 7,
			Principal: &pr, Ops: []Op{{Name: "a", Value: []byte{0x01}}, {Name: "b"}, {Name: "", Value: []byte{}}}},
		{ID: "x", Principal: &empty, MaxInactive: &neg, Invalidate: true},
		{ID: string(bytes.Repeat([]byte("é"), 300)), Ops: []Op{{Name: "big", Value: bytes.Repeat([]byte{0xc3}, 70000)}}},
	}
}

// TestChangeCodecMatchesReflection: the codec writes the bytes msgpack's
// reflection writes, and reads back what either wrote.
func TestChangeCodecMatchesReflection(t *testing.T) {
	for i, c := range codecSamples() {
		got, err := msgpack.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		r := reflected(c)
		want, err := msgpack.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("sample %d: codec wrote\n%x\nreflection wrote\n%x", i, got, want)
		}
		var back Change
		if err := msgpack.Unmarshal(want, &back); err != nil {
			t.Fatalf("sample %d: decode: %v", i, err)
		}
		var ref reflected
		if err := msgpack.Unmarshal(want, &ref); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, Change(ref)) {
			t.Errorf("sample %d: codec read %+v, reflection read %+v", i, back, ref)
		}
	}
}

// TestChangeCodecReadsAnyOrder: a map with keys in another order, unknown
// keys and nil fields reads as reflection reads it.
func TestChangeCodecReadsAnyOrder(t *testing.T) {
	in := map[string]any{
		"o": []any{map[string]any{"v": []byte{1}, "n": "k", "future": 3}},
		"r": map[string]any{"o": "n2", "n": uint64(3), "t": int64(9), "z": []any{1, 2}},
		"i": "abc.n2", "later": map[string]any{"q": 1}, "m": nil, "p": "alice", "x": false, "a": int8(3),
	}
	b, err := msgpack.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var got Change
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	var ref reflected
	if err := msgpack.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, Change(ref)) {
		t.Fatalf("codec read %+v, reflection read %+v", got, ref)
	}
	if got.ID != "abc.n2" || got.Rev.N != 3 || got.Access != 3 || *got.Principal != "alice" || len(got.Ops) != 1 || got.Ops[0].Name != "k" {
		t.Fatalf("read %+v", got)
	}
}

// TestChangeCodecRefusesArrayForm: a struct sent as an array is refused
// (reflection would read it by field position; Cohort never sends one).
func TestChangeCodecRefusesArrayForm(t *testing.T) {
	b, _ := msgpack.Marshal([]any{"abc", nil, nil, 0, 0, nil, nil, nil, false})
	var c Change
	if err := msgpack.Unmarshal(b, &c); err == nil {
		t.Fatalf("array-form change read as %+v", c)
	}
}

// FuzzChangeCodec reads any input as the wire does, straight from the
// bytes, and checks the result against reflection where reflection is
// safe (input that passes mpguard.Check): what the codec reads,
// reflection reads the same; what it reads, it writes back as reflection
// would.
func FuzzChangeCodec(f *testing.F) {
	for _, c := range codecSamples()[:4] {
		b, _ := msgpack.Marshal(&c)
		f.Add(b)
	}
	f.Add([]byte{0x81, 0xa1, 0x6f, 0xdd, 0xff, 0xff, 0xff, 0xff}) // ops claiming 4G entries
	f.Fuzz(func(t *testing.T, b []byte) {
		var got Change
		err := got.decode(b) // as the wire reads it: unchecked
		if err != nil || mpguard.Check(b) != nil {
			return // reflection is only safe on checked input
		}
		var viaDecoder Change
		if err := msgpack.Unmarshal(b, &viaDecoder); err != nil {
			t.Fatalf("read %+v from %x, through msgpack's decoder: %v", got, b, err)
		}
		if !reflect.DeepEqual(got, viaDecoder) {
			t.Fatalf("from %x: read %+v, through msgpack's decoder %+v", b, got, viaDecoder)
		}
		var ref reflected
		if err := msgpack.Unmarshal(b, &ref); err != nil {
			t.Fatalf("codec read %+v from %x, reflection refused it: %v", got, b, err)
		}
		if !reflect.DeepEqual(normChange(got), normChange(Change(ref))) {
			t.Fatalf("from %x: codec read %+v, reflection read %+v", b, got, ref)
		}
		enc, err := msgpack.Marshal(&got)
		if err != nil {
			t.Fatal(err)
		}
		refEnc, _ := msgpack.Marshal(&ref)
		if !bytes.Equal(enc, refEnc) {
			t.Fatalf("codec wrote %x, reflection wrote %x", enc, refEnc)
		}
	})
}

// BenchmarkChangeCodec encodes and decodes a one-attribute change as a
// commit and a replica do (encodeChange, then decoding straight from the
// bytes), and by reflection (checked by mpguard first, as the wire
// needs); x-reflection is the codec's ns/op over reflection's, from the
// same run.
//
//	go test -run '^$' -bench ChangeCodec ./manager/
func BenchmarkChangeCodec(b *testing.B) {
	c := codecSamples()[2]
	c.Ops = c.Ops[:1]
	r := reflected(c)
	var refNs float64
	for _, bc := range []struct {
		name      string
		roundTrip func() error
	}{
		{"reflection", func() error {
			buf, err := msgpack.Marshal(&r)
			if err != nil {
				return err
			}
			return mpguard.Unmarshal(buf, new(reflected))
		}},
		{"codec", func() error { return new(Change).decode(encodeChange(&c)[1:]) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
			relate(b, bc.name == "reflection", &refNs, "x-reflection")
		})
	}
}

// reflectedFull is Full without its decoder.
type reflectedFull Full

// FuzzFullDecoder checks Full's decoder against reflection: what it reads,
// reflection reads the same. Seeds include the extension-wrapped map that
// made msgpack's own map decoding allocate a million entries.
func FuzzFullDecoder(f *testing.F) {
	for _, s := range []Full{
		{},
		{ID: "abc.n1", Rev: Rev{N: 3, At: 5, Node: "n1"}, Created: 1, Access: 2, MaxInactive: 1800000, Principal: "bob",
			Attrs: map[string][]byte{"cart": {0x92, 0xa1, 'x', 0x01}, "gone": nil}},
	} {
		b, err := msgpack.Marshal(reflectedFull(s))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x81, 0xa1, 't', 0xd4, 0x30, 0xdf, 0x30, 0x30, 0x30, 0x30})
	f.Fuzz(func(t *testing.T, b []byte) {
		if fs, err := decodeFulls(b); err == nil && len(fs) > len(b) {
			t.Fatalf("%d sessions from %d bytes", len(fs), len(b))
		}
		var got Full
		if _, err := got.decode(b); err != nil || mpguard.Check(b) != nil {
			return // reflection is only safe on checked input
		}
		var ref reflectedFull
		if err := msgpack.Unmarshal(b, &ref); err != nil {
			t.Fatalf("decoder read %+v from %x, reflection refused it: %v", got, b, err)
		}
		if len(got.Attrs) == 0 && len(ref.Attrs) == 0 {
			got.Attrs, ref.Attrs = nil, nil
		}
		if !reflect.DeepEqual(got, Full(ref)) {
			t.Fatalf("from %x: decoder read %+v, reflection read %+v", b, got, ref)
		}
	})
}

// TestFullDecoderRefusesWrappedMap: attributes sent as an extension
// followed by a map header claiming 808 million entries are refused
// without allocating for them.
func TestFullDecoderRefusesWrappedMap(t *testing.T) {
	b := []byte{0x81, 0xa1, 't', 0xd4, 0x30, 0xdf, 0x30, 0x30, 0x30, 0x30}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var f Full
	err := msgpack.Unmarshal(b, &f)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatalf("decoded %+v", f)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
		t.Errorf("refusing it allocated %d bytes", got)
	}
}
