package membership_test

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/membership"
)

// BenchmarkFailureDetection measures, for each cluster size and setting of
// the two knobs, the time from stopping a node without a leave (as SIGKILL
// would) to the moment every surviving peer has delivered its EventFail.
// It reports the mean and worst detection time and their ratio to
// drop-time; the goal is a ratio of at most 1.2.
func BenchmarkFailureDetection(b *testing.B) {
	for _, knobs := range []struct{ frequency, dropTime time.Duration }{
		{500 * time.Millisecond, 3 * time.Second},
		{200 * time.Millisecond, time.Second},
	} {
		for _, size := range []int{3, 5} {
			name := fmt.Sprintf("nodes=%d/frequency=%v/drop-time=%v", size, knobs.frequency, knobs.dropTime)
			b.Run(name, func(b *testing.B) {
				quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
				var times []time.Duration
				for b.Loop() {
					nodes := startCluster(b, size, func(i int, c *membership.Config) {
						c.Frequency, c.DropTime, c.Logger = knobs.frequency, knobs.dropTime, quiet
					})
					var subs []*membership.Subscription
					for _, n := range nodes[:size-1] {
						s := n.Subscribe()
						for range size - 1 {
							<-s.C // the initial joins
						}
						subs = append(subs, s)
					}
					// Kill at a random phase of the probe schedule.
					time.Sleep(rand.N(time.Duration(size) * knobs.frequency))
					victim := nodes[size-1]
					stopped := time.Now()
					_ = victim.Close()
					for _, s := range subs {
						nextFail(b, s, victim.Route(), 10*knobs.dropTime)
						s.Close()
					}
					times = append(times, time.Since(stopped))
					for _, n := range nodes {
						_ = n.Close()
					}
				}
				var sum time.Duration
				for _, d := range times {
					sum += d
				}
				mean, worst := sum/time.Duration(len(times)), slices.Max(times)
				b.ReportMetric(float64(mean.Milliseconds()), "detect-ms")
				b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
				b.ReportMetric(float64(mean)/float64(knobs.dropTime), "detect/drop-time")
				b.ReportMetric(float64(worst)/float64(knobs.dropTime), "worst/drop-time")
			})
		}
	}
}

// nextFail waits for the EventFail of route on s.
func nextFail(b testing.TB, s *membership.Subscription, route string, timeout time.Duration) {
	for {
		ev := nextEvent(b, s, route, timeout)
		if ev.Type == membership.EventFail {
			return
		}
	}
}
