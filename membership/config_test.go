package membership

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"empty route", func(c *Config) { c.Route = "" }, "Route"},
		{"empty domain", func(c *Config) { c.Domain = "" }, "Domain"},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }, "BindAddr"},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:7946" }, "BindAddr"},
		{"bind bad port", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }, "BindAddr"},
		{"advertise garbage", func(c *Config) { c.AdvertiseAddr = "::::" }, "AdvertiseAddr"},
		{"replication without port", func(c *Config) { c.ReplicationAddr = "127.0.0.1" }, "ReplicationAddr"},
		{"seed bad port", func(c *Config) { c.Join = []string{"10.0.0.1:x"} }, "Join"},
		{"seed port zero", func(c *Config) { c.Join = []string{"10.0.0.1:0"} }, "Join"},
		{"seed without host", func(c *Config) { c.Join = []string{":7946"} }, "Join"},
		{"unicast group", func(c *Config) { c.MulticastAddr = "10.0.0.1:45564" }, "MulticastAddr"},
		{"group without port", func(c *Config) { c.MulticastAddr = "228.0.0.4" }, "MulticastAddr"},
		{"ttl zero", func(c *Config) { c.MulticastTTL = 0 }, "MulticastTTL"},
		{"zero frequency", func(c *Config) { c.Frequency = 0 }, "Frequency"},
		{"negative frequency", func(c *Config) { c.Frequency = -time.Second }, "Frequency"},
		{"frequency below the minimum", func(c *Config) { c.Frequency = time.Millisecond }, "Frequency"},
		{"zero drop time", func(c *Config) { c.DropTime = 0 }, "DropTime"},
		{"drop time below twice frequency", func(c *Config) { c.DropTime = 900 * time.Millisecond }, "DropTime"},
		{"zero rejoin", func(c *Config) { c.RejoinInterval = 0 }, "RejoinInterval"},
		{"zero retention", func(c *Config) { c.DeadRetention = 0 }, "DeadRetention"},
		{"key of 10 bytes", func(c *Config) { c.Key = make(Key, 10) }, "Key"},
		{"metadata too large", func(c *Config) { c.ReplicationAddr = strings.Repeat("a", 500) + ":1" }, "Route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Route = "node1"
			tc.edit(&c)
			err := c.validate()
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("validate() = %v, want a ConfigError for %s", err, tc.field)
			}
			if ce.Want == "" || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name the field and the accepted form", err)
			}
		})
	}
	c := DefaultConfig()
	if err := c.validate(); err != nil {
		t.Errorf("DefaultConfig().validate() = %v", err)
	}
	c = DefaultLocalConfig()
	if err := c.validate(); err != nil {
		t.Errorf("DefaultLocalConfig().validate() = %v", err)
	}
}

func TestParseKey(t *testing.T) {
	raw := []byte("0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		in      string
		wantLen int
		wantErr bool
	}{
		{"", 0, false},
		{base64.StdEncoding.EncodeToString(raw[:16]), 16, false},
		{base64.StdEncoding.EncodeToString(raw[:24]), 24, false},
		{base64.StdEncoding.EncodeToString(raw), 32, false},
		{base64.RawURLEncoding.EncodeToString(raw), 32, false},
		{base64.StdEncoding.EncodeToString(raw[:20]), 0, true},
		{"not base64!", 0, true},
	} {
		k, err := ParseKey(tc.in)
		if (err != nil) != tc.wantErr || len(k) != tc.wantLen {
			t.Errorf("ParseKey(%q) = %d bytes, %v; want %d bytes, error %v", tc.in, len(k), err, tc.wantLen, tc.wantErr)
		}
	}
	k, _ := ParseKey(base64.StdEncoding.EncodeToString(raw))
	if s := k.String(); strings.Contains(s, "0123") || !strings.Contains(s, "redacted") {
		t.Errorf("Key.String() = %q, want it redacted", s)
	}
}

func TestMapTimings(t *testing.T) {
	for _, tc := range []struct {
		freq, drop time.Duration
		wantPI     time.Duration
		wantMult   int
	}{
		{500 * time.Millisecond, 3 * time.Second, 466 * time.Millisecond, 4},
		{200 * time.Millisecond, time.Second, 188 * time.Millisecond, 3},
		{100 * time.Millisecond, time.Second, 92 * time.Millisecond, 8},
		// At the minimum drop time the suspicion phase is one interval.
		{500 * time.Millisecond, time.Second, 321 * time.Millisecond, 1},
	} {
		got := mapTimings(tc.freq, tc.drop)
		if got.ProbeInterval != tc.wantPI || got.SuspicionMult != tc.wantMult {
			t.Errorf("mapTimings(%v, %v) = probe %v × suspicion %d, want %v × %d",
				tc.freq, tc.drop, got.ProbeInterval, got.SuspicionMult, tc.wantPI, tc.wantMult)
		}
		if got.ProbeInterval > tc.freq || got.ProbeTimeout >= got.ProbeInterval || got.GossipInterval > got.ProbeInterval {
			t.Errorf("mapTimings(%v, %v) = %+v: probes must be at most Frequency apart and timeouts fit inside them", tc.freq, tc.drop, got)
		}
		expected := time.Duration((float64(got.SuspicionMult) + firstProbeRounds) * float64(got.ProbeInterval))
		if d := expected - time.Duration(detectionTarget*float64(tc.drop)); d < -10*time.Millisecond || d > 10*time.Millisecond {
			t.Errorf("mapTimings(%v, %v): expected detection %v, want %v of drop-time", tc.freq, tc.drop, expected, detectionTarget)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	c := DefaultConfig()
	c.Route, c.ReplicationAddr, c.Manager = "node1", "127.0.0.1:8946", "delta"
	seed, _ := encodeMeta(c.meta(time.UnixMilli(1_700_000_000_000)))
	f.Add(seed)
	f.Add([]byte{0x80})
	f.Add([]byte{0xc1})
	f.Add([]byte{0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff}) // claims 4G elements
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		b2, err := encodeMeta(m)
		if err != nil {
			if errors.Is(err, ErrMetaTooLarge) {
				return // short keys of the input may have been re-encoded longer
			}
			t.Fatalf("encodeMeta(%+v) = %v", m, err)
		}
		m2, err := DecodeMeta(b2)
		if err != nil || m2.Route != m.Route || m2.Domain != m.Domain || m2.Protocol != m.Protocol ||
			m2.ReplicationAddr != m.ReplicationAddr || m2.Manager != m.Manager || !m2.Started.Equal(m.Started) || m2.Leaving != m.Leaving {
			t.Fatalf("round trip: %+v, %v; want %+v", m2, err, m)
		}
	})
}

// Metadata from a newer build, with a field this one does not know, still
// decodes: the field is skipped.
func TestDecodeMetaSkipsUnknownFields(t *testing.T) {
	b, err := msgpack.Marshal(map[string]any{
		"r": "node9", "a": "127.0.0.1:8946", "d": "cohort", "m": "delta",
		"p": ProtocolVersion, "t": int64(1_700_000_000_000), "zz": []any{"later", 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMeta(b)
	if err != nil {
		t.Fatalf("DecodeMeta of metadata with an unknown field: %v", err)
	}
	if m.Route != "node9" || m.Manager != "delta" || m.Protocol != ProtocolVersion || m.Started.UnixMilli() != 1_700_000_000_000 {
		t.Errorf("DecodeMeta = %+v", m)
	}
}
