package membership

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultMulticastAddr is the beacon group Tomcat clusters use by default.
const DefaultMulticastAddr = "228.0.0.4:45564"

// Resolver looks up the addresses of a seed host name. *net.Resolver
// satisfies it. Implementations must be safe for concurrent use.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Config configures a Node. Start from DefaultConfig or DefaultLocalConfig;
// the zero value is not valid. New copies the Config and never writes to it.
type Config struct {
	// Route is this node's name in the cluster and the suffix of the session
	// ids it issues. It must be unique within the domain; a node that
	// restarts with the same Route takes over its old identity. Default: the
	// host name.
	Route string

	// Domain names the cluster. Nodes of other domains never merge with this
	// one: it is memberlist's Label on every packet, it is checked in every
	// member's metadata, and beacons of other domains are ignored.
	// Default "cohort".
	Domain string

	// BindAddr is the gossip address (UDP and TCP), host:port. Port 0 picks
	// a free port; see Node.Addr. Default "127.0.0.1:7946".
	BindAddr string

	// AdvertiseAddr is the gossip address given to other nodes, host:port,
	// when it differs from BindAddr (NAT, 0.0.0.0 binds). Empty means the
	// bound address.
	AdvertiseAddr string

	// ReplicationAddr is the replication channel address advertised in this
	// node's metadata, host:port. Empty means the node takes no replication
	// traffic (a pure observer).
	ReplicationAddr string

	// HTTPAddr is the node's app and admin HTTP address, host:port,
	// advertised so that a node's dashboard can show the others. Empty
	// means not advertised.
	HTTPAddr string

	// Manager is the session manager kind advertised in the metadata
	// ("delta", "backup", "standard"). Two nodes of one domain whose kinds
	// differ refuse to pair. Empty matches any kind.
	Manager string

	// Join lists seed addresses, host:port. A host name may resolve to
	// several addresses (a Kubernetes headless Service); every address is
	// tried. A missing port means BindAddr's port. Seeds are re-resolved
	// every RejoinInterval, and those of their addresses that are not
	// live members joined, as are failed members, so a node that starts
	// before its seeds, a new address behind a DNS name, or a cluster
	// split by a partition, comes together.
	Join []string

	// MulticastAddr is the beacon group, IPv4 multicast host:port. Empty
	// means multicast discovery is off. Default DefaultMulticastAddr.
	MulticastAddr string

	// MulticastTTL is the IP TTL of beacons: 1 keeps them on the local
	// segment. Default 1.
	MulticastTTL int

	// Frequency is the heartbeat interval: each node probes one member and
	// sends one beacon every Frequency. Lower values detect failures sooner
	// and cost more packets. At least MinFrequency (10ms). Default 500ms.
	Frequency time.Duration

	// DropTime is how long a member may be silent before it is declared
	// failed. It must be at least twice Frequency. See docs/tuning.md for how
	// Frequency and DropTime map onto memberlist and for measured detection
	// times. Default 3s.
	DropTime time.Duration

	// RejoinInterval is how often seeds are re-resolved and joined where
	// they are not live members, and failed members tried again.
	// Default 5s.
	RejoinInterval time.Duration

	// DeadRetention is how long failed and departed members stay in
	// Members (with their state) and are retried as seeds after a failure.
	// Default 1h.
	DeadRetention time.Duration

	// Key is the cluster key: 16, 24 or 32 bytes selecting AES-128, -192
	// or -256. It encrypts and authenticates gossip (memberlist SecretKey)
	// and keys the beacon HMAC. Nil means no encryption.
	Key Key

	// Resolver resolves seed host names. Nil means net.DefaultResolver.
	Resolver Resolver

	// Logger receives operational logs, memberlist's included. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the production defaults of the node contract:
// route = host name, gossip on 127.0.0.1:7946, multicast beacons on
// 228.0.0.4:45564, frequency 500ms, drop-time 3s.
func DefaultConfig() Config {
	route, err := os.Hostname()
	if err != nil {
		route = "" // validate reports it
	}
	return Config{
		Route:          route,
		Domain:         "cohort",
		BindAddr:       "127.0.0.1:7946",
		MulticastAddr:  DefaultMulticastAddr,
		MulticastTTL:   1,
		Frequency:      500 * time.Millisecond,
		DropTime:       3 * time.Second,
		RejoinInterval: 5 * time.Second,
		DeadRetention:  time.Hour,
	}
}

// DefaultLocalConfig returns a configuration for clusters on one host, such
// as tests and demos: a free port on 127.0.0.1, no multicast, and fast
// timings (frequency 100ms, drop-time 1s).
func DefaultLocalConfig() Config {
	c := DefaultConfig()
	c.BindAddr = "127.0.0.1:0"
	c.MulticastAddr = ""
	c.Frequency = 100 * time.Millisecond
	c.DropTime = time.Second
	c.RejoinInterval = 500 * time.Millisecond
	return c
}

// ConfigError reports an invalid Config field: its name, the value given
// and the accepted form.
type ConfigError struct {
	Field string // Config field, e.g. "DropTime"
	Value string // the offending value, printed
	Want  string // the accepted form
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("membership: invalid %s %q: want %s", e.Field, e.Value, e.Want)
}

// maxRoute is the longest Route, in bytes.
const maxRoute = 128

// MinFrequency is the shortest Frequency: below it memberlist's probe
// interval rounds to nothing, and failures are never detected.
const MinFrequency = 10 * time.Millisecond

// validate checks every field, returning the first problem found.
func (c *Config) validate() error {
	if c.Route == "" || len(c.Route) > maxRoute {
		return &ConfigError{"Route", c.Route, "a non-empty name of at most 128 bytes"}
	}
	if c.Domain == "" || len(c.Domain) > memberlist.LabelMaxSize {
		return &ConfigError{"Domain", c.Domain, "a non-empty name of at most 255 bytes"}
	}
	if _, err := splitHostPort(c.BindAddr, -1); err != nil {
		return &ConfigError{"BindAddr", c.BindAddr, "host:port with an IP address, port 0-65535"}
	}
	if c.AdvertiseAddr != "" {
		if _, err := splitHostPort(c.AdvertiseAddr, -1); err != nil {
			return &ConfigError{"AdvertiseAddr", c.AdvertiseAddr, "host:port with an IP address"}
		}
	}
	if c.ReplicationAddr != "" {
		if _, _, err := net.SplitHostPort(c.ReplicationAddr); err != nil {
			return &ConfigError{"ReplicationAddr", c.ReplicationAddr, "host:port"}
		}
	}
	for _, s := range c.Join {
		if _, _, err := seedHostPort(s, 7946); err != nil {
			return &ConfigError{"Join", s, "host:port or a DNS name, port 1-65535"}
		}
	}
	if c.MulticastAddr != "" {
		a, err := net.ResolveUDPAddr("udp4", c.MulticastAddr)
		if err != nil || !a.IP.IsMulticast() || a.Port == 0 {
			return &ConfigError{"MulticastAddr", c.MulticastAddr, "an IPv4 multicast group and port, e.g. 228.0.0.4:45564"}
		}
	}
	if c.MulticastTTL < 1 || c.MulticastTTL > 255 {
		return &ConfigError{"MulticastTTL", strconv.Itoa(c.MulticastTTL), "1-255"}
	}
	if c.Frequency < MinFrequency {
		return &ConfigError{"Frequency", c.Frequency.String(), "a duration of at least " + MinFrequency.String() + ", such as 500ms"}
	}
	if c.DropTime <= 0 {
		return &ConfigError{"DropTime", c.DropTime.String(), "a positive duration such as 3s"}
	}
	if c.DropTime < 2*c.Frequency {
		return &ConfigError{"DropTime", c.DropTime.String(), "at least twice Frequency (" + (2 * c.Frequency).String() + ")"}
	}
	if c.RejoinInterval <= 0 {
		return &ConfigError{"RejoinInterval", c.RejoinInterval.String(), "a positive duration"}
	}
	if c.DeadRetention <= 0 {
		return &ConfigError{"DeadRetention", c.DeadRetention.String(), "a positive duration"}
	}
	if err := c.Key.validate(); err != nil {
		return &ConfigError{"Key", c.Key.String(), "16, 24 or 32 bytes (AES-128, -192 or -256)"}
	}
	if _, err := encodeMeta(c.meta(time.Now())); err != nil {
		return &ConfigError{"Route", c.Route, "metadata (route, addresses, domain) that fits 512 bytes with the leaving flag set"}
	}
	return nil
}

// timings is how Frequency and DropTime map onto memberlist. It is kept
// apart from memberlistConfig so the mapping can be tested and documented.
type timings struct {
	ProbeInterval, ProbeTimeout, GossipInterval time.Duration
	SuspicionMult                               int
	PushPullInterval, GossipToTheDead           time.Duration
	TCPTimeout                                  time.Duration
}

// Detection model, in probe intervals (PI), for a member that stops
// answering: a live peer probes it within about 0.8 PI on average (each peer
// probes one member per interval, and several peers race to it), the probe
// round with its indirect and TCP probes takes 1 PI, then the node is
// suspected and declared dead when the suspicion timer, SuspicionMult × PI,
// runs out; the dead message reaches the other peers within a few
// GossipIntervals. Expected detection is therefore about
// (SuspicionMult + 1.8) × PI, and the spread above it about one PI.
const (
	// firstProbeRounds is the expected time, in PI, from a failure to the
	// end of the first failed probe round.
	firstProbeRounds = 1.8
	// detectionTarget is the expected detection time as a fraction of
	// DropTime. Below 1 so that the slow tail, about one PI above the
	// mean, still ends near DropTime.
	detectionTarget = 0.9
)

// mapTimings derives memberlist's failure-detector settings from the two
// operator knobs. It picks the smallest integer SuspicionMult that fits
// the target with ProbeInterval at most Frequency, then shortens
// ProbeInterval so that the expected detection lands on the target.
// SuspicionMaxTimeoutMult is fixed at 1 (see memberlistConfig), so the
// timer does not wait for confirmations that small clusters cannot give;
// memberlist still scales it by log10(N) beyond 10 members, SWIM's guard
// against false positives in large clusters.
func mapTimings(frequency, dropTime time.Duration) timings {
	target := detectionTarget * float64(dropTime)
	mult := int(math.Ceil(target/float64(frequency) - firstProbeRounds))
	if mult < 1 {
		mult = 1
	}
	pi := time.Duration(target / (float64(mult) + firstProbeRounds))
	pi = min(pi, frequency).Round(time.Millisecond)
	gossip := min(max(pi/5, 10*time.Millisecond), 200*time.Millisecond)
	return timings{
		ProbeInterval:    pi,
		ProbeTimeout:     pi / 2,
		GossipInterval:   gossip,
		SuspicionMult:    mult,
		PushPullInterval: max(60*frequency, 5*time.Second),
		GossipToTheDead:  10 * dropTime,
		TCPTimeout:       max(dropTime, 2*time.Second),
	}
}

// Key is a cluster key: 16, 24 or 32 raw bytes. Its text form is standard
// base64, and it never prints its value: String and LogValue redact it.
type Key []byte

// ParseKey decodes a base64 cluster key (standard or URL alphabet, padding
// optional) and checks its length. The empty string gives a nil Key, which
// means no encryption.
func ParseKey(s string) (Key, error) {
	if s == "" {
		return nil, nil
	}
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("membership: key is not base64: %w", err)
	}
	k := Key(b)
	if err := k.validate(); err != nil {
		return nil, err
	}
	return k, nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseKey.
func (k *Key) UnmarshalText(text []byte) error {
	v, err := ParseKey(string(text))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

func (k Key) validate() error {
	switch len(k) {
	case 0, 16, 24, 32:
		return nil
	}
	return fmt.Errorf("membership: key is %d bytes after base64, want 16, 24 or 32", len(k))
}

// String redacts the key.
func (k Key) String() string {
	if len(k) == 0 {
		return "none"
	}
	return fmt.Sprintf("[%d-byte key redacted]", len(k))
}

// LogValue redacts the key in logs.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// splitHostPort parses host:port where host must be an IP address (or
// empty, meaning all addresses). defPort < 0 means the port is required.
func splitHostPort(s string, defPort int) (*net.TCPAddr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if defPort < 0 {
			return nil, err
		}
		host, port = s, strconv.Itoa(defPort)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, err
	}
	var ip net.IP
	if host != "" {
		if ip = net.ParseIP(host); ip == nil {
			return nil, fmt.Errorf("%q is not an IP address", host)
		}
	}
	return &net.TCPAddr{IP: ip, Port: int(p)}, nil
}

// seedHostPort splits a seed into host and port, defaulting the port.
func seedHostPort(s string, defPort int) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, strconv.Itoa(defPort)
	}
	if host == "" {
		return "", 0, fmt.Errorf("seed %q has no host", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("seed %q has a bad port", s)
	}
	return host, int(p), nil
}
