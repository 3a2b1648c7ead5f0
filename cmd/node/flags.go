package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

// config is the node's effective configuration, from flags, COHORT_*
// environment variables and defaults, in that order of precedence.
type config struct {
	Route          string
	HTTP           string
	Bind           string
	Replication    string
	Join           []string
	Multicast      string // "" when off
	Frequency      time.Duration
	DropTime       time.Duration
	Manager        string
	Backups        int
	SendMode       string
	SessionTimeout time.Duration
	DrainTime      time.Duration
	LargeSession   int // bytes; a committed change larger than this is logged
	MaxSessions    int
	Cookie         string
	Domain         string
	Key            membership.Key
	LogLevel       slog.Level
	LogFormat      string
}

// flagError is a bad flag or environment value: it names the flag, where
// the value came from, and the accepted form.
type flagError struct {
	Flag, Value, Source, Want string
}

func (e *flagError) Error() string {
	return fmt.Sprintf("invalid value %q for %s: want %s", e.Value, e.Source, e.Want)
}

// envName is the environment variable of a flag: COHORT_DROP_TIME for
// -drop-time.
func envName(flagName string) string {
	return "COHORT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags builds the configuration from args and getenv. It never exits
// the process: -h returns flag.ErrHelp after printing usage to stderr.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	fs := flag.NewFlagSet("cohort-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		route     = fs.String("route", host, "this node's route name, the session id suffix")
		httpAddr  = fs.String("http", "127.0.0.1:8080", "app and admin HTTP listener, host:port")
		bind      = fs.String("bind", "127.0.0.1:7946", "gossip address (UDP and TCP), IP:port")
		repl      = fs.String("replication", "", "replication channel TCP address, IP:port (default: gossip port + 1000)")
		join      = fs.String("join", "", "comma-separated seed addresses or DNS names, host:port")
		multicast = fs.String("multicast", membership.DefaultMulticastAddr, "beacon group addr:port, or off")
		frequency = fs.String("frequency", "500ms", "heartbeat and beacon interval")
		dropTime  = fs.String("drop-time", "3s", "silence after which a member is dropped (at least 2x frequency)")
		manager   = fs.String("manager", "delta", "session manager: delta, backup or standard")
		backups   = fs.String("backups", "1", "backup copies per session (backup manager)")
		sendMode  = fs.String("send-mode", "ack", "replication send mode: async, ack or sync")
		timeout   = fs.String("session-timeout", "30m", "session max inactive interval")
		drain     = fs.String("drain-time", "0s", "on SIGTERM, how long to report not ready while still serving, before closing HTTP")
		large     = fs.String("large-session", "256KiB", "log a warning for session changes larger than this (bytes, KiB or MiB), or off")
		maxSess   = fs.String("max-sessions", "0", "most sessions a node holds; creating more fails (0: no limit)")
		cookie    = fs.String("cookie", "JSESSIONID", "session cookie name")
		domain    = fs.String("domain", "cohort", "cluster name; nodes of other domains are ignored")
		key       = fs.String("key", "", "cluster key, base64 of 16, 24 or 32 bytes; empty means no encryption")
		logLevel  = fs.String("log-level", "info", "log level: debug, info, warn or error")
		logFormat = fs.String("log-format", "text", "log format: text or json")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: cohort-node [flags]\n\nEvery flag can also be set with COHORT_<FLAG> (e.g. COHORT_DROP_TIME=5s); a flag wins over the environment.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: flags take the form -name=value", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	source := map[string]string{}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		source[f.Name] = "flag -" + f.Name
		if set[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			source[f.Name] = envName(f.Name) + " (flag -" + f.Name + ")"
			envErr = errors.Join(envErr, f.Value.Set(v))
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	bad := func(name, value, want string) error {
		return &flagError{Flag: name, Value: value, Source: source[name], Want: want}
	}

	c := &config{Route: *route, HTTP: *httpAddr, Bind: *bind, Cookie: *cookie, Domain: *domain}
	if c.Route == "" || strings.ContainsAny(c.Route, ". ;,/") {
		return nil, bad("route", c.Route, "a non-empty name without '.', ';', ',', '/' or spaces, such as node1")
	}
	if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
		return nil, bad("http", c.HTTP, "host:port, such as 127.0.0.1:8080")
	}
	bindIP, bindPort, err := net.SplitHostPort(c.Bind)
	if err != nil || net.ParseIP(bindIP) == nil || !validPort(bindPort, true) {
		return nil, bad("bind", c.Bind, "IP:port, such as 127.0.0.1:7946")
	}
	c.Replication = *repl
	if c.Replication == "" {
		p, _ := strconv.Atoi(bindPort)
		if p != 0 {
			p += 1000
		}
		if p > 65535 {
			return nil, bad("bind", c.Bind, "a port of at most 64535, or set -replication")
		}
		c.Replication = net.JoinHostPort(bindIP, strconv.Itoa(p))
	} else if h, p, err := net.SplitHostPort(c.Replication); err != nil || net.ParseIP(h) == nil || !validPort(p, true) {
		return nil, bad("replication", c.Replication, "IP:port, such as 127.0.0.1:8946")
	}
	for _, s := range strings.Split(*join, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if h, p, err := net.SplitHostPort(s); err != nil || h == "" || !validPort(p, false) {
				return nil, bad("join", *join, "comma-separated host:port seeds, such as 10.0.0.1:7946,cohort.default.svc:7946")
			}
			c.Join = append(c.Join, s)
		}
	}
	if *multicast != "off" && *multicast != "" {
		a, err := net.ResolveUDPAddr("udp4", *multicast)
		if err != nil || !a.IP.IsMulticast() || a.Port == 0 {
			return nil, bad("multicast", *multicast, "an IPv4 multicast group addr:port such as 228.0.0.4:45564, or off")
		}
		c.Multicast = *multicast
	}
	if c.Frequency, err = time.ParseDuration(*frequency); err != nil || c.Frequency <= 0 {
		return nil, bad("frequency", *frequency, "a positive duration such as 500ms")
	}
	if c.DropTime, err = time.ParseDuration(*dropTime); err != nil || c.DropTime <= 0 {
		return nil, bad("drop-time", *dropTime, "a positive duration such as 3s")
	}
	if c.DropTime < 2*c.Frequency {
		return nil, bad("drop-time", *dropTime, "a duration of at least twice -frequency ("+(2*c.Frequency).String()+")")
	}
	switch c.Manager = *manager; c.Manager {
	case "delta", "backup", "standard":
	default:
		return nil, bad("manager", *manager, "delta, backup or standard")
	}
	if c.Backups, err = strconv.Atoi(*backups); err != nil || c.Backups < 1 {
		return nil, bad("backups", *backups, "a whole number of at least 1, such as 1")
	}
	switch c.SendMode = *sendMode; c.SendMode {
	case "async", "ack", "sync":
	default:
		return nil, bad("send-mode", *sendMode, "async, ack or sync")
	}
	if c.SessionTimeout, err = time.ParseDuration(*timeout); err != nil || c.SessionTimeout <= 0 {
		return nil, bad("session-timeout", *timeout, "a positive duration such as 30m")
	}
	if c.DrainTime, err = time.ParseDuration(*drain); err != nil || c.DrainTime < 0 {
		return nil, bad("drain-time", *drain, "a duration of 0 or more, such as 3s")
	}
	if c.MaxSessions, err = strconv.Atoi(*maxSess); err != nil || c.MaxSessions < 0 {
		return nil, bad("max-sessions", *maxSess, "a whole number of at least 0, such as 100000")
	}
	if c.LargeSession, err = parseSize(*large); err != nil {
		return nil, bad("large-session", *large, "a size such as 65536, 256KiB or 1MiB, or off")
	}
	if !web.ValidCookieName(c.Cookie) {
		return nil, bad("cookie", c.Cookie, "a cookie name such as JSESSIONID: letters, digits and !#$%&'*+-.^_`|~")
	}
	if c.Domain == "" || len(c.Domain) > 255 {
		return nil, bad("domain", c.Domain, "a non-empty name of at most 255 bytes")
	}
	if c.Key, err = membership.ParseKey(*key); err != nil {
		return nil, bad("key", "<redacted>", "base64 of 16, 24 or 32 bytes, such as the output of: openssl rand -base64 32")
	}
	if err := c.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, bad("log-level", *logLevel, "debug, info, warn or error")
	}
	switch c.LogFormat = *logFormat; c.LogFormat {
	case "text", "json":
	default:
		return nil, bad("log-format", *logFormat, "text or json")
	}
	return c, nil
}

