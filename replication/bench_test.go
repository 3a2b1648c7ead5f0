package replication

// Benchmarks of the replication channel, each beside a raw-TCP baseline
// measured in the same run:
//
//	go test -run '^$' -bench . -benchtime 1s ./replication/
//
// BenchmarkThroughput measures messages delivered to the peers' handlers
// per second (msgs/s, and MB/s of message bodies, both per peer) and, for
// Async to one peer, x-raw: the channel's MB/s over the raw baseline's.
// BenchmarkRoundTrip measures the latency of one sequential Ack or Sync
// send (p50-us, p99-us) and p50-x-raw, its median over a raw TCP
// ping-pong's. The benchmarks only report; they assert nothing about time.

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// benchSizes are the message body sizes measured.
var benchSizes = []struct {
	name string
	n    int
}{{"100B", 100}, {"1KB", 1 << 10}, {"16KB", 16 << 10}}

const (
	// benchSenders is how many goroutines send in Ack and Sync modes. Such
	// a Send blocks for a round trip, so one goroutine would measure
	// latency, not throughput; a web server has many requests in flight,
	// each blocked in its own Send, and the channel pipelines their
	// frames on one connection per peer. A fixed count (rather than
	// b.RunParallel's GOMAXPROCS multiple) keeps results comparable
	// between machines.
	benchSenders = 8
	// benchWindow bounds how many Async messages the sender has in flight
	// (queued or on the wire, not yet handled) per peer. It stays below
	// DefaultConfig's QueueSize (8192) so that the queue never overflows,
	// which would make Send fail with ErrQueueFull; the sender waits for
	// the receivers instead, as a higher layer with flow control would.
	benchWindow = 4096
	// benchWait bounds any wait for deliveries: a lost message fails the
	// benchmark instead of hanging it.
	benchWait = 30 * time.Second
	// benchAckSize is the payload of the raw ping-pong's ack frame, about
	// the size of the channel's msgpack ack envelope.
	benchAckSize = 16
)

// benchCheckLeaks fails b if a goroutine it started outlives its cleanups.
// Called first, its check runs after every later cleanup.
func benchCheckLeaks(b *testing.B) {
	opt := goleak.IgnoreCurrent()
	b.Cleanup(func() { goleak.VerifyNone(b, opt) })
}

// benchConfig is testConfig with a logger that keeps benchmark output
// clean.
func benchConfig(b *testing.B, route string) Config {
	c := testConfig(b, route)
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return c
}

// benchDelivered counts the messages a receiver's handler got and lets one
// goroutine wait, without spinning, until the count reaches a target.
type benchDelivered struct {
	n    atomic.Int64
	_    [56]byte // n, written on every message, on a cache line of its own
	wake atomic.Int64
	ch   chan struct{}
}

func newBenchDelivered() *benchDelivered { return &benchDelivered{ch: make(chan struct{}, 1)} }

func (d *benchDelivered) inc() {
	if d.n.Add(1) == d.wake.Load() {
		select {
		case d.ch <- struct{}{}:
		default:
		}
	}
}

// wait returns once the count reaches target. Only one goroutine waits at
// a time. The handler signals when its new count equals wake; storing
// wake before re-reading the count means either the waiter sees the count
// reach target or the handler sees wake == target.
func (d *benchDelivered) wait(b *testing.B, target int64) {
	var timeout <-chan time.Time
	for d.n.Load() < target {
		d.wake.Store(target)
		if d.n.Load() >= target {
			break
		}
		if timeout == nil {
			timeout = time.After(benchWait)
		}
		select {
		case <-d.ch:
		case <-timeout:
			b.Fatalf("%d of %d messages delivered after %v", d.n.Load(), target, benchWait)
		}
	}
}

// benchCluster starts peers receiving channels and a sender connected to
// all of them, and returns the sender and the receivers' counters once
// every peer is connected. The receivers are created first so that the
// cleanups close the sender first.
func benchCluster(b *testing.B, peers int) (*Channel, []*benchDelivered) {
	b.Helper()
	var recv []*Channel
	var counts []*benchDelivered
	for i := range peers {
		r := newChannel(b, benchConfig(b, fmt.Sprintf("peer%d", i+1)))
		d := newBenchDelivered()
		r.Handle(testType, func(string, []byte) error {
			d.inc()
			return nil
		})
		recv = append(recv, r)
		counts = append(counts, d)
	}
	a := newChannel(b, benchConfig(b, "sender"))
	for _, r := range recv {
		a.AddPeer(r.Route(), r.Addr().String())
	}
	// A Sync send returns once every peer is connected and has handled it.
	if err := a.Send(context.Background(), nil, testType, []byte("warm-up"), Sync); err != nil {
		b.Fatal(err)
	}
	for _, d := range counts {
		d.n.Store(0)
	}
	return a, counts
}

