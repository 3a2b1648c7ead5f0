package membership

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// transport is memberlist's NetTransport with outbound connections that
// stop with the node. memberlist dials a seed or a member (to join, push
// and pull state, or probe over TCP) with a plain net.Dialer and waits on
// the connection for up to TCPTimeout, which its Shutdown does not cut
// short: Close during a join to a seed that does not answer would wait
// that long, and so would the join. Here a dial in progress ends when ctx
// is cancelled, and the end of ctx or Shutdown closes the connections
// still open.
type transport struct {
	*memberlist.NetTransport
	ctx context.Context

	mu     sync.Mutex
	conns  map[*dialedConn]struct{}
	closed bool
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

// newTransport binds the gossip listeners for mc, retrying as memberlist
// does when the port is left to the kernel and the UDP half is taken.
func newTransport(ctx context.Context, mc *memberlist.Config) (*transport, error) {
	nc := &memberlist.NetTransportConfig{
		BindAddrs: []string{mc.BindAddr},
		BindPort:  mc.BindPort,
		Logger:    mc.Logger,
	}
	attempts := 1
	if mc.BindPort == 0 {
		attempts = 10
	}
	var err error
	for range attempts {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(nc); err == nil {
			t := &transport{NetTransport: nt, ctx: ctx, conns: make(map[*dialedConn]struct{})}
			context.AfterFunc(ctx, t.closeDialed)
			return t, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("bind: %w", err)
}

// DialTimeout implements memberlist.Transport.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(t.ctx, "tcp", a.Addr)
	if err != nil {
		return nil, err
	}
	dc := &dialedConn{Conn: c, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	t.conns[dc] = struct{}{}
	return dc, nil
}

// Shutdown closes the connections this transport dialed that are still
// open, then stops the listeners.
func (t *transport) Shutdown() error {
	t.closeDialed()
	return t.NetTransport.Shutdown()
}

// closeDialed closes the connections this transport dialed and refuses
// those dialed from now on.
func (t *transport) closeDialed() {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// dialedConn is a connection the transport dialed; closing it forgets it.
type dialedConn struct {
	net.Conn
	t *transport
}

func (c *dialedConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}
