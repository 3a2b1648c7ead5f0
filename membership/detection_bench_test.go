package membership_test

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/membership"
)

// killsPerIteration is how many failures each benchmark iteration measures.
const killsPerIteration = 5

// BenchmarkFailureDetection measures, for each cluster size and setting of
// the two knobs, the time from stopping a node without a leave (as SIGKILL
// would) to the moment every surviving peer has delivered its EventFail.
// Each iteration kills a random node killsPerIteration times, at a random
// phase of the probe schedule, restarting it in between. It reports the
// mean and worst detection time and their ratio to drop-time; the goal is a
// ratio of at most 1.2. The cluster sizes are 3 and 5, or those listed in
// COHORT_DETECTION_NODES (comma-separated, such as 10,20); the settings
// are 500ms/3s and 200ms/1s, or those listed in COHORT_DETECTION_KNOBS
// (comma-separated frequency/drop-time pairs, such as 500ms/2.2s).
func BenchmarkFailureDetection(b *testing.B) {
	sizes := []int{3, 5}
	if env := os.Getenv("COHORT_DETECTION_NODES"); env != "" {
		sizes = nil
		for f := range strings.SplitSeq(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 2 {
				b.Fatalf("COHORT_DETECTION_NODES=%q: want comma-separated cluster sizes of at least 2, such as 10,20", env)
			}
			sizes = append(sizes, n)
		}
	}
	type knobs struct{ frequency, dropTime time.Duration }
	settings := []knobs{{500 * time.Millisecond, 3 * time.Second}, {200 * time.Millisecond, time.Second}}
	if env := os.Getenv("COHORT_DETECTION_KNOBS"); env != "" {
		settings = nil
		for f := range strings.SplitSeq(env, ",") {
			freq, drop, _ := strings.Cut(strings.TrimSpace(f), "/")
			fd, ferr := time.ParseDuration(freq)
			dd, derr := time.ParseDuration(drop)
			if ferr != nil || derr != nil || fd <= 0 || dd < 2*fd {
				b.Fatalf("COHORT_DETECTION_KNOBS=%q: want comma-separated frequency/drop-time pairs, drop-time at least twice frequency, such as 500ms/3s,200ms/1s", env)
			}
			settings = append(settings, knobs{fd, dd})
		}
	}
	for _, knobs := range settings {
		for _, size := range sizes {
			name := fmt.Sprintf("nodes=%d/frequency=%v/drop-time=%v", size, knobs.frequency, knobs.dropTime)
			b.Run(name, func(b *testing.B) {
				quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
				setKnobs := func(i int, c *membership.Config) {
					c.Frequency, c.DropTime, c.Logger = knobs.frequency, knobs.dropTime, quiet
				}
				var times []time.Duration
				for b.Loop() {
					nodes := startCluster(b, size, setKnobs)
					for range killsPerIteration {
						times = append(times, detectOnce(b, nodes, knobs.frequency, knobs.dropTime))
						// Restart the victim (never node1, the others' seed).
						v := slices.IndexFunc(nodes, func(n *membership.Node) bool { return n == nil })
						c := testConfig(b, fmt.Sprintf("node%d", v+1))
						setKnobs(v, &c)
						c.Join = []string{nodes[0].Addr().String()}
						nodes[v] = start(b, c)
						waitConverged(b, nodes...)
					}
					for _, n := range nodes {
						_ = n.Close()
					}
				}
				var sum time.Duration
				for _, d := range times {
					sum += d
				}
				mean, worst := sum/time.Duration(len(times)), slices.Max(times)
				b.ReportMetric(float64(len(times)), "kills")
				b.ReportMetric(float64(mean.Milliseconds()), "detect-ms")
				b.ReportMetric(float64(worst.Milliseconds()), "worst-ms")
				b.ReportMetric(float64(mean)/float64(knobs.dropTime), "detect/drop-time")
				b.ReportMetric(float64(worst)/float64(knobs.dropTime), "worst/drop-time")
			})
		}
	}
}

// detectOnce kills a random node other than the first, at a random phase of
// the probe schedule, and returns the time until every other node has
// reported it failed. The victim's slot in nodes is set to nil.
func detectOnce(b *testing.B, nodes []*membership.Node, frequency, drop time.Duration) time.Duration {
	v := 1 + rand.IntN(len(nodes)-1)
	victim := nodes[v]
	var subs []*membership.Subscription
	for i, n := range nodes {
		if i == v {
			continue
		}
		s := n.Subscribe()
		for range len(nodes) - 1 {
			<-s.C // the initial joins
		}
		subs = append(subs, s)
	}
	time.Sleep(rand.N(time.Duration(len(nodes)) * frequency))
	stopped := time.Now()
	_ = victim.Close()
	for _, s := range subs {
		nextFail(b, s, victim.Route(), 10*drop)
		s.Close()
	}
	nodes[v] = nil
	return time.Since(stopped)
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
