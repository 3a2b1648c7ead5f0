package membership

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
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
	with := func(edit func(*Beacon)) []byte {
		b := testBeacon()
		edit(&b)
		return mustEncode(t, b, nil)
	}
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
		{"unspecified address", with(func(b *Beacon) { b.Addr = "0.0.0.0:7946" }), nil, ErrBeaconMalformed},
		{"multicast address", with(func(b *Beacon) { b.Addr = "228.0.0.4:7946" }), nil, ErrBeaconMalformed},
		{"route too long", with(func(b *Beacon) { b.Route = strings.Repeat("r", 129) }), nil, ErrBeaconMalformed},
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

	_, recv, send := startBeaconer(t, n1)

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

// TestBeaconsNotJoined checks the beacons that lead to no join: those of a
// peer that has just left, of a peer this node refuses to pair with, of a
// member alive at another address, of another node using this node's
// route, and any beacon once this node is leaving.
func TestBeaconsNotJoined(t *testing.T) {
	rec := NewLogRecorder(slog.NewTextHandler(t.Output(), nil))
	newNode := func(route, manager string, logger *slog.Logger) *Node {
		c := DefaultLocalConfig()
		c.Route = route
		c.Manager = manager
		c.Logger = logger
		if logger == nil {
			c.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
		}
		n, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	n1 := newNode("node1", "delta", slog.New(rec))
	b, recv, send := startBeaconer(t, n1)
	beacon := func(route string, addr net.Addr) []byte {
		return mustEncode(t, Beacon{Domain: "cohort", Route: route, Addr: addr.String()}, nil)
	}

	t.Run("left", func(t *testing.T) {
		n2 := newNode("node2", "delta", nil)
		if _, err := n1.Join(n2.Addr().String()); err != nil {
			t.Fatal(err)
		}
		// Join returns once node1 has node2's state, which may be before
		// node2 has node1's: leaving then, node2 would tell no one.
		waitFor("node2 to take node1 in", func() bool { return n2.NumAlive() == 2 })
		if err := n2.Leave(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		waitFor("node1 to see node2 leave", func() bool { return n1.Stats().MemberLeaves == 1 })
		if n1.wantsJoin("node2", n2.Addr().String()) {
			t.Error("a beacon of a peer that has just left asks for a join")
		}
		if !n1.wantsJoin("node2", "127.0.0.1:1") {
			t.Error("a beacon of a left peer from a new address, a restart, asks for no join")
		}
	})

	t.Run("refused", func(t *testing.T) {
		n3 := newNode("node3", "backup", nil)
		if _, err := send.WriteTo(beacon("node3", n3.Addr()), recv.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		waitFor("node1 to refuse node3", func() bool { return n1.Stats().PeersRefused > 0 })
		waitFor("the join to end", func() bool {
			n1.joins.mu.Lock()
			defer n1.joins.mu.Unlock()
			return len(n1.joins.pending) == 0
		})
		if j := n1.Stats().BeaconJoins; j != 0 {
			t.Errorf("BeaconJoins = %d after joining a refused peer, want 0", j)
		}
		if n1.wantsJoin("node3", n3.Addr().String()) {
			t.Error("a beacon of a refused peer asks for a join")
		}
	})

	t.Run("alive elsewhere", func(t *testing.T) {
		n4 := newNode("node4", "delta", nil)
		if _, err := n1.Join(n4.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if n1.wantsJoin("node4", "127.0.0.1:1") {
			t.Error("a beacon claiming an alive member's route from another address asks for a join")
		}
	})

	t.Run("own route", func(t *testing.T) {
		other := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
		for range 3 {
			b.handle(beacon("node1", other), send.LocalAddr())
		}
		got := rec.Records("another node claims this node's route; peers ignore it while this node is alive")
		if len(got) != 1 || got[0].Level != slog.LevelWarn || got[0].Attrs["addr"] != other.String() {
			t.Errorf("logged %+v, want one warning naming %s", got, other)
		}
	})

	t.Run("leaving", func(t *testing.T) {
		n5 := newNode("node5", "delta", nil)
		n1.leaving.Store(true)
		before := n1.Stats().BeaconsReceived
		b.handle(beacon("node5", n5.Addr()), send.LocalAddr())
		n1.joins.mu.Lock()
		pending := len(n1.joins.pending)
		n1.joins.mu.Unlock()
		if pending != 0 || n1.Stats().BeaconsReceived != before+1 {
			t.Errorf("while leaving: %d joins pending, %d beacons received, want 0 and %d", pending, n1.Stats().BeaconsReceived, before+1)
		}
	})
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

// startBeaconer starts n's beacon receiver on a loopback socket of its
// own and returns it with that socket and the one it sends from.
func startBeaconer(t *testing.T, n *Node) (b *beaconer, recv, send net.PacketConn) {
	t.Helper()
	recv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	send, err = net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b = newBeaconer(n, recv, send, recv.LocalAddr())
	n.goFunc(b.receiveLoop)
	t.Cleanup(b.close)
	return b, recv, send
}
