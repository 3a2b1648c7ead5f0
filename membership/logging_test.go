package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// LogRecorder is a slog.Handler that keeps what it handles and passes it
// on. The tests of membership and membership_test check a node's logs
// with it.
type LogRecorder struct {
	next  slog.Handler
	attrs []slog.Attr
	store *logStore
}

type logStore struct {
	mu   sync.Mutex
	recs []LogRecord
}

// LogRecord is one handled record, its attributes printed.
type LogRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

// NewLogRecorder returns a recorder that passes records on to next.
func NewLogRecorder(next slog.Handler) *LogRecorder {
	return &LogRecorder{next: next, store: &logStore{}}
}

func (r *LogRecorder) Enabled(ctx context.Context, l slog.Level) bool { return r.next.Enabled(ctx, l) }

func (r *LogRecorder) Handle(ctx context.Context, rec slog.Record) error {
	lr := LogRecord{Level: rec.Level, Msg: rec.Message, Attrs: make(map[string]string)}
	for _, a := range r.attrs {
		lr.Attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		lr.Attrs[a.Key] = a.Value.String()
		return true
	})
	r.store.mu.Lock()
	r.store.recs = append(r.store.recs, lr)
	r.store.mu.Unlock()
	return r.next.Handle(ctx, rec)
}

func (r *LogRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &LogRecorder{next: r.next.WithAttrs(as), attrs: append(slices.Clip(r.attrs), as...), store: r.store}
}

func (r *LogRecorder) WithGroup(name string) slog.Handler {
	return &LogRecorder{next: r.next.WithGroup(name), attrs: r.attrs, store: r.store}
}

// Records returns the records whose message is msg, in order.
func (r *LogRecorder) Records(msg string) []LogRecord {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	var out []LogRecord
	for _, lr := range r.store.recs {
		if lr.Msg == msg {
			out = append(out, lr)
		}
	}
	return out
}

// All returns every record, in order.
func (r *LogRecorder) All() []LogRecord {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	return slices.Clone(r.store.recs)
}

