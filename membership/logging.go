package membership

import (
	"bytes"
	"context"
	"log/slog"
	"sync/atomic"
)

// logBridge is the io.Writer behind memberlist's *log.Logger. memberlist
// writes lines such as "[WARN] memberlist: Was able to connect to ..."; the
// bridge parses the level and forwards the message to slog. memberlist's
// INFO lines go to Debug because the Node logs the same membership changes
// at Info itself, with route names; its ERR lines go to Warn because they
// describe peers (a failed push/pull with a dead node), not lost data.
type logBridge struct {
	log    *slog.Logger
	closed *atomic.Bool // the node is closed: memberlist's stray timers stay quiet
}

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
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	if b.log.Enabled(context.Background(), level) {
		b.log.LogAttrs(context.Background(), level, string(line), slog.String("source", "memberlist"))
	}
	return len(p), nil
}
