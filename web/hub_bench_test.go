package web_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

const (
	// benchSenders is how many goroutines call SendToUser at once in the
	// throughput cases: request handlers of a busy node. A cross-node call
	// waits for a round trip, so by Little's law it needs more calls in
	// flight than a local one (which only queues) to reach the hub's
	// capacity; 128 lets both saturate the 2-core machine. With 32 the
	// cross case stays latency-bound, at about 0.5x local.
	benchSenders = 128
	// benchWindow bounds the messages sent and not yet received, below the
	// socket's send buffer, so that the local case, which only queues,
	// measures delivery and does not cut its own client off.
	benchWindow = 256
	// fanoutSockets is how many sockets the fan-out case spreads over the
	// 3 nodes, if the file descriptor limit allows (2 per socket: the
	// client's and the server's end).
	fanoutSockets = 10000
)

// BenchmarkHub measures the cluster WebSocket hub on a real 3-node Delta
// cluster (membership, replication channels, HTTP servers and WebSocket
// clients on 127.0.0.1), side by side in one run:
//
//   - send/local and send/cross: SendToUser throughput to one user whose
//     socket is on node a, called on a (local) or on c (cross: over the
//     replication channel: the operation one way, the count back), by
//     128 goroutines with at most 256 messages in flight. msgs/s counts
//     messages received by the client; x-local is cross over local. Goal:
//     cross ≥ 0.5x.
//
//   - latency/local and latency/cross: one message at a time, from the
//     SendToUser call until the client has read it. Goal: cross p99 ≤ 5 ms.
//
//   - publish-fanout: one Publish on a to a topic that up to 10000
//     sockets spread over a, b and c subscribe to; ms-to-last is the time
//     until the last socket has read it.
//
//     go test -run '^$' -bench Hub -benchtime 2s ./web/
func BenchmarkHub(b *testing.B) {
	parent := b
	leaks := goleak.IgnoreCurrent()
	b.Cleanup(func() { goleak.VerifyNone(b, leaks) })
	var (
		nodes     map[string]*hubNode
		target    *benchClient
		localRate float64
	)
	setup := func(sb *testing.B) {
		if nodes != nil {
			return
		}
		nodes = startHubCluster(b, func(_ string, c *web.HubConfig) {
			c.SendBuffer = 1024
		}, "a", "b", "c")
		target = dialBench(sb, b.Cleanup, nodes["a"], "target")
		waitOnline(sb, "target", 1, nodes["a"], nodes["b"], nodes["c"])
	}
	for _, mode := range []struct {
		name            string
		senders, window int
	}{
		{"send", benchSenders, benchWindow},
		{"latency", 1, 1},
	} {
		for _, from := range []string{"local", "cross"} {
			b.Run(mode.name+"/"+from, func(b *testing.B) {
				setup(b)
				node := nodes["a"]
				if from == "cross" {
					node = nodes["c"]
				}
				rate, lats := benchSend(b, node.hub, target, "target", mode.senders, mode.window)
				b.ReportMetric(rate, "msgs/s")
				b.ReportMetric(ms(percentile(lats, 0.50)), "p50-ms")
				b.ReportMetric(ms(percentile(lats, 0.99)), "p99-ms")
				if mode.name == "send" {
					if from == "local" && b.N > 1 {
						localRate = rate
					}
					if from == "cross" && localRate > 0 {
						b.ReportMetric(rate/localRate, "x-local")
					}
				}
			})
		}
	}
	var fan *fanout
	b.Run("publish-fanout", func(b *testing.B) {
		setup(b)
		if fan == nil {
			fan = startFanout(b, parent.Cleanup, nodes)
		}
		b.ReportAllocs()
		var total time.Duration
		var worst time.Duration
		for b.Loop() {
			fan.reached.Store(0)
			fan.all = make(chan struct{})
			start := time.Now()
			n, err := nodes["a"].hub.Publish(context.Background(), "fan", []byte("tick"))
			if err != nil || n != fan.n {
				b.Fatalf("Publish reached %d of %d sockets: %v", n, fan.n, err)
			}
			select {
			case <-fan.all:
			case <-time.After(30 * time.Second):
				b.Fatalf("only %d of %d sockets received the message after 30s", fan.reached.Load(), fan.n)
			}
			d := time.Since(start)
			total += d
			worst = max(worst, d)
		}
		b.ReportMetric(float64(fan.n), "sockets")
		b.ReportMetric(ms(total/time.Duration(b.N)), "ms-to-last")
		b.ReportMetric(ms(worst), "max-ms")
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// benchClient is a WebSocket client that records, for each message
// received, the time since the send time the message carries.
type benchClient struct {
	ws    *websocket.Conn
	round atomic.Pointer[benchRound]
	done  chan struct{}
}

// benchRound is one measurement: target messages, their latencies, and
// the window tokens to give back as they arrive.
type benchRound struct {
	target int64
	n      atomic.Int64
	lats   []time.Duration
	window chan struct{}
	all    chan struct{}
	bad    atomic.Int64
}

// dialBench connects user to n; the connection lives until cleanup runs.
func dialBench(b *testing.B, cleanup func(func()), n *hubNode, user string) *benchClient {
	ws, _, err := websocket.DefaultDialer.Dial(n.wsURL(user), nil)
	if err != nil {
		b.Fatal(err)
	}
	c := &benchClient{ws: ws, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			now := time.Now()
			r := c.round.Load()
			if r == nil {
				continue
			}
			sent, err := strconv.ParseInt(string(msg), 10, 64)
			if err != nil {
				r.bad.Add(1)
				continue
			}
			i := r.n.Add(1)
			if i <= int64(len(r.lats)) {
				r.lats[i-1] = now.Sub(time.Unix(0, sent))
			}
			select {
			case <-r.window:
			default:
			}
			if i == r.target {
				close(r.all)
			}
		}
	}()
	cleanup(func() {
		_ = ws.Close()
		<-c.done
	})
	return c
}

// benchSend sends b.N messages to user through hub from senders
// goroutines, with at most window in flight, and returns the messages/s
// received and their latencies.
func benchSend(b *testing.B, hub *web.Hub, c *benchClient, user string, senders, window int) (float64, []time.Duration) {
	r := &benchRound{
		target: int64(b.N), lats: make([]time.Duration, b.N),
		window: make(chan struct{}, window), all: make(chan struct{}),
	}
	c.round.Store(r)
	defer c.round.Store(nil)
	var next, failures atomic.Int64
	var firstErr atomic.Pointer[error]
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			buf := make([]byte, 0, 24)
			for next.Add(1) <= int64(b.N) {
				r.window <- struct{}{}
				buf = strconv.AppendInt(buf[:0], time.Now().UnixNano(), 10)
				if n, err := hub.SendToUser(ctx, user, buf); err != nil || n != 1 {
					if err == nil {
						err = fmt.Errorf("reached %d sockets, want 1", n)
					}
					failures.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					<-r.window
				}
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		b.Fatalf("%d of %d sends failed; first: %v", n, b.N, *firstErr.Load())
	}
	select {
	case <-r.all:
	case <-time.After(30 * time.Second):
		b.Fatalf("client received %d of %d messages", r.n.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if n := r.bad.Load(); n > 0 {
		b.Fatalf("%d unexpected messages", n)
	}
	return float64(b.N) / elapsed.Seconds(), r.lats
}

// fanout is the sockets of the fan-out case, subscribed to topic "fan".
type fanout struct {
	n       int
	reached atomic.Int64
	all     chan struct{}
}

// startFanout opens up to fanoutSockets sockets spread over the nodes,
// subscribes each to "fan" and waits until every node knows them all.
func startFanout(b *testing.B, cleanup func(func()), nodes map[string]*hubNode) *fanout {
	// Clients and servers share this process: 2 descriptors per socket,
	// plus a margin for the cluster's own.
	const margin = 300
	n := fanoutSockets
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(2*n+margin) {
		want := syscall.Rlimit{Cur: uint64(2*n + margin), Max: max(lim.Max, uint64(2*n+margin))}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			lim = want
		}
		n = min(n, (int(lim.Cur)-margin)/2)
		b.Logf("file descriptor limit %d: %d sockets", lim.Cur, n)
	}
	f := &fanout{n: n, all: make(chan struct{})}
	routes := []string{"a", "b", "c"}
	// One session per node, shared by its sockets: the sockets are what is
	// measured, not session creation.
	cookies := map[string]string{}
	for _, r := range routes {
		ws, resp, err := websocket.DefaultDialer.Dial(nodes[r].wsURL("fan-cookie"), nil)
		if err != nil {
			b.Fatal(err)
		}
		for _, ck := range resp.Cookies() {
			cookies[r] = ck.Name + "=" + ck.Value
		}
		_ = ws.Close()
	}
	dialer := &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 512, WriteBufferSize: 512}
	conns := make([]*websocket.Conn, n)
	var wg, readers sync.WaitGroup
	var failed atomic.Pointer[error]
	next := atomic.Int64{}
	for range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				r := routes[i%len(routes)]
				ws, _, err := dialer.Dial(nodes[r].wsURL("fan-"+strconv.Itoa(i)), http.Header{"Cookie": {cookies[r]}})
				if err == nil {
					err = ws.WriteMessage(websocket.TextMessage, []byte(`{"subscribe":"fan"}`))
				}
				if err == nil {
					_, _, err = ws.ReadMessage() // {"subscribed":"fan"}
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				conns[i] = ws
				readers.Go(func() {
					for {
						if _, _, err := ws.ReadMessage(); err != nil {
							return
						}
						if f.reached.Add(1) == int64(f.n) {
							close(f.all)
						}
					}
				})
			}
		})
	}
	wg.Wait()
	cleanup(func() {
		for _, ws := range conns {
			if ws != nil {
				_ = ws.Close()
			}
		}
		readers.Wait()
	})
	if err := failed.Load(); err != nil {
		b.Fatalf("opening the fan-out sockets: %v", *err)
	}
	waitFor(b, "every fan-out socket on every node", func() bool {
		for _, nd := range nodes {
			if st := nd.hub.Stats(); st.OnlineUsers < n {
				return false
			}
		}
		return true
	})
	return f
}
