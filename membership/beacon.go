package membership

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/net/ipv4"
)

// Beacon wire format (all integers big-endian):
//
//	offset  size  field
//	0       4     magic "COHB"
//	4       1     format version, 1
//	5       1     flags: bit 0 set when an HMAC follows the body
//	6       2     body length n
//	8       n     msgpack body {d: domain, r: route, a: gossip host:port, t: sent, Unix ms}
//	8+n     32    HMAC-SHA256 over bytes [0, 8+n), when flagged
//
// The HMAC key is derived from the cluster key with HKDF-SHA256 (info
// "cohort beacon v1"), so the cluster key itself is never used twice.
const (
	beaconMagic     = "COHB"
	beaconVersion   = 1
	beaconFlagMAC   = 1
	beaconHeaderLen = 8
	beaconMACLen    = sha256.Size
	// MaxBeaconSize bounds a beacon datagram; anything larger is malformed.
	MaxBeaconSize = 1400
)

// Errors reported by DecodeBeacon.
var (
	ErrBeaconMalformed = errors.New("membership: malformed beacon")
	ErrBeaconMAC       = errors.New("membership: beacon authentication failed")
)

// Beacon announces a node on the multicast group.
type Beacon struct {
	Domain string    // cluster domain
	Route  string    // sender's route
	Addr   string    // sender's gossip address, IP:port
	Sent   time.Time // sender's clock, millisecond precision
}

type wireBeacon struct {
	Domain string `msgpack:"d"`
	Route  string `msgpack:"r"`
	Addr   string `msgpack:"a"`
	Sent   int64  `msgpack:"t"`
}

// beaconKey derives the beacon HMAC key from the cluster key; nil for none.
func beaconKey(k Key) []byte {
	if len(k) == 0 {
		return nil
	}
	mk, err := hkdf.Key(sha256.New, k, nil, "cohort beacon v1", 32)
	if err != nil {
		panic("membership: hkdf: " + err.Error()) // only for lengths > 255*32
	}
	return mk
}

// EncodeBeacon encodes b, authenticated with macKey when it is not nil.
func EncodeBeacon(b Beacon, macKey []byte) ([]byte, error) {
	body, err := msgpack.Marshal(wireBeacon{Domain: b.Domain, Route: b.Route, Addr: b.Addr, Sent: b.Sent.UnixMilli()})
	if err != nil {
		return nil, fmt.Errorf("membership: encode beacon: %w", err)
	}
	size := beaconHeaderLen + len(body)
	if macKey != nil {
		size += beaconMACLen
	}
	if size > MaxBeaconSize {
		return nil, fmt.Errorf("membership: beacon of %d bytes exceeds %d", size, MaxBeaconSize)
	}
	out := make([]byte, beaconHeaderLen, size)
	copy(out, beaconMagic)
	out[4] = beaconVersion
	binary.BigEndian.PutUint16(out[6:], uint16(len(body)))
	out = append(out, body...)
	if macKey != nil {
		out[5] |= beaconFlagMAC
		mac := hmac.New(sha256.New, macKey)
		mac.Write(out)
		out = mac.Sum(out)
	}
	return out, nil
}

