package web

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// hubMsgCases are the table cases of the hub's wire format, and the fuzz
// seeds.
var hubMsgCases = []hubMsg{
	{Kind: kindOp, Req: 1, Op: opUser, Name: "alice", Payload: []byte("hello")},
	{Kind: kindOp, Req: 1 << 62, Op: opTopic, Name: "news", Payload: []byte{}},
	{Kind: kindOp, Req: 7, Op: opSession, Name: "abc.node1", Payload: []byte(`{"x":1}`)},
	{Kind: kindOp, Req: 8, Op: opCloseUser, Name: "bob", Payload: []byte("closed by the server")},
	{Kind: kindCount, Req: 9, N: 3},
	{Kind: kindPresence, Reset: true},
	{Kind: kindPresence, Reset: true, More: true, Entries: []presenceEntry{{"alice", 1}}},
	{Kind: kindPresence, More: true, Entries: []presenceEntry{{"bob", 2}}},
	{Kind: kindPresence, Entries: []presenceEntry{{"alice", 1}, {"bob", 0}, {"carol", 300}}},
	{Kind: kindAskPresence},
}

func TestHubMsgRoundTrip(t *testing.T) {
	for _, want := range hubMsgCases {
		b := appendHubMsg(nil, &want)
		got, err := decodeHubMsg(b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", want, err)
		}
		if len(want.Payload) == 0 && len(got.Payload) == 0 {
			got.Payload = want.Payload
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decode(encode(%+v)) = %+v", want, got)
		}
		// Every strict prefix is refused.
		for i := range len(b) {
			if _, err := decodeHubMsg(b[:i]); err == nil {
				t.Errorf("decode(%x), a prefix of %+v, succeeded", b[:i], want)
			}
		}
		if _, err := decodeHubMsg(append(b, 0)); !errors.Is(err, errHubWire) {
			t.Errorf("decode with a trailing byte: %v, want errHubWire", err)
		}
	}
	for _, bad := range [][]byte{
		nil,
		{2, kindCount, 1, 1},             // unknown version
		{1, 99},                          // unknown kind
		{1, kindOp, 1, 9, 1, 'a', 0},     // unknown op
		{1, kindOp, 1, opUser, 0, 0},     // empty name
		{1, kindPresence, 4, 0},          // unknown presence flag
		{1, kindPresence, 0, 200, 1},     // more entries than bytes
		{1, kindPresence, 0, 1, 0, 1},    // empty user
		{1, kindOp, 1, opUser, 5, 'a'},   // name longer than the body
		{1, kindCount, 0xff, 0xff, 0xff}, // truncated varint
	} {
		if m, err := decodeHubMsg(bad); !errors.Is(err, errHubWire) {
			t.Errorf("decode(%x) = %+v, %v; want errHubWire", bad, m, err)
		}
	}
}

// FuzzDecodeHubMessage feeds the decoder of hub messages from peers
// arbitrary bytes: it must never panic, and what it accepts must encode to
// bytes that decode to the same message, and encode again identically.
func FuzzDecodeHubMessage(f *testing.F) {
	for _, m := range hubMsgCases {
		f.Add(appendHubMsg(nil, &m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeHubMsg(b)
		if err != nil {
			if !errors.Is(err, errHubWire) {
				t.Fatalf("decode(%x): error %v does not wrap errHubWire", b, err)
			}
			return
		}
		enc := appendHubMsg(nil, &m)
		m2, err := decodeHubMsg(enc)
		if err != nil {
			t.Fatalf("decode(encode(decode(%x))): %v", b, err)
		}
		if !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("decode(%x) = %+v, but its encoding decodes to %+v", b, m, m2)
		}
		if enc2 := appendHubMsg(nil, &m2); string(enc2) != string(enc) {
			t.Fatalf("encoding not stable: %x, then %x", enc, enc2)
		}
	})
}

// normalize makes empty and nil byte slices compare equal.
func normalize(m hubMsg) hubMsg {
	if len(m.Payload) == 0 {
		m.Payload = nil
	}
	return m
}

var controlCases = []struct {
	in   string
	want control
	ok   bool
}{
	{`{"subscribe":"news"}`, control{true, "news"}, true},
	{` {"unsubscribe" : "news"} `, control{false, "news"}, true},
	{`{"subscribe":"caf\u00e9"}`, control{true, "café"}, true},
	{`{"subscribe":""}`, control{}, false},
	{`{"subscribe":42}`, control{}, false},
	{`{"subscribe":"a","x":1}`, control{}, false},
	{`{"SUBSCRIBE":"a"}`, control{}, false},
	{`{"subscribe":"a"} {}`, control{}, false},
	{`{"subscribe":"a"`, control{}, false},
	{`["subscribe","a"]`, control{}, false},
	{`hello subscribe"`, control{}, false},
	{`{"text":"please subscribe\"me"}`, control{}, false},
}

func TestParseControl(t *testing.T) {
	for _, tc := range controlCases {
		got, ok := parseControl([]byte(tc.in))
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseControl(%s) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzParseControl feeds the client control message parser arbitrary
// messages: it must never panic, and what it accepts must be a valid topic
// that the canonical form of the message gives back.
func FuzzParseControl(f *testing.F) {
	for _, tc := range controlCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, ok := parseControl(b)
		if !ok {
			return
		}
		if c.Topic == "" || len(c.Topic) > maxTopicLen {
			t.Fatalf("parseControl(%q) accepted topic %q", b, c.Topic)
		}
		key := "unsubscribe"
		if c.Subscribe {
			key = "subscribe"
		}
		canon, _ := json.Marshal(map[string]string{key: c.Topic})
		c2, ok := parseControl(canon)
		if !ok || c2 != c {
			t.Fatalf("parseControl(%q) = %+v, but its canonical form %s gives %+v, %v", b, c, canon, c2, ok)
		}
	})
}