// testBridge returns a bridge logging at every level into a recorder, and
// the fake clock it reads.
func testBridge(t *testing.T) (*logBridge, *LogRecorder, *time.Time) {
	rec := NewLogRecorder(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	return &logBridge{log: slog.New(rec), now: func() time.Time { return now }}, rec, &now
}

func TestLogBridgeLevels(t *testing.T) {
	for _, tc := range []struct {
		line, msg string
		want      slog.Level
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:5000", "Stream connection from=127.0.0.1:5000", slog.LevelDebug},
		{"[INFO] memberlist: Marking node2 as failed, suspect timeout reached (0 peer confirmations)", "Marking node2 as failed, suspect timeout reached (0 peer confirmations)", slog.LevelDebug},
		{"[WARN] memberlist: Was able to connect to node2 over TCP but UDP probes failed, network may be misconfigured", "Was able to connect to node2 over TCP but UDP probes failed, network may be misconfigured", slog.LevelWarn},
		{"[ERR] memberlist: Failed fallback TCP ping: EOF", "Failed fallback TCP ping: EOF", slog.LevelWarn},
		{"[WARN] memberlist: Refuting a suspect message (from: node2)", "Refuting a suspect message (from: node2)", slog.LevelInfo},
		{"[WARN] memberlist: Refuting a dead message (from: node2)", "Refuting a dead message (from: node2)", slog.LevelInfo},
		{"[WARN] memberlist: ignoring alive message for 'node4': session manager \"backup\", this node runs \"delta\"", "ignoring alive message for 'node4': session manager \"backup\", this node runs \"delta\"", slog.LevelDebug},
		{"[WARN] memberlist: ignoring alive message for 'node4' (127.0.0.1:7946) because Vsn is not present", "ignoring alive message for 'node4' (127.0.0.1:7946) because Vsn is not present", slog.LevelWarn},
		{"[ERR] memberlist: Conflicting address for node1. Mine: 127.0.0.1:7946 Theirs: 127.0.0.1:7950 Old state: 0", "Conflicting address for node1. Mine: 127.0.0.1:7946 Theirs: 127.0.0.1:7950 Old state: 0", slog.LevelDebug},
	} {
		t.Run(tc.msg, func(t *testing.T) {
			b, rec, _ := testBridge(t)
			if _, err := b.Write([]byte(tc.line + "\n")); err != nil {
				t.Fatal(err)
			}
			got := rec.Records(tc.msg)
			if len(got) != 1 || got[0].Level != tc.want || got[0].Attrs["source"] != "memberlist" {
				t.Errorf("Write(%q) logged %+v, want one record at %v", tc.line, got, tc.want)
			}
		})
	}
}

func TestLogBridgeRepeats(t *testing.T) {
	b, rec, now := testBridge(t)
	write := func(line string) {
		t.Helper()
		if _, err := b.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	const warn = "[WARN] memberlist: Got ping for unexpected node 'x' from=127.0.0.1:"
	const msg = "Got ping for unexpected node 'x' from=127.0.0.1:"
	for i := range 5 {
		write(fmt.Sprint(warn, 40000+i)) // the same message from ever new ports
		write("[DEBUG] memberlist: Stream connection from=127.0.0.1:40000")
		*now = now.Add(10 * time.Second)
	}
	write("[ERR] memberlist: Failed fallback TCP ping: EOF") // another message
	if got := rec.Records(msg + "40000"); len(got) != 1 || got[0].Attrs["suppressed"] != "" {
		t.Fatalf("first minute: %+v, want the first copy alone", got)
	}
	if got := len(rec.Records("Stream connection from=127.0.0.1:40000")); got != 5 {
		t.Errorf("%d debug records, want all 5: only Info and above are rate-limited", got)
	}
	if got := len(rec.Records("Failed fallback TCP ping: EOF")); got != 1 {
		t.Errorf("another message logged %d times, want 1", got)
	}

	*now = now.Add(repeatWindow)
	write(warn + "40009")
	write(warn + "40010")
	got := rec.Records(msg + "40009")
	if len(got) != 1 || got[0].Attrs["suppressed"] != "4" || got[0].Level != slog.LevelWarn {
		t.Errorf("after the window: %+v, want one warning with suppressed=4", got)
	}
	if got := rec.Records(msg + "40010"); len(got) != 0 {
		t.Errorf("repeat right after the window was logged: %+v", got)
	}
}

// TestLogBridgeRewrites checks the memberlist messages the bridge replaces
// with clearer ones.
func TestLogBridgeRewrites(t *testing.T) {
	meta := "[" + strings.Repeat("133 161 114 165 110 111 100 101 49 ", 30) + "]"
	for _, tc := range []struct {
		line, msg string
		level     slog.Level
		attrs     map[string]string
	}{
		{`[ERR] memberlist: discarding stream with unacceptable label "other": from=127.0.0.1:40312`,
			"refused a node of another domain", slog.LevelWarn,
			map[string]string{"peer_domain": "other", "domain": "cohort", "addr": "127.0.0.1:40312"}},
		{`[ERR] memberlist: discarding packet with unacceptable label "a \"b\"": from=[::1]:7946`,
			"refused a node of another domain", slog.LevelWarn,
			map[string]string{"peer_domain": `a "b"`, "domain": "cohort", "addr": "[::1]:7946"}},
		{"[ERR] memberlist: failed to receive: remote state is encrypted and encryption is not configured from=127.0.0.1:36982",
			"refused a node with another cluster key", slog.LevelWarn,
			map[string]string{"addr": "127.0.0.1:36982", "err": "remote state is encrypted and encryption is not configured"}},
		{"[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=127.0.0.1:7950",
			"refused a node with another cluster key", slog.LevelWarn,
			map[string]string{"addr": "127.0.0.1:7950", "err": "no installed keys could decrypt the message"}},
		{"[WARN] memberlist: Refuting an alive message for 'node1' (127.0.0.1:7946) meta:(" + meta + " VS " + meta + "), vsn:([1 5 2 0 0 0] VS [1 5 2 0 0 0])",
			"refuting an outdated alive message about this node, as a node restarted on its address does", slog.LevelInfo,
			map[string]string{"addr": "127.0.0.1:7946"}},
	} {
		t.Run(tc.msg, func(t *testing.T) {
			b, rec, _ := testBridge(t)
			b.domain = "cohort"
			if _, err := b.Write([]byte(tc.line + "\n")); err != nil {
				t.Fatal(err)
			}
			all := rec.All()
			if len(all) != 1 || all[0].Msg != tc.msg || all[0].Level != tc.level || all[0].Attrs["source"] != "memberlist" {
				t.Fatalf("Write(%q) logged %+v, want one %q at %v", tc.line, all, tc.msg, tc.level)
			}
			for k, v := range tc.attrs {
				if got := all[0].Attrs[k]; got != v {
					t.Errorf("%s=%q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestLogBridgeRepeatsPerPeer checks that memberlist's lines about a peer
// that hangs, which name a new local port with every probe, are
// suppressed as repeats, per peer, and so are refusals of a node of
// another domain, whose connections come from ever new ports.
func TestLogBridgeRepeatsPerPeer(t *testing.T) {
	b, rec, now := testBridge(t)
	b.domain = "cohort"
	write := func(line string) {
		t.Helper()
		if _, err := b.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	// memberlist stretches the probe timeout while it doubts its own
	// health: copies of one failure differ in it.
	const ping = "[ERR] memberlist: Failed fallback TCP ping: timeout %s: read tcp 127.0.0.1:%d->127.0.0.1:%d: i/o timeout"
	probeTimeout := []string{"92ms", "184ms"}
	const pushPull = "[ERR] memberlist: Push/Pull with node2 failed: read tcp 127.0.0.1:%d->127.0.0.1:7947: i/o timeout"
	const label = `[ERR] memberlist: discarding stream with unacceptable label "other": from=127.0.0.1:%d`
	for i := range 10 { // 10 probes of each of two hung peers, a second apart
		write(fmt.Sprintf(ping, probeTimeout[i%2], 40000+i, 7947))
		write(fmt.Sprintf(ping, probeTimeout[i%2], 41000+i, 7948))
		write(fmt.Sprintf(pushPull, 42000+i))
		write(fmt.Sprintf(label, 43000+i))
		*now = now.Add(time.Second)
	}
	count := func(prefix string) int {
		k := 0
		for _, r := range rec.All() {
			if strings.HasPrefix(r.Msg, prefix) {
				k++
			}
		}
		return k
	}
	for _, tc := range []struct {
		prefix string
		want   int
	}{
		{"Failed fallback TCP ping: timeout 92ms: read tcp 127.0.0.1:40000->127.0.0.1:7947", 1},
		{"Failed fallback TCP ping: timeout 92ms: read tcp 127.0.0.1:41000->127.0.0.1:7948", 1},
		{"Failed fallback TCP ping", 2}, // one per peer
		{"Push/Pull with node2 failed", 1},
		{"refused a node of another domain", 1},
	} {
		if got := count(tc.prefix); got != tc.want {
			t.Errorf("%d records %q, want %d", got, tc.prefix, tc.want)
		}
	}
	*now = now.Add(repeatWindow)
	write(fmt.Sprintf(ping, "92ms", 40100, 7947))
	got := rec.Records(fmt.Sprintf(ping, "92ms", 40100, 7947)[len("[ERR] memberlist: "):])
	if len(got) != 1 || got[0].Attrs["suppressed"] != "9" {
		t.Errorf("after the window: %+v, want one record with suppressed=9", got)
	}
}

func TestRepeatKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Failed to receive: EOF from=127.0.0.1:51234", "Failed to receive: EOF from=127.0.0.1"},
		{"Failed fallback TCP ping: timeout 1s: read tcp 127.0.0.1:51234->127.0.0.1:7946: i/o timeout", "Failed fallback TCP ping: timeout …: read tcp 127.0.0.1->127.0.0.1:7946: i/o timeout"},
		{"Failed fallback TCP ping: timeout 466ms: EOF", "Failed fallback TCP ping: timeout …: EOF"},
		{"dial timeout now: refused", "dial timeout now: refused"},
		{"Push/Pull with n2 failed: write tcp [::1]:51234->[::1]:7946: broken pipe", "Push/Pull with n2 failed: write tcp [::1]->[::1]:7946: broken pipe"},
		{"Failed to receive: EOF from=[::1]:51234 again", "Failed to receive: EOF from=[::1] again"},
		{"from=<unknown address>", "from=<unknown address>"},
		{"no address at all: 127.0.0.1:7946", "no address at all: 127.0.0.1:7946"},
		{"a from=10.0.0.1:1 b from=10.0.0.2:2", "a from=10.0.0.1 b from=10.0.0.2"},
	} {
		if got := repeatKey(tc.in); got != tc.want {
			t.Errorf("repeatKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// recordedNode starts a lone node1 whose log is recorded.
func recordedNode(t *testing.T) (*Node, *LogRecorder) {
	t.Helper()
	rec := NewLogRecorder(slog.NewTextHandler(t.Output(), nil))
	c := DefaultLocalConfig()
	c.Route = "node1"
	c.Logger = slog.New(rec)
	n, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n, rec
}

// TestSeedWarnings checks that a failing seed is reported at once, then at
// most once per seedWarnEvery, and its recovery once.
func TestSeedWarnings(t *testing.T) {
	n, rec := recordedNode(t)

	t0 := time.Now()
	refused := errors.New("connection refused")
	for i := range 10 { // ten attempts 10s apart
		n.seedFailed("10.0.0.9:7946", refused, t0.Add(time.Duration(i)*10*time.Second))
	}
	n.seedFailed("seeds.example:7946", errors.New("no such host"), t0)
	warns := rec.Records("seed did not answer; retrying")
	if len(warns) != 3 {
		t.Fatalf("%d warnings, want 3: the first failure of each seed, then one a minute later: %+v", len(warns), warns)
	}
	if w := warns[0]; w.Level != slog.LevelWarn || w.Attrs["seed"] != "10.0.0.9:7946" || w.Attrs["err"] != "connection refused" || w.Attrs["failures"] != "1" {
		t.Errorf("first warning %+v", w)
	}
	if w := warns[1]; w.Attrs["failures"] != "7" || w.Attrs["failing_for"] != "1m0s" {
		t.Errorf("repeated warning %+v, want the 7th failure, a minute in", w)
	}
	if w := warns[2]; w.Attrs["seed"] != "seeds.example:7946" || w.Attrs["err"] != "no such host" {
		t.Errorf("warning %+v, want the second seed named with its error", w)
	}

	n.seedAnswered("10.0.0.9:7946", t0.Add(2*time.Minute))
	n.seedAnswered("10.0.0.9:7946", t0.Add(3*time.Minute)) // still fine: nothing to say
	if got := rec.Records("seed answered"); len(got) != 1 || got[0].Level != slog.LevelInfo ||
		got[0].Attrs["seed"] != "10.0.0.9:7946" || got[0].Attrs["failures"] != "10" {
		t.Errorf("recovery logged as %+v, want one Info naming the seed", got)
	}
	n.seedFailed("10.0.0.9:7946", refused, t0.Add(4*time.Minute))
	if got := len(rec.Records("seed did not answer; retrying")); got != 4 {
		t.Errorf("a new run of failures logged %d warnings in all, want a 4th", got)
	}
}

// TestSeedWarningCauses checks that each cause of a failing seed has its
// own warning, and that a new cause is warned about at once.
func TestSeedWarningCauses(t *testing.T) {
	n, rec := recordedNode(t)

	t0 := time.Now()
	const seed = "seed.example:7946"
	const domain = "seed closed the connection without answering; retrying"
	for i, tc := range []struct {
		err       error
		msg, hint string
	}{
		{&lookupError{host: "seed.example", err: errors.New("no such host")}, "seed lookup failed; retrying", ""},
		{errors.New("failed to join 10.0.0.9:7946: dial tcp 10.0.0.9:7946: connect: connection refused"), "seed did not answer; retrying", "reachable"},
		{errors.New("failed to join 10.0.0.9:7946: no installed keys could decrypt the message"), "seed answered but could not be read; retrying", "cluster key"},
		{errors.New("failed to join 10.0.0.9:7946: EOF"), domain, `another domain`},
	} {
		// Seconds apart: each new cause is warned about at once.
		n.seedFailed(seed, tc.err, t0.Add(time.Duration(i)*time.Second))
		got := rec.Records(tc.msg)
		if len(got) != 1 || got[0].Attrs["err"] != tc.err.Error() || !strings.Contains(got[0].Attrs["hint"], tc.hint) {
			t.Errorf("%v: logged %+v, want one %q with a hint on %q", tc.err, got, tc.msg, tc.hint)
		}
	}
	if w := rec.Records(domain); len(w) == 1 && !strings.Contains(w[0].Attrs["hint"], `this node's, "cohort"`) {
		t.Errorf("hint %q does not name this node's domain", w[0].Attrs["hint"])
	}
	// The same cause, told by a reset rather than an EOF: not again.
	reset := errors.New("failed to join 10.0.0.9:7946: read tcp 10.0.0.1:40000->10.0.0.9:7946: read: connection reset by peer")
	n.seedFailed(seed, reset, t0.Add(time.Minute-time.Second))
	if got := rec.Records("seed closed the connection without answering; retrying"); len(got) != 1 {
		t.Errorf("a repeat of the cause within a minute logged %+v, want no second warning", got)
	}
}
