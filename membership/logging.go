package membership

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logBridge is the io.Writer behind memberlist's *log.Logger. memberlist
// writes lines such as "[WARN] memberlist: Was able to connect to ..."; the
// bridge parses the level and forwards the message to slog.
//
// Levels: memberlist's INFO lines go to Debug because the Node logs the
// same membership changes at Info itself, with route names; its ERR lines
// go to Warn because they describe peers (a failed push/pull with a dead
// node), not lost data. A few WARN and ERR lines are remapped: refuting a
// suspect, dead or alive message about this node is what a node restarted
// after a crash does, so it is Info; a refused alive message and a
// conflicting address are logged by the Node's delegates, once and with
// the reason, so memberlist's copies, repeated with every gossip, are
// Debug.
//
// Rewrites: a few messages are replaced by a clearer one with the details
// as attributes: a connection or packet dropped for another label (a node
// of another domain) or another key, and the refutation of an alive
// message about this node, which memberlist follows with both nodes'
// metadata as byte dumps.
//
// Repeats: memberlist logs the same problem with every probe or gossip
// round. A message of level Info or above is forwarded at most once per
// repeatWindow; the next one forwarded after that carries the number of
// copies dropped in between as "suppressed". Messages that differ only in
// the port of a connection's remote or local end count as the same.
type logBridge struct {
	log    *slog.Logger
	closed *atomic.Bool     // the node is closed: memberlist's stray timers stay quiet
	now    func() time.Time // nil means time.Now
	domain string           // this node's domain, named when another is refused

	mu     sync.Mutex
	recent map[string]*repeat // by repeatKey
}

// repeat is the last forwarding of one message.
type repeat struct {
	at         time.Time
	suppressed int
}

const (
	repeatWindow = time.Minute
	maxRecent    = 256 // messages remembered; expired ones go first
)

func (b *logBridge) Write(p []byte) (int, error) {
	if b.closed != nil && b.closed.Load() {
		return len(p), nil
	}
	line := bytes.TrimSpace(p)
	level := slog.LevelDebug
	for _, l := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelDebug},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelWarn},
		{"[ERROR]", slog.LevelWarn},
	} {
		if rest, ok := bytes.CutPrefix(line, []byte(l.prefix)); ok {
			level, line = l.level, bytes.TrimSpace(rest)
			break
		}
	}
	msg := string(bytes.TrimPrefix(line, []byte("memberlist: ")))
	level = remap(msg, level)
	if !b.log.Enabled(context.Background(), level) {
		return len(p), nil
	}
	attrs := []slog.Attr{slog.String("source", "memberlist")}
	key := ""
	if r, ok := b.rewrite(msg); ok {
		msg, key = r.msg, r.key
		attrs = append(attrs, r.attrs...)
	} else {
		key = repeatKey(msg)
	}
	if level >= slog.LevelInfo {
		suppressed, ok := b.admit(key)
		if !ok {
			return len(p), nil
		}
		if suppressed > 0 {
			attrs = append(attrs, slog.Int("suppressed", suppressed))
		}
	}
	b.log.LogAttrs(context.Background(), level, msg, attrs...)
	return len(p), nil
}

// remap returns the level of a memberlist message whose level the bridge
// changes, else level.
func remap(msg string, level slog.Level) slog.Level {
	for _, r := range []struct {
		prefix string
		level  slog.Level
	}{
		{"Refuting a suspect message", slog.LevelInfo},
		{"Refuting a dead message", slog.LevelInfo},
		{"Refuting an alive message", slog.LevelInfo},
		{"Conflicting address for ", slog.LevelDebug},
	} {
		if strings.HasPrefix(msg, r.prefix) {
			return r.level
		}
	}
	// "ignoring alive message for 'node4': <reason>" repeats the Node's
	// refusal; the variants without a reason after the quote do not.
	if rest, ok := strings.CutPrefix(msg, "ignoring alive message for '"); ok && strings.Contains(rest, "': ") {
		return slog.LevelDebug
	}
	return level
}

// rewritten is a memberlist message as the bridge logs it instead.
type rewritten struct {
	msg   string
	attrs []slog.Attr
	key   string // for the repeat filter
}

