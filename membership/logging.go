package membership

import (
	"bytes"
	"context"
	"log/slog"
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
// Repeats: memberlist logs the same problem with every probe or gossip
// round. A message of level Info or above is forwarded at most once per
// repeatWindow; the next one forwarded after that carries the number of
// copies dropped in between as "suppressed".
type logBridge struct {
	log    *slog.Logger
	closed *atomic.Bool     // the node is closed: memberlist's stray timers stay quiet
	now    func() time.Time // nil means time.Now

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
	if level >= slog.LevelInfo {
		suppressed, ok := b.admit(msg)
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

// admit reports whether msg is to be forwarded now and how many copies of
// it were dropped since it last was.
func (b *logBridge) admit(msg string) (suppressed int, ok bool) {
	now := time.Now
	if b.now != nil {
		now = b.now
	}
	t := now()
	key := repeatKey(msg)
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

// repeatKey is msg without the port of its "from=" addresses: memberlist
// names the remote end of a stream, whose port changes with every
// connection, and the same problem should read as the same message.
func repeatKey(msg string) string {
	const from = "from="
	if !strings.Contains(msg, from) {
		return msg
	}
	var sb strings.Builder
	for {
		i := strings.Index(msg, from)
		if i < 0 {
			sb.WriteString(msg)
			return sb.String()
		}
		i += len(from)
		sb.WriteString(msg[:i])
		msg = msg[i:]
		end := strings.IndexAny(msg, " \t")
		if end < 0 {
			end = len(msg)
		}
		addr := msg[:end]
		if c := strings.LastIndexByte(addr, ':'); c >= 0 && isDigits(addr[c+1:]) {
			addr = addr[:c]
		}
		sb.WriteString(addr)
		msg = msg[end:]
	}
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
