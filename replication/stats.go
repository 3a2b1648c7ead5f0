package replication

import (
	"errors"
	"io"
	"math"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// drop is why a connection was dropped or a frame refused.
type drop int

const (
	dropOversize drop = iota
	dropGarbage
	dropTruncated
	dropAuth
	dropDomain
	dropVersion
	dropNoHandler
	dropPanic
	dropIO
	dropTimeout
	numDrops
)

func (d drop) String() string {
	return [...]string{"oversize", "garbage", "truncated", "auth", "domain", "version", "no_handler", "panic", "io", "timeout"}[d]
}

func dropReason(err error) drop {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return dropTimeout
	case errors.Is(err, ErrFrameTooLarge):
		return dropOversize
	case errors.Is(err, ErrAuth):
		return dropAuth
	case errors.Is(err, ErrDomain):
		return dropDomain
	case errors.Is(err, ErrVersion):
		return dropVersion
	case errors.Is(err, io.ErrUnexpectedEOF):
		return dropTruncated
	case errors.Is(err, ErrMalformed):
		return dropGarbage
	}
	return dropIO
}

type dropCounters [numDrops]atomic.Int64

func (d *dropCounters) add(r drop) { d[r].Add(1) }

type recvCounters struct {
	frames, bytes atomic.Int64
}

// maxCountedType bounds the message types counted one by one; higher ones
// share the last slot.
const maxCountedType = 64

// typeCounters count frames and bytes of each message type.
type typeCounters [maxCountedType]struct {
	framesSent, bytesSent, framesRecv, bytesRecv atomic.Int64
}

func (t *typeCounters) of(typ MsgType) int { return int(min(typ, maxCountedType-1)) }

// TypeStats counts the frames of one message type.
type TypeStats struct {
	FramesSent, BytesSent, FramesReceived, BytesReceived int64
}

// histogram counts round trips in fixed buckets.
type histogram struct {
	mu     sync.Mutex
	counts []int64
	sum    time.Duration
	n      int64
}

// LatencyBuckets are the upper bounds of the round-trip histogram.
var LatencyBuckets = []time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

func newHistogram() *histogram { return &histogram{counts: make([]int64, len(LatencyBuckets)+1)} }

func (h *histogram) observe(d time.Duration) {
	i := sort.Search(len(LatencyBuckets), func(i int) bool { return d <= LatencyBuckets[i] })
	h.mu.Lock()
	h.counts[i]++
	h.sum += d
	h.n++
	h.mu.Unlock()
}

// Histogram is a snapshot of round-trip times of Ack and Sync sends:
// Counts[i] counts round trips of at most LatencyBuckets[i]; the last
// count is for longer ones.
type Histogram struct {
	Counts []int64
	Sum    time.Duration
	Count  int64
}

// Quantile estimates the q-quantile (0 < q <= 1) as the upper bound of
// the bucket it falls in.
func (h Histogram) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.Count)))
	var acc int64
	for i, c := range h.Counts {
		acc += c
		if acc >= rank {
			if i < len(LatencyBuckets) {
				return LatencyBuckets[i]
			}
			break
		}
	}
	return LatencyBuckets[len(LatencyBuckets)-1]
}

func (h *histogram) snapshot() Histogram {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Histogram{Counts: append([]int64(nil), h.counts...), Sum: h.sum, Count: h.n}
}

// PeerStats describes one peer.
type PeerStats struct {
	Route          string
	Addr           string
	Connected      bool
	Stalled        bool  // a send gave up waiting for it, and it has not answered since (see ErrPeerStalled)
	Stalls         int64 // times it became stalled
	NeedsResync    bool
	QueueDepth     int
	FramesSent     int64
	BytesSent      int64
	FramesReceived int64
	BytesReceived  int64
	Errors         int64 // failed dials and lost connections
	QueueFull      int64 // sends refused because the queue was full
}

// Stats is a snapshot of the channel's counters.
type Stats struct {
	Peers   []PeerStats      // sorted by route
	Dropped map[string]int64 // connections dropped or frames refused, by reason
	Latency Histogram        // round trips of Ack and Sync sends
	ByType  map[MsgType]TypeStats
}

// Stats returns a snapshot of the counters.
func (c *Channel) Stats() Stats {
	s := Stats{Dropped: map[string]int64{}, Latency: c.histogram.snapshot(), ByType: map[MsgType]TypeStats{}}
	for i := range c.types {
		t := &c.types[i]
		ts := TypeStats{FramesSent: t.framesSent.Load(), BytesSent: t.bytesSent.Load(), FramesReceived: t.framesRecv.Load(), BytesReceived: t.bytesRecv.Load()}
		if ts != (TypeStats{}) {
			s.ByType[MsgType(i)] = ts
		}
	}
	for r := drop(0); r < numDrops; r++ {
		s.Dropped[r.String()] = c.drops[r].Load()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.peers {
		ps := PeerStats{
			Route: p.route, Addr: p.addr, Connected: p.connected.Load(), Stalled: p.stalled.Load(), Stalls: p.stalls.Load(), NeedsResync: p.resync.Load(),
			QueueDepth: len(p.queue), FramesSent: p.framesSent.Load(), BytesSent: p.bytesSent.Load(),
			Errors: p.errs.Load(), QueueFull: p.queueFull.Load(),
		}
		if rc := c.recv[p.route]; rc != nil {
			ps.FramesReceived, ps.BytesReceived = rc.frames.Load(), rc.bytes.Load()
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Route < s.Peers[j].Route })
	return s
}