// benchConnPair returns the two ends of a loopback TCP connection, closed at
// cleanup. Go sets TCP_NODELAY on both, as the channel does.
func benchConnPair(b *testing.B) (client, server net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c // nil if Accept failed
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-accepted
		b.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		client.Close()
		b.Fatal("accept failed")
	}
	b.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// benchRawReader reads 4-byte-length-prefixed frames into a reused buffer.
type benchRawReader struct {
	br  *bufio.Reader
	h   [frameHeader]byte
	buf []byte
}

func newBenchRawReader(r io.Reader, size int) *benchRawReader {
	return &benchRawReader{br: bufio.NewReaderSize(r, 64<<10), buf: make([]byte, size)}
}

// next reads one frame and returns its payload, valid until the next call.
func (r *benchRawReader) next() ([]byte, error) {
	if _, err := io.ReadFull(r.br, r.h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(r.h[:]))
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	_, err := io.ReadFull(r.br, r.buf[:n])
	return r.buf[:n], err
}

// benchReportThroughput stops the timer and reports msgs/s and MB/s (1e6
// bytes, as the testing package counts them) delivered to each peer, and
// returns the MB/s.
func benchReportThroughput(b *testing.B, size int) float64 {
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	if sec <= 0 {
		return 0
	}
	mbps := float64(b.N) * float64(size) / 1e6 / sec
	b.ReportMetric(float64(b.N)/sec, "msgs/s")
	b.ReportMetric(mbps, "MB/s")
	return mbps
}

// BenchmarkThroughput sends b.N messages to every peer (Send with to nil)
// and measures until every peer's handler has them all. For each size the
// raw-TCP baseline runs first, so that the Async one-peer case can report
// x-raw against it (its last run's figure, the one printed). When -bench
// filters the baseline out, or -benchtime is 1x, x-raw is left out: a
// sub-benchmark matched only as a prefix runs once with b.N = 1, which
// measures nothing.
func BenchmarkThroughput(b *testing.B) {
	benchCheckLeaks(b)
	for _, size := range benchSizes {
		b.Run("size="+size.name, func(b *testing.B) {
			var rawMBps float64
			b.Run("raw-tcp", func(b *testing.B) {
				if mbps := benchRawThroughput(b, size.n); b.N > 1 {
					rawMBps = mbps
				}
			})
			for _, mode := range []SendMode{Async, Ack, Sync} {
				b.Run("mode="+mode.String(), func(b *testing.B) {
					for _, peers := range []int{1, 2} {
						b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
							mbps := benchChannelThroughput(b, size.n, mode, peers)
							if mode == Async && peers == 1 && rawMBps > 0 {
								b.ReportMetric(mbps/rawMBps, "x-raw")
							}
						})
					}
				})
			}
		})
	}
}

// benchRawThroughput writes b.N frames (4-byte length prefix and body)
// through a bufio.Writer on a loopback TCP connection from this goroutine
// while another reads them with a bufio.Reader into a reused buffer, and
// measures until the last is read.
func benchRawThroughput(b *testing.B, size int) float64 {
	client, server := benchConnPair(b)
	n := b.N
	var rerr error
	read := make(chan struct{}) // closed when the reader is done
	go func() {
		defer close(read)
		rr := newBenchRawReader(server, size)
		for range n {
			if _, rerr = rr.next(); rerr != nil {
				return
			}
		}
	}()
	// Closing the connections ends the reader if the writer failed.
	b.Cleanup(func() { client.Close(); server.Close(); <-read })

	body := make([]byte, size)
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[:], uint32(size))
	bw := bufio.NewWriterSize(client, 64<<10)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for range n {
		_, _ = bw.Write(h[:])
		if _, err := bw.Write(body); err != nil {
			b.Fatal(err)
		}
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	<-read
	if rerr != nil {
		b.Fatal(rerr)
	}
	return benchReportThroughput(b, size)
}