// DecodeBeacon parses and authenticates a beacon datagram. With a macKey,
// a beacon without a valid HMAC gives ErrBeaconMAC; without one, an
// authenticated beacon also gives ErrBeaconMAC, since this node cannot
// verify it and could not join its sender anyway. Anything that is not a
// well-formed beacon gives ErrBeaconMalformed.
func DecodeBeacon(p []byte, macKey []byte) (Beacon, error) {
	if len(p) < beaconHeaderLen || len(p) > MaxBeaconSize {
		return Beacon{}, fmt.Errorf("%w: %d bytes", ErrBeaconMalformed, len(p))
	}
	if string(p[:4]) != beaconMagic {
		return Beacon{}, fmt.Errorf("%w: bad magic", ErrBeaconMalformed)
	}
	if p[4] != beaconVersion {
		return Beacon{}, fmt.Errorf("%w: unknown version %d", ErrBeaconMalformed, p[4])
	}
	flags := p[5]
	if flags&^beaconFlagMAC != 0 {
		return Beacon{}, fmt.Errorf("%w: unknown flags %#x", ErrBeaconMalformed, flags)
	}
	n := int(binary.BigEndian.Uint16(p[6:]))
	want := beaconHeaderLen + n
	if flags&beaconFlagMAC != 0 {
		want += beaconMACLen
	}
	if len(p) != want {
		return Beacon{}, fmt.Errorf("%w: length %d, header says %d", ErrBeaconMalformed, len(p), want)
	}
	signed := p[:beaconHeaderLen+n]
	switch {
	case macKey != nil && flags&beaconFlagMAC == 0:
		return Beacon{}, fmt.Errorf("%w: beacon is not authenticated", ErrBeaconMAC)
	case macKey == nil && flags&beaconFlagMAC != 0:
		return Beacon{}, fmt.Errorf("%w: beacon is authenticated with a key this node does not have", ErrBeaconMAC)
	case macKey != nil:
		mac := hmac.New(sha256.New, macKey)
		mac.Write(signed)
		if !hmac.Equal(mac.Sum(nil), p[len(signed):]) {
			return Beacon{}, fmt.Errorf("%w: bad HMAC", ErrBeaconMAC)
		}
	}
	var w wireBeacon
	if err := mpguard.Unmarshal(signed[beaconHeaderLen:], &w); err != nil {
		return Beacon{}, fmt.Errorf("%w: %v", ErrBeaconMalformed, err)
	}
	if w.Domain == "" || w.Route == "" {
		return Beacon{}, fmt.Errorf("%w: empty domain or route", ErrBeaconMalformed)
	}
	if len(w.Route) > maxRoute {
		return Beacon{}, fmt.Errorf("%w: route of %d bytes", ErrBeaconMalformed, len(w.Route))
	}
	// An address a node can be joined at: not 0.0.0.0, which would join
	// whatever listens on this host, nor a group.
	if a, err := splitHostPort(w.Addr, -1); err != nil || a.IP == nil || a.Port == 0 || a.IP.IsUnspecified() || a.IP.IsMulticast() {
		return Beacon{}, fmt.Errorf("%w: bad address %q", ErrBeaconMalformed, w.Addr)
	}
	return Beacon{Domain: w.Domain, Route: w.Route, Addr: w.Addr, Sent: time.UnixMilli(w.Sent)}, nil
}

// beaconer sends this node's beacon to the group every Frequency and turns
// beacons from unknown members into joins.
type beaconer struct {
	n      *Node
	recv   net.PacketConn // bound to the group
	send   net.PacketConn // unbound; sends to group
	group  net.Addr
	macKey []byte
	self   Beacon
	failed atomic.Bool // last send failed; logged once until it works again
}

// MulticastError is returned by New when multicast discovery is on but
// this host cannot join the beacon group, as on a host whose network has
// no route for multicast ("no such device"). It names the setting to
// change rather than the gossip address, which is not at fault.
type MulticastError struct {
	Group string // Config.MulticastAddr
	Err   error  // the system's error
}

func (e *MulticastError) Error() string {
	cause := e.Err.Error()
	var oe *net.OpError
	if errors.As(e.Err, &oe) && oe.Err != nil {
		cause = oe.Err.Error() // without the group, which the message names
	}
	return fmt.Sprintf("membership: multicast discovery (MulticastAddr %s) is unavailable on this host: cannot join the group: %s; "+
		"turn it off (an empty MulticastAddr, -multicast=off for cohort-node) and find the peers through seeds (Join, -join), "+
		"or give the host a multicast route", e.Group, cause)
}

func (e *MulticastError) Unwrap() error { return e.Err }

// listenBeacons opens the multicast sockets: one joined to the group for
// receiving (SO_REUSEADDR, so several nodes on a host share the port) and
// one for sending with loopback on, so that nodes on one host hear each
// other. Both use the interface of the node's gossip address, the one its
// peers reach it on, when that is a multicast interface of this host
// other than loopback; otherwise the one the routing table gives the
// group, as on a host whose only route for it is the default route.
func listenBeacons(n *Node) (*beaconer, error) {
	group, _ := net.ResolveUDPAddr("udp4", n.cfg.MulticastAddr) // checked by validate
	ifi := beaconInterface(n.addr.IP)
	recv, err := net.ListenMulticastUDP("udp4", ifi, group)
	if err != nil {
		return nil, &MulticastError{Group: group.String(), Err: err}
	}
	send, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		_ = recv.Close()
		return nil, fmt.Errorf("membership: open beacon socket: %w", err)
	}
	pc := ipv4.NewPacketConn(send)
	if ifi != nil {
		if err := pc.SetMulticastInterface(ifi); err != nil {
			n.log.Warn("cannot send beacons on the gossip address's interface; they follow the routing table", "interface", ifi.Name, "err", err)
		}
	}
	if err := pc.SetMulticastTTL(n.cfg.MulticastTTL); err != nil {
		n.log.Warn("cannot set beacon TTL", "err", err)
	}
	if err := pc.SetMulticastLoopback(true); err != nil {
		n.log.Warn("cannot enable multicast loopback; nodes on this host may not see each other's beacons", "err", err)
	}
	return newBeaconer(n, recv, send, group), nil
}

