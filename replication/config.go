package replication

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"time"
)

// SendMode says how long Send waits: not at all (Async), until every
// peer's receiver has read the frame (Ack), or until every peer's handler
// has applied it (Sync).
type SendMode uint8

const (
	Async SendMode = iota
	Ack
	Sync
)

func (m SendMode) String() string {
	switch m {
	case Async:
		return "async"
	case Ack:
		return "ack"
	case Sync:
		return "sync"
	}
	return fmt.Sprintf("SendMode(%d)", uint8(m))
}

// UnmarshalText parses "async", "ack" or "sync".
func (m *SendMode) UnmarshalText(b []byte) error {
	switch string(b) {
	case "async":
		*m = Async
	case "ack":
		*m = Ack
	case "sync":
		*m = Sync
	default:
		return fmt.Errorf("replication: send mode %q: want async, ack or sync", b)
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (m SendMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Config configures a Channel. Start from DefaultConfig; the zero value is
// not valid. New copies it and never writes to it.
type Config struct {
	// Route is this node's route, the name peers know it by.
	Route string
	// Domain is the cluster domain; frames of other domains are refused.
	// Default "cohort".
	Domain string
	// Addr is the TCP listen address. Port 0 picks a free port; see
	// Channel.Addr. Default "127.0.0.1:8946".
	Addr string
	// Key is the cluster key, 16, 24 or 32 bytes. With a key every frame is
	// encrypted and authenticated (AES-256-GCM under per-connection keys
	// derived from it); nil means plaintext.
	Key []byte
	// MaxFrameSize bounds one frame in bytes; a larger one drops the
	// connection. Default 16 MiB.
	MaxFrameSize int
	// QueueSize bounds the frames queued for one peer. When it is full,
	// Send fails for that peer with ErrQueueFull and the peer is marked as
	// needing a resync. Default 8192.
	QueueSize int
	// SendTimeout bounds how long Send waits in Ack and Sync modes when the
	// context has no earlier deadline. Default 5s.
	SendTimeout time.Duration
	// DialTimeout bounds one connection attempt and handshake. On an
	// accepted connection it bounds the wait for the peer's hello, then
	// the wait for its first frame (which a peer sends at once): a
	// connection that misses either is dropped and counted under timeout.
	// Default 2s.
	DialTimeout time.Duration
	// WriteTimeout bounds one write to a connection. Default 10s.
	WriteTimeout time.Duration
	// MaxBackoff caps the delay between reconnection attempts. Default 2s.
	MaxBackoff time.Duration
	// Logger receives operational logs. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: 16 MiB frames, 8192-frame queues,
// 5s send timeout.
func DefaultConfig() Config {
	return Config{
		Domain:       "cohort",
		Addr:         "127.0.0.1:8946",
		MaxFrameSize: 16 << 20,
		QueueSize:    8192,
		SendTimeout:  5 * time.Second,
		DialTimeout:  2 * time.Second,
		WriteTimeout: 10 * time.Second,
		MaxBackoff:   2 * time.Second,
	}
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field, Value, Want string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("replication: invalid %s %q: want %s", e.Field, e.Value, e.Want)
}

func (c *Config) validate() error {
	if c.Route == "" || strings.ContainsAny(c.Route, ". ;,/") {
		return &ConfigError{"Route", c.Route, "a non-empty name without '.', ';', ',', '/' or spaces"}
	}
	if c.Domain == "" {
		return &ConfigError{"Domain", c.Domain, "a non-empty name"}
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return &ConfigError{"Addr", c.Addr, "host:port"}
	}
	switch len(c.Key) {
	case 0, 16, 24, 32:
	default:
		return &ConfigError{"Key", fmt.Sprintf("[%d bytes]", len(c.Key)), "16, 24 or 32 bytes"}
	}
	// A frame's length is 32 bits, and a sealed frame 64 bytes longer at
	// most than what it seals.
	if c.MaxFrameSize < 1024 || int64(c.MaxFrameSize) > math.MaxUint32-64 {
		return &ConfigError{"MaxFrameSize", fmt.Sprint(c.MaxFrameSize), "at least 1024 bytes and under 4 GiB"}
	}
	if c.QueueSize < 1 {
		return &ConfigError{"QueueSize", fmt.Sprint(c.QueueSize), "at least 1"}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"SendTimeout", c.SendTimeout}, {"DialTimeout", c.DialTimeout}, {"WriteTimeout", c.WriteTimeout}, {"MaxBackoff", c.MaxBackoff}} {
		if d.v <= 0 {
			return &ConfigError{d.name, d.v.String(), "a positive duration"}
		}
	}
	return nil
}
