package manager

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"
)

// sessionKB fills s with about 1 KB: 8 string attributes of 120 bytes.
func sessionKB(s *Session) {
	for i := range 8 {
		_ = s.Set("attr"+string(rune('a'+i)), strings.Repeat(string(rune('a'+i)), 120))
	}
}

// sessionOneKB fills s with one 1 KB attribute, as a serialized cart.
func sessionOneKB(s *Session) {
	_ = s.Set("cart", strings.Repeat("x", 1000))
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkSessionMemory measures the heap held per 1 KB session on a
// primary (values kept decoded and encoded) and on a replica (encoded
// only), against the session's encoded size. Goal: at most 1.5x.
func BenchmarkSessionMemory(b *testing.B) {
	for _, shape := range []struct {
		name string
		fill func(*Session)
	}{{"8x120B", sessionKB}, {"1x1KB", sessionOneKB}} {
		b.Run(shape.name, func(b *testing.B) { benchSessionMemory(b, shape.fill) })
	}
}

func benchSessionMemory(b *testing.B, fill func(*Session)) {
	const n = 100_000
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for b.Loop() {
		cfg := DefaultConfig()
		cfg.Route, cfg.Logger = "node1", quiet
		h := cfg.host()
		before := heapInUse()
		primary := newStore(h, 0)
		encoded := 0
		for range n {
			s := primary.newSession("node1", time.Hour)
			fill(s)
			s.commit()
			b, _ := EncodeFull(s.full())
			encoded += len(b)
		}
		mid := heapInUse()
		replica := newStore(h, 0)
		for _, s := range primary.all() {
			// Through the wire form, as a replica receives it.
			raw, _ := EncodeFull(s.full())
			f, _ := DecodeFull(raw)
			replica.put(h.fromFull(f))
		}
		after := heapInUse()
		perEncoded := float64(encoded) / n
		b.ReportMetric(perEncoded, "encoded-B/session")
		b.ReportMetric(float64(mid-before)/n, "primary-B/session")
		b.ReportMetric(float64(after-mid)/n, "replica-B/session")
		b.ReportMetric(float64(mid-before)/n/perEncoded, "primary/encoded")
		b.ReportMetric(float64(after-mid)/n/perEncoded, "replica/encoded")
		runtime.KeepAlive(primary)
		runtime.KeepAlive(replica)
	}
}

// BenchmarkStateTransfer moves 100k sessions of 1 KB to a joining Delta
// node over the in-memory transport. Goal: at most 2 s.
func BenchmarkStateTransfer(b *testing.B) {
	const n = 100_000
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	newNode := func(net *memNet, route string) *Delta {
		cfg := DefaultDeltaConfig()
		cfg.Route, cfg.Logger = route, quiet
		m, err := NewDelta(cfg, net.transport(route))
		if err != nil {
			b.Fatal(err)
		}
		net.add(route, m)
		return m
	}
	for b.Loop() {
		net := newMemNet()
		a := newNode(net, "a")
		_ = a.Sync(context.Background())
		for range n {
			s, _ := a.Create(context.Background())
			sessionKB(s)
			s.commit()
		}
		start := time.Now()
		d := newNode(net, "d")
		if err := d.Sync(context.Background()); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		if d.Count() != n {
			b.Fatalf("transferred %d sessions, want %d", d.Count(), n)
		}
		b.ReportMetric(elapsed.Seconds(), "transfer-s")
		b.ReportMetric(n/elapsed.Seconds(), "sessions/s")
		_ = a.Close(context.Background())
		_ = d.Close(context.Background())
		net.close()
	}
}