// beaconInterface returns the up, multicast-capable, non-loopback
// interface that has ip, or nil.
func beaconInterface(ip net.IP) *net.Interface {
	if ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
		return nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	for i := range ifs {
		ifi := &ifs[i]
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 || ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if in, ok := a.(*net.IPNet); ok && in.IP.Equal(ip) {
				return ifi
			}
		}
	}
	return nil
}

func newBeaconer(n *Node, recv, send net.PacketConn, group net.Addr) *beaconer {
	return &beaconer{
		n: n, recv: recv, send: send, group: group,
		macKey: beaconKey(n.cfg.Key),
		self:   Beacon{Domain: n.cfg.Domain, Route: n.cfg.Route, Addr: n.addr.String()},
	}
}

func (b *beaconer) close() {
	_ = b.recv.Close()
	_ = b.send.Close()
}

// sendLoop beacons every Frequency, with ±10% jitter so that nodes started
// together do not stay in phase, until Leave starts. It exits when the
// node stops.
func (b *beaconer) sendLoop() {
	freq := b.n.cfg.Frequency
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-b.n.stop:
			return
		case <-t.C:
		}
		if !b.n.leaving.Load() {
			b.sendOne()
		}
		jitter := time.Duration(rand.Int64N(int64(freq)/5+1)) - freq/10
		t.Reset(freq + jitter)
	}
}

func (b *beaconer) sendOne() {
	bc := b.self
	bc.Sent = time.Now()
	p, err := EncodeBeacon(bc, b.macKey)
	if err == nil {
		_, err = b.send.WriteTo(p, b.group)
	}
	if err != nil {
		b.n.stats.beaconSendErrors.Add(1)
		if !b.failed.Swap(true) {
			b.n.log.Warn("cannot send beacon; discovery relies on seeds until it works", "group", b.group.String(), "err", err)
		}
		return
	}
	b.n.stats.beaconsSent.Add(1)
	if b.failed.Swap(false) {
		b.n.log.Info("beacons are being sent again", "group", b.group.String())
	}
}

// receiveLoop reads beacons until the socket is closed.
func (b *beaconer) receiveLoop() {
	buf := make([]byte, MaxBeaconSize+1)
	backoff := 5 * time.Millisecond
	for {
		k, from, err := b.recv.ReadFrom(buf)
		if err != nil {
			select {
			case <-b.n.stop:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.n.log.Warn("beacon read failed", "err", err)
			select {
			case <-b.n.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		b.handle(buf[:k], from)
	}
}

// handle processes one datagram.
func (b *beaconer) handle(p []byte, from net.Addr) {
	n := b.n
	bc, err := DecodeBeacon(p, b.macKey)
	switch {
	case errors.Is(err, ErrBeaconMAC):
		n.stats.beaconsBadMAC.Add(1)
		n.log.Debug("ignoring beacon", "from", from.String(), "err", err)
		return
	case err != nil:
		n.stats.beaconsMalformed.Add(1)
		n.log.Debug("ignoring beacon", "from", from.String(), "err", err)
		return
	case bc.Domain != n.cfg.Domain:
		n.stats.beaconsForeign.Add(1)
		return
	case bc.Route == n.cfg.Route:
		if bc.Addr != n.addr.String() {
			n.claimed(bc.Addr) // another node with this node's route
		}
		return // our own, looped back
	}
	n.stats.beaconsReceived.Add(1)
	if n.leaving.Load() || !n.wantsJoin(bc.Route, bc.Addr) {
		return
	}
	n.joins.request(bc.Addr, bc.Route)
}

// wantsJoin reports whether a beacon of route from addr is worth a join.
// It is not when route is an alive member (at addr; at another address
// memberlist ignores the claim until the member fails), when it is leaving
// or left from addr less than DropTime ago (its last beacons), or when this
// node refused to pair with it: that peer answers every join and is
// refused again.
func (n *Node) wantsJoin(route, addr string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.refused[route]; ok {
		return false
	}
	m, ok := n.view[route]
	switch {
	case !ok:
		return true
	case m.State == StateAlive:
		return false
	case m.State == StateLeft && m.Addr == addr:
		return time.Since(m.Since) > n.cfg.DropTime
	}
	return true
}