// benchChannelThroughput sends b.N messages of size bytes in mode to peers
// peers and measures until every peer's handler has had them all.
func benchChannelThroughput(b *testing.B, size int, mode SendMode, peers int) float64 {
	a, counts := benchCluster(b, peers)
	ctx := context.Background()
	body := make([]byte, size) // never modified: Async keeps a reference
	n := int64(b.N)
	minDelivered := func() int64 {
		m := counts[0].n.Load()
		for _, d := range counts[1:] {
			m = min(m, d.n.Load())
		}
		return m
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	if mode == Async {
		// One goroutine, as Async returns at once. The counters are read
		// only when the window may be full, not on every send.
		limit := int64(benchWindow)
		for i := int64(0); i < n; i++ {
			if i >= limit {
				if limit = minDelivered() + benchWindow; i >= limit {
					low := i - benchWindow/2
					for _, d := range counts {
						d.wait(b, low)
					}
					limit = low + benchWindow
				}
			}
			if err := a.Send(ctx, nil, testType, body, Async); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// benchSenders goroutines, each blocked in its Send for a round
		// trip while the others' frames share the connections.
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, 1)
		for range benchSenders {
			wg.Go(func() {
				for next.Add(1) <= n {
					if err := a.Send(ctx, nil, testType, body, mode); err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
				}
			})
		}
		wg.Wait()
		select {
		case err := <-errc:
			b.Fatal(err)
		default:
		}
	}
	// In Async mode, and in Ack mode (acked once read, before it is
	// handled), the last messages may still be on their way to handlers.
	for _, d := range counts {
		d.wait(b, n)
	}
	return benchReportThroughput(b, size)
}

// benchPercentile returns the q-quantile (0 < q <= 1) of sorted
// durations, by nearest rank.
func benchPercentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// benchReportLatency reports the p50 and p99 of the round trips in
// microseconds and returns the p50.
func benchReportLatency(b *testing.B, rtts []time.Duration) time.Duration {
	b.StopTimer()
	slices.Sort(rtts)
	p50, p99 := benchPercentile(rtts, 0.50), benchPercentile(rtts, 0.99)
	b.ReportMetric(float64(p50)/float64(time.Microsecond), "p50-us")
	b.ReportMetric(float64(p99)/float64(time.Microsecond), "p99-us")
	return p50
}

// BenchmarkRoundTrip measures one sender's sequential 1KB sends to one
// peer in Ack and Sync modes, each timed, after a raw TCP ping-pong
// baseline (a 1KB frame out, a small ack frame back) whose p50 the modes
// report p50-x-raw against. When -bench filters the baseline out, or
// -benchtime is 1x, p50-x-raw is left out.
func BenchmarkRoundTrip(b *testing.B) {
	benchCheckLeaks(b)
	const size = 1 << 10
	var rawP50 time.Duration
	b.Run("raw-tcp", func(b *testing.B) {
		if p50 := benchRawPingPong(b, size); b.N > 1 {
			rawP50 = p50
		}
	})
	for _, mode := range []SendMode{Ack, Sync} {
		b.Run("mode="+mode.String(), func(b *testing.B) {
			a, _ := benchCluster(b, 1)
			ctx := context.Background()
			body := make([]byte, size)
			rtts := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if err := a.Send(ctx, nil, testType, body, mode); err != nil {
					b.Fatal(err)
				}
				rtts = append(rtts, time.Since(start))
			}
			p50 := benchReportLatency(b, rtts)
			if rawP50 > 0 {
				b.ReportMetric(float64(p50)/float64(rawP50), "p50-x-raw")
			}
		})
	}
}

// benchRawPingPong writes a framed message of size bytes on a loopback TCP
// connection, waits for the other end's goroutine to answer with a small
// framed ack, and records each round trip.
func benchRawPingPong(b *testing.B, size int) time.Duration {
	client, server := benchConnPair(b)
	echoed := make(chan struct{})
	go func() {
		defer close(echoed)
		rr := newBenchRawReader(server, size)
		ack := make([]byte, frameHeader+benchAckSize)
		binary.BigEndian.PutUint32(ack, benchAckSize)
		for {
			if _, err := rr.next(); err != nil {
				return // closed at cleanup
			}
			if _, err := server.Write(ack); err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() { client.Close(); server.Close(); <-echoed })

	body := make([]byte, size)
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[:], uint32(size))
	bw := bufio.NewWriterSize(client, 64<<10)
	acks := newBenchRawReader(client, benchAckSize)
	rtts := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		_, _ = bw.Write(h[:])
		_, _ = bw.Write(body)
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
		if _, err := acks.next(); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return benchReportLatency(b, rtts)
}
