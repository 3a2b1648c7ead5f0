package membership

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"
)

var testMACKey = beaconKey(Key(bytes.Repeat([]byte{7}, 32)))

func testBeacon() Beacon {
	return Beacon{Domain: "cohort", Route: "node2", Addr: "127.0.0.1:7946", Sent: time.UnixMilli(1_700_000_000_000)}
}

func mustEncode(t testing.TB, b Beacon, key []byte) []byte {
	t.Helper()
	p, err := EncodeBeacon(b, key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBeaconRoundTrip(t *testing.T) {
	for _, key := range [][]byte{nil, testMACKey} {
		p := mustEncode(t, testBeacon(), key)
		got, err := DecodeBeacon(p, key)
		if err != nil {
			t.Fatalf("DecodeBeacon(%x) = %v", p, err)
		}
		if !got.Sent.Equal(testBeacon().Sent) || got.Domain != "cohort" || got.Route != "node2" || got.Addr != "127.0.0.1:7946" {
			t.Errorf("DecodeBeacon = %+v, want %+v", got, testBeacon())
		}
	}
}

func TestDecodeBeaconRejects(t *testing.T) {
	signed := mustEncode(t, testBeacon(), testMACKey)
	plain := mustEncode(t, testBeacon(), nil)
	tampered := slices.Clone(signed)
	tampered[10] ^= 1
	badAddr := testBeacon()
	badAddr.Addr = "example.com:80"
	otherKey := beaconKey(Key(bytes.Repeat([]byte{8}, 16)))
	for _, tc := range []struct {
		name string
		p    []byte
		key  []byte
		want error
	}{
		{"empty", nil, nil, ErrBeaconMalformed},
		{"short", plain[:5], nil, ErrBeaconMalformed},
		{"bad magic", append([]byte("XXXX"), plain[4:]...), nil, ErrBeaconMalformed},
		{"unknown version", append(append([]byte{}, plain[:4]...), append([]byte{9}, plain[5:]...)...), nil, ErrBeaconMalformed},
		{"truncated", plain[:len(plain)-1], nil, ErrBeaconMalformed},
		{"trailing bytes", append(slices.Clone(plain), 0), nil, ErrBeaconMalformed},
		{"too large", make([]byte, MaxBeaconSize+1), nil, ErrBeaconMalformed},
		{"host name address", mustEncode(t, badAddr, nil), nil, ErrBeaconMalformed},
		{"unsigned when keyed", plain, testMACKey, ErrBeaconMAC},
		{"signed when unkeyed", signed, nil, ErrBeaconMAC},
		{"wrong key", signed, otherKey, ErrBeaconMAC},
		{"tampered", tampered, testMACKey, ErrBeaconMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeBeacon(tc.p, tc.key); !errors.Is(err, tc.want) {
				t.Errorf("DecodeBeacon(%x) = %v, want %v", tc.p, err, tc.want)
			}
		})
	}
}

// TestBeaconHandling feeds datagrams to a node's beacon receiver through an
// injected socket and checks what it counts and whom it joins.
func TestBeaconHandling(t *testing.T) {
	key := Key(bytes.Repeat([]byte{7}, 32))
	newNode := func(route string) *Node {
		c := DefaultLocalConfig()
		c.Route = route
		c.Key = key
		c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
		n, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	n1, n2 := newNode("node1"), newNode("node2")

	recv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	send, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := newBeaconer(n1, recv, send, recv.LocalAddr())
	n1.goFunc(b.receiveLoop)
	t.Cleanup(b.close)

	mk := beaconKey(key)
	foreign := Beacon{Domain: "other", Route: "x", Addr: "127.0.0.1:1"}
	self := Beacon{Domain: "cohort", Route: "node1", Addr: n1.Addr().String()}
	peer := Beacon{Domain: "cohort", Route: "node2", Addr: n2.Addr().String()}
	for _, p := range [][]byte{
		[]byte("garbage"),
		mustEncode(t, peer, nil), // unauthenticated
		mustEncode(t, peer, beaconKey(Key(make([]byte, 16)))), // wrong key
		mustEncode(t, foreign, mk),
		mustEncode(t, self, mk),
		mustEncode(t, peer, mk),
	} {
		if _, err := send.WriteTo(p, recv.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for n1.NumAlive() < 2 || n2.NumAlive() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("node1 did not join node2 from its beacon: %+v", n1.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := n1.Stats()
	want := Stats{BeaconsMalformed: 1, BeaconsBadMAC: 2, BeaconsForeign: 1, BeaconsReceived: 1, BeaconJoins: 1}
	if got.BeaconsMalformed != want.BeaconsMalformed || got.BeaconsBadMAC != want.BeaconsBadMAC ||
		got.BeaconsForeign != want.BeaconsForeign || got.BeaconsReceived != want.BeaconsReceived ||
		got.BeaconJoins != want.BeaconJoins {
		t.Errorf("Stats() = %+v, want beacon counters %+v", got, want)
	}

	// A beacon from a member already known changes nothing.
	if _, err := send.WriteTo(mustEncode(t, peer, mk), recv.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	for n1.Stats().BeaconsReceived < 2 {
		if time.Now().After(deadline) {
			t.Fatal("second beacon not received")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if j := n1.Stats().BeaconJoins; j != 1 {
		t.Errorf("BeaconJoins = %d after a beacon of a known member, want 1", j)
	}
}

func FuzzDecodeBeacon(f *testing.F) {
	f.Add(mustEncode(f, testBeacon(), nil), false)
	f.Add(mustEncode(f, testBeacon(), testMACKey), true)
	f.Add([]byte("COHB\x01\x00\x00\x00"), false)
	f.Add([]byte("COHB\x01\x01\xff\xff"), true)
	f.Add([]byte("COHB\x01\x00\x00\x00\x81\xa1d\xdd\xff\xff\xff\xff"), false) // claims 4G elements
	f.Fuzz(func(t *testing.T, p []byte, keyed bool) {
		var key []byte
		if keyed {
			key = testMACKey
		}
		b, err := DecodeBeacon(p, key)
		if err != nil {
			if !errors.Is(err, ErrBeaconMalformed) && !errors.Is(err, ErrBeaconMAC) {
				t.Fatalf("DecodeBeacon(%x) = %v, want a beacon error", p, err)
			}
			return
		}
		// What decodes re-encodes to something that decodes the same.
		q, err := EncodeBeacon(b, key)
		if err != nil {
			t.Fatalf("EncodeBeacon(%+v) = %v", b, err)
		}
		b2, err := DecodeBeacon(q, key)
		if err != nil || b2.Domain != b.Domain || b2.Route != b.Route || b2.Addr != b.Addr || !b2.Sent.Equal(b.Sent) {
			t.Fatalf("round trip: %+v, %v; want %+v", b2, err, b)
		}
	})
}