var (
	// memberlist: "discarding stream with unacceptable label %q: from=%s",
	// and the same for a packet.
	labelRE = regexp.MustCompile(`^discarding (?:stream|packet) with unacceptable label ("(?:[^"\\]|\\.)*"): from=(\S+)$`)
	// memberlist: "failed to receive: %s from=%s" for a stream, "Decrypt
	// packet failed: %v from=%s" for a packet, with a key mismatch.
	keyRE = regexp.MustCompile(`^(?:failed to receive|Decrypt packet failed): (.*(?:no installed keys could decrypt|encryption is configured but remote state is not encrypted|remote state is encrypted and encryption is not configured).*) from=(\S+)$`)
	// memberlist: "Refuting an alive message for '%s' (%v:%d) meta:(%v VS
	// %v), vsn:(%v VS %v)".
	refuteRE = regexp.MustCompile(`^Refuting an alive message for '[^']*' \(([^)]*)\)`)
)

// rewrite returns the message the bridge logs instead of msg, if any.
func (b *logBridge) rewrite(msg string) (rewritten, bool) {
	if m := labelRE.FindStringSubmatch(msg); m != nil {
		label, err := strconv.Unquote(m[1])
		if err != nil {
			label = m[1]
		}
		const text = "refused a node of another domain"
		return rewritten{
			msg:   text,
			attrs: []slog.Attr{slog.String("peer_domain", label), slog.String("domain", b.domain), slog.String("addr", m[2])},
			key:   text + " " + label + " " + withoutPort(m[2]),
		}, true
	}
	if m := keyRE.FindStringSubmatch(msg); m != nil {
		const text = "refused a node with another cluster key"
		return rewritten{
			msg:   text,
			attrs: []slog.Attr{slog.String("addr", m[2]), slog.String("err", m[1])},
			key:   text + " " + withoutPort(m[2]),
		}, true
	}
	if m := refuteRE.FindStringSubmatch(msg); m != nil {
		const text = "refuting an outdated alive message about this node, as a node restarted on its address does"
		return rewritten{msg: text, attrs: []slog.Attr{slog.String("addr", m[1])}, key: text + " " + m[1]}, true
	}
	return rewritten{}, false
}

// admit reports whether the message of repeatKey key is to be forwarded
// now and how many copies of it were dropped since it last was.
func (b *logBridge) admit(key string) (suppressed int, ok bool) {
	now := time.Now
	if b.now != nil {
		now = b.now
	}
	t := now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if r, seen := b.recent[key]; seen {
		if t.Sub(r.at) < repeatWindow {
			r.suppressed++
			return 0, false
		}
		suppressed = r.suppressed
	}
	if b.recent == nil {
		b.recent = make(map[string]*repeat)
	}
	if len(b.recent) >= maxRecent {
		for k, r := range b.recent {
			if t.Sub(r.at) >= repeatWindow {
				delete(b.recent, k)
			}
		}
		if len(b.recent) >= maxRecent {
			clear(b.recent) // a flood of distinct messages: start over
		}
	}
	b.recent[key] = &repeat{at: t}
	return suppressed, true
}

// repeatKey is msg without what changes from one copy of a message to the
// next: the ports of "from=" addresses, where memberlist names the remote
// end of a stream; that of the local end of a connection in a Go network
// error ("read tcp 127.0.0.1:51234->127.0.0.1:7946: i/o timeout"), which a
// failed TCP ping or push/pull gives; and the probe timeout of a failed
// TCP ping ("timeout 466ms:"), which memberlist stretches while it doubts
// its own health. The same problem with the same peer then reads as the
// same message.
func repeatKey(msg string) string {
	if !strings.Contains(msg, "from=") && !strings.Contains(msg, "->") && !strings.Contains(msg, "timeout ") {
		return msg
	}
	words := strings.Split(msg, " ")
	for i, w := range words {
		if addr, ok := strings.CutPrefix(w, "from="); ok {
			words[i] = "from=" + withoutPort(addr)
		} else if local, remote, ok := strings.Cut(w, "->"); ok {
			words[i] = withoutPort(local) + "->" + remote
		} else if d, ok := strings.CutSuffix(w, ":"); ok && i > 0 && words[i-1] == "timeout" {
			if _, err := time.ParseDuration(d); err == nil {
				words[i] = "…:"
			}
		}
	}
	return strings.Join(words, " ")
}

// withoutPort is addr without a trailing numeric ":port".
func withoutPort(addr string) string {
	if c := strings.LastIndexByte(addr, ':'); c >= 0 && isDigits(addr[c+1:]) {
		return addr[:c]
	}
	return addr
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