// advertisedHTTP is the HTTP address peers are told: the listen address,
// or, when it listens on all interfaces, the gossip IP with the HTTP port.
func advertisedHTTP(httpAddr, bind string) string {
	host, port, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return httpAddr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if bindIP, _, err := net.SplitHostPort(bind); err == nil && !net.ParseIP(bindIP).IsUnspecified() {
			return net.JoinHostPort(bindIP, port)
		}
	}
	return httpAddr
}

// parseSize parses a byte count with an optional KiB or MiB suffix; "off"
// is -1.
func parseSize(s string) (int, error) {
	if s == "off" {
		return -1, nil
	}
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > (1<<31-1)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func validPort(s string, zeroOK bool) bool {
	p, err := strconv.ParseUint(s, 10, 16)
	return err == nil && (zeroOK || p > 0)
}

// membershipConfig maps the node configuration onto the membership layer.
func (c *config) membershipConfig(logger *slog.Logger) membership.Config {
	m := membership.DefaultConfig()
	m.Route = c.Route
	m.Domain = c.Domain
	m.BindAddr = c.Bind
	m.ReplicationAddr = c.Replication
	m.HTTPAddr = advertisedHTTP(c.HTTP, c.Bind)
	m.Manager = c.Manager
	m.Join = c.Join
	m.MulticastAddr = c.Multicast
	m.Frequency = c.Frequency
	m.DropTime = c.DropTime
	m.Key = c.Key
	m.Logger = logger
	return m
}

// clusterConfig maps the node configuration onto the cluster: membership,
// replication channel and session manager.
func (c *config) clusterConfig(logger *slog.Logger) manager.ClusterConfig {
	cc := manager.DefaultClusterConfig()
	cc.Kind = c.Manager
	cc.Membership = c.membershipConfig(logger)
	cc.Replication.Addr = c.Replication
	m := &cc.Manager
	m.Route = c.Route
	m.MaxInactive = c.SessionTimeout
	m.Logger = logger
	m.Backups = c.Backups
	m.LargeSession = c.LargeSession
	m.MaxSessions = c.MaxSessions
	_ = m.Mode.UnmarshalText([]byte(c.SendMode)) // validated by parseFlags
	return cc
}

// webConfig maps the node configuration onto the HTTP layer.
func (c *config) webConfig(logger *slog.Logger) web.Config {
	w := web.DefaultConfig()
	w.Route = c.Route
	w.CookieName = c.Cookie
	w.Logger = logger
	return w
}

// LogValue lists the effective configuration, the key redacted.
func (c *config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("route", c.Route), slog.String("http", c.HTTP), slog.String("bind", c.Bind),
		slog.String("replication", c.Replication), slog.Any("join", c.Join),
		slog.String("multicast", orOff(c.Multicast)), slog.Duration("frequency", c.Frequency),
		slog.Duration("drop_time", c.DropTime), slog.String("manager", c.Manager),
		slog.Int("backups", c.Backups), slog.String("send_mode", c.SendMode),
		slog.Duration("session_timeout", c.SessionTimeout), slog.Duration("drain_time", c.DrainTime), slog.Int("large_session", c.LargeSession), slog.String("cookie", c.Cookie),
		slog.String("domain", c.Domain), slog.Any("key", c.Key),
	)
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}
