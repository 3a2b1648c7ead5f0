package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	SendTimeout    time.Duration // how long a write waits for a peer's answer
	SessionTimeout time.Duration
	SessionFile    string // standard manager: sessions saved on stop, read back on start
	DrainTime      time.Duration
	LargeSession   int // bytes; a committed change larger than this is logged
	MaxSessions    int
	Cookie         string
	Domain         string
	Key            membership.Key
	LogLevel       slog.Level
	LogFormat      string

	// Ignored lists the settings given that the chosen manager does not
	// use; the node starts anyway and logs a warning for each.
	Ignored []ignoredSetting
	// replDerived is whether Replication was derived from Bind.
	replDerived bool
	// envNames are the COHORT_ variables that set a flag.
	envNames []string
	// source says where each flag's value came from, for messages:
	// "flag -bind" or "COHORT_BIND (flag -bind)".
	source map[string]string
}

// ignoredSetting is a flag or environment variable that has no effect.
type ignoredSetting struct {
	Flag, Source, Reason string
}

// flagError is a bad flag or environment value: it names the flag, where
// the value came from, and the accepted form.
type flagError struct {
	Flag, Value, Source, Want string
}

func (e *flagError) Error() string {
	return fmt.Sprintf("invalid value %q for %s: want %s", e.Value, e.Source, e.Want)
}

// errVersion is returned by parseFlags for -version.
var errVersion = errors.New("version requested")

// minFrequency is the shortest -frequency accepted.
const minFrequency = membership.MinFrequency

// envName is the environment variable of a flag: COHORT_DROP_TIME for
// -drop-time.
func envName(flagName string) string {
	return "COHORT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// hasEnv reports whether a flag can be set from the environment: all but
// -version, as a COHORT_VERSION set for some other purpose must not turn
// every start into -version.
func hasEnv(flagName string) bool { return flagName != "version" }

// parseFlags builds the configuration from args and getenv; host is the
// host name, the default route up to its first '.'. It never exits the
// process: -h returns flag.ErrHelp after printing usage to stderr, and
// -version returns errVersion.
//
// When a value is invalid, parseFlags returns the error together with a
// config that holds only the log settings and the route, if the log
// settings are valid themselves, so that the error can be logged in the
// format asked for.
func parseFlags(args []string, getenv func(string) string, host string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("cohort-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The backquoted word of each usage is the value's form in -help.
	var (
		route     = fs.String("route", defaultRoute(host), "this node's `name`, the suffix of its session ids: letters, digits, '-' and '_'; by default the host name up to its first '.'")
		httpAddr  = fs.String("http", "127.0.0.1:8080", "app and admin HTTP listener, `host:port`; with 0.0.0.0 or no host it listens on every interface and peers are told the -bind IP")
		bind      = fs.String("bind", "127.0.0.1:7946", "gossip address (UDP and TCP), `IP:port`: an address the other nodes can reach, not 0.0.0.0 or ::")
		repl      = fs.String("replication", "", "replication channel TCP address, `IP:port` (default: the -bind IP with the -bind port + 1000)")
		join      = fs.String("join", "", "comma-separated seeds, `host[:port],...`: IP addresses or DNS names; without a port, -bind's")
		multicast = fs.String("multicast", membership.DefaultMulticastAddr, "multicast beacon group `addr:port`, or off")
		frequency = fs.String("frequency", "500ms", "heartbeat and beacon interval, a `duration`")
		dropTime  = fs.String("drop-time", "3s", "silence after which a member is dropped, a `duration` of at least twice -frequency")
		manager   = fs.String("manager", "delta", "session manager: `delta|backup|standard`")
		backups   = fs.String("backups", "1", "backup copies per session, `n` (backup manager only)")
		sendMode  = fs.String("send-mode", "ack", "how long a request waits for its replicas: `async|ack|sync` (delta and backup managers)")
		sendWait  = fs.String("send-timeout", "5s", "how long a request waits for a peer's answer in ack and sync modes, a `duration`; a peer that does not answer in time is not waited for again until it answers (delta and backup managers)")
		timeout   = fs.String("session-timeout", "30m", "session max inactive interval, a `duration`")
		drain     = fs.String("drain-time", "0s", "on SIGTERM or SIGINT, how long to answer 503 on /readyz while still serving, before closing HTTP: a `duration`")
		large     = fs.String("large-session", "256KiB", "log a warning for session changes larger than this `size` (bytes, KiB or MiB), or off (delta and backup managers)")
		maxSess   = fs.String("max-sessions", "0", "most sessions a node holds, `n`; creating more fails (0: no limit)")
		sessFile  = fs.String("session-file", "", "standard manager: the `path` its sessions are saved to on a graceful stop and read back from at start (default: none, sessions end with the process)")
		cookie    = fs.String("cookie", "JSESSIONID", "session cookie `name`")
		domain    = fs.String("domain", "cohort", "cluster `name`; nodes of other domains are ignored")
		key       = fs.String("key", "", "cluster key, `base64` of 16, 24 or 32 bytes; empty means no encryption. Prefer COHORT_KEY: a flag's value shows in ps")
		logLevel  = fs.String("log-level", "info", "log level: `debug|info|warn|error`")
		logFormat = fs.String("log-format", "text", "log format: `text|json`")
		version   = fs.Bool("version", false, "print the version and exit")
	)
	// The flag package prints its error and the whole usage on a bad
	// command line; only -help gets the usage, and an error is one line
	// (parseError).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stderr, fs)
			return nil, err
		}
		return nil, parseError(fs, err)
	}
	if *version {
		return nil, errVersion
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: flags take the form -name=value", fs.Arg(0))
	}
	given := map[string]bool{} // on the command line or in the environment
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	source := map[string]string{}
	var envErr error
	var envNames []string
	fs.VisitAll(func(f *flag.Flag) {
		source[f.Name] = "flag -" + f.Name
		if hasEnv(f.Name) {
			envNames = append(envNames, envName(f.Name))
		}
		if given[f.Name] || !hasEnv(f.Name) {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			given[f.Name] = true
			source[f.Name] = envName(f.Name) + " (flag -" + f.Name + ")"
			envErr = errors.Join(envErr, f.Value.Set(v))
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if !given["route"] {
		from := fmt.Sprintf("the host name %q", host)
		if host == "" {
			from = "the host name, which is unknown"
		}
		source["route"] = "flag -route (defaulted from " + from + "; set -route or COHORT_ROUTE)"
	}
	bad := func(name, value, want string) error {
		return &flagError{Flag: name, Value: value, Source: source[name], Want: want}
	}

	// The log settings first: an error below is logged in the format asked
	// for (fail).
	c := &config{Route: *route, HTTP: *httpAddr, Bind: *bind, Cookie: *cookie, Domain: *domain, source: source, envNames: envNames}
	if err := c.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, bad("log-level", *logLevel, "debug, info, warn or error")
	}
	switch c.LogFormat = *logFormat; c.LogFormat {
	case "text", "json":
	default:
		return nil, bad("log-format", *logFormat, "text or json")
	}
	fail := func(err error) (*config, error) {
		return &config{Route: c.Route, LogLevel: c.LogLevel, LogFormat: c.LogFormat}, err
	}

	if !validRoute(c.Route) {
		return fail(bad("route", c.Route, "a name of 1 to 128 letters, digits, '-' and '_', such as node1"))
	}
	if _, p, err := net.SplitHostPort(c.HTTP); err != nil || !validPort(p, false) {
		return fail(bad("http", c.HTTP, "host:port with a port number from 1 to 65535, such as 127.0.0.1:8080 or 0.0.0.0:8080"))
	}
	bindIP, bindPort, err := net.SplitHostPort(c.Bind)
	if err != nil || net.ParseIP(bindIP) == nil || !validPort(bindPort, true) {
		return fail(bad("bind", c.Bind, "IP:port with a port number from 0 to 65535, such as 127.0.0.1:7946"))
	}
	if net.ParseIP(bindIP).IsUnspecified() {
		return fail(bad("bind", c.Bind, "the IP address the other nodes reach this one at, such as 10.0.0.1:7946: "+
			"peers are told this address and the replication address, so 0.0.0.0 and :: do not work"))
	}
	c.Replication = *repl
	derived := c.Replication == ""
	c.replDerived = derived
	if derived {
		p, _ := strconv.Atoi(bindPort)
		if p != 0 {
			p += 1000
		}
		if p > 65535 {
			return fail(bad("bind", c.Bind, "a port of at most 64535, or set -replication"))
		}
		c.Replication = net.JoinHostPort(bindIP, strconv.Itoa(p))
		source["replication"] = "the replication port derived from -bind " + c.Bind + " (its port + 1000; set -replication or COHORT_REPLICATION for another)"
	} else if h, p, err := net.SplitHostPort(c.Replication); err != nil || net.ParseIP(h) == nil || !validPort(p, true) {
		return fail(bad("replication", c.Replication, "IP:port with a port number from 0 to 65535, such as 127.0.0.1:8946"))
	} else if net.ParseIP(h).IsUnspecified() {
		return fail(bad("replication", c.Replication, "the IP address the other nodes reach this one at, such as 10.0.0.1:8946: "+
			"peers are told this address, so 0.0.0.0 and :: do not work"))
	}
	for _, s := range strings.Split(*join, ",") {
		if s = strings.TrimSpace(s); s != "" {
			seed, ok := seedAddr(s, bindPort)
			if !ok {
				return fail(bad("join", *join, fmt.Sprintf("comma-separated seeds, host or host:port, such as 10.0.0.1:7946,cohort.default.svc; "+
					"%q is not a host name or IP address, with a port from 1 to 65535 or none for -bind's", s)))
			}
			c.Join = append(c.Join, seed)
		}
	}
	// An empty -multicast is refused rather than taken as off: an empty
	// COHORT_MULTICAST, like every empty variable, leaves the default.
	if *multicast != "off" {
		a, err := net.ResolveUDPAddr("udp4", *multicast)
		if err != nil || !a.IP.IsMulticast() || a.Port == 0 {
			return fail(bad("multicast", *multicast, "an IPv4 multicast group addr:port such as 228.0.0.4:45564, or off"))
		}
		c.Multicast = *multicast
	}
	// Below minFrequency memberlist's probe interval rounds to nothing and
	// failures are never detected.
	if c.Frequency, err = time.ParseDuration(*frequency); err != nil || c.Frequency < minFrequency {
		return fail(bad("frequency", *frequency, "a duration of at least "+minFrequency.String()+", such as 500ms"))
	}
	if c.DropTime, err = time.ParseDuration(*dropTime); err != nil || c.DropTime <= 0 {
		return fail(bad("drop-time", *dropTime, "a positive duration such as 3s"))
	}
	if c.DropTime < 2*c.Frequency {
		if !given["drop-time"] {
			// The operator changed -frequency only: blame it, not a
			// -drop-time they never set.
			return fail(bad("frequency", *frequency, "a duration of at most half -drop-time, which is its default "+*dropTime+
				"; or set -drop-time too, to at least "+(2*c.Frequency).String()))
		}
		return fail(bad("drop-time", *dropTime, "a duration of at least twice -frequency ("+(2*c.Frequency).String()+")"))
	}
	switch c.Manager = *manager; c.Manager {
	case "delta", "backup", "standard":
	default:
		return fail(bad("manager", *manager, "delta, backup or standard"))
	}
	if c.Backups, err = strconv.Atoi(*backups); err != nil || c.Backups < 1 {
		return fail(bad("backups", *backups, "a whole number of at least 1, such as 1"))
	}
	switch c.SendMode = *sendMode; c.SendMode {
	case "async", "ack", "sync":
	default:
		return fail(bad("send-mode", *sendMode, "async, ack or sync"))
	}
	if c.SendTimeout, err = time.ParseDuration(*sendWait); err != nil || c.SendTimeout <= 0 {
		return fail(bad("send-timeout", *sendWait, "a positive duration such as 5s"))
	}
	if c.SessionTimeout, err = time.ParseDuration(*timeout); err != nil || c.SessionTimeout <= 0 {
		return fail(bad("session-timeout", *timeout, "a positive duration such as 30m"))
	}
	if c.DrainTime, err = time.ParseDuration(*drain); err != nil || c.DrainTime < 0 {
		return fail(bad("drain-time", *drain, "a duration of 0 or more, such as 3s"))
	}
	if c.MaxSessions, err = strconv.Atoi(*maxSess); err != nil || c.MaxSessions < 0 {
		return fail(bad("max-sessions", *maxSess, "a whole number of at least 0, such as 100000"))
	}
	if c.SessionFile = *sessFile; c.SessionFile != "" && c.Manager == "standard" {
		if fi, err := os.Stat(c.SessionFile); err == nil && fi.IsDir() {
			return fail(bad("session-file", c.SessionFile, "the path of a file, not a directory, such as /var/lib/cohort/sessions"))
		}
		if fi, err := os.Stat(filepath.Dir(c.SessionFile)); err != nil || !fi.IsDir() {
			return fail(bad("session-file", c.SessionFile, "a path in an existing directory, such as /var/lib/cohort/sessions"))
		}
	}
	if c.LargeSession, err = parseSize(*large); err != nil {
		return fail(bad("large-session", *large, "a size such as 65536, 256KiB or 1MiB, or off"))
	}
	if !web.ValidCookieName(c.Cookie) {
		return fail(bad("cookie", c.Cookie, "a cookie name such as JSESSIONID: letters, digits and !#$%&'*+-.^_`|~"))
	}
	if c.Domain == "" || len(c.Domain) > 255 {
		return fail(bad("domain", c.Domain, "a non-empty name of at most 255 bytes"))
	}
	if c.Key, err = membership.ParseKey(*key); err != nil {
		return fail(bad("key", "<redacted>", "base64 of 16, 24 or 32 bytes, such as the output of: openssl rand -base64 32"))
	}
	if err := c.checkPorts(derived); err != nil {
		return fail(err)
	}

	// Settings the chosen manager does not use are accepted, as the
	// environment of a whole fleet may set them, but reported.
	ignore := func(name, reason string) {
		if given[name] {
			c.Ignored = append(c.Ignored, ignoredSetting{Flag: name, Source: source[name], Reason: reason})
		}
	}
	if c.Manager != "backup" {
		ignore("backups", "only the backup manager keeps backup copies; -manager is "+c.Manager)
	}
	if c.Manager != "standard" {
		ignore("session-file", "the "+c.Manager+" manager keeps sessions on its peers, not in a file")
	}
	if c.Manager == "standard" {
		ignore("send-mode", "the standard manager does not replicate sessions")
		ignore("send-timeout", "the standard manager does not replicate sessions")
		ignore("replication", "the standard manager has no replication channel")
		ignore("large-session", "the standard manager does not replicate sessions, and only replicated changes are measured")
	}
	return c, nil
}

// parseError rewrites an error of the flag package's Parse so that it
// names the flag and the accepted form: "flag needs an argument: -bind"
// becomes "flag -bind needs a value: want IP:port", and an unknown flag
// gets the one it was probably meant to be. Other errors are returned as
// they are.
func parseError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		// closest compares variable names: COHORT_DROP_TIME for -drop-time.
		var names []string
		byEnv := map[string]string{}
		fs.VisitAll(func(f *flag.Flag) { names = append(names, envName(f.Name)); byEnv[envName(f.Name)] = f.Name })
		hint := ""
		if m := closest(envName(strings.TrimLeft(name, "-")), names); m != "" {
			hint = ": did you mean -" + byEnv[m] + "?"
		}
		return fmt.Errorf("unknown flag -%s%s (cohort-node -help lists the flags)", name, hint)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		if f := fs.Lookup(strings.TrimLeft(name, "-")); f != nil {
			form, _ := flag.UnquoteUsage(f)
			if f.DefValue != "" {
				form += ", as in -" + f.Name + "=" + f.DefValue
			}
			return fmt.Errorf("flag -%s needs a value: want %s", f.Name, form)
		}
	}
	if rest, ok := strings.CutPrefix(msg, "invalid boolean value "); ok {
		if v, name, ok := strings.Cut(rest, " for -"); ok {
			name, _, _ = strings.Cut(name, ":")
			return fmt.Errorf("invalid value %s for flag -%s: want no value, -%s=true or -%s=false", v, name, name, name)
		}
	}
	return err
}

// unknownEnv returns the COHORT_ variables of environ ("NAME=value") that
// set no flag: a mistyped COHORT_DROPTIME would otherwise leave
// -drop-time at its default without a word. COHORT_VERSION is not
// reported, as hasEnv explains.
func (c *config) unknownEnv(environ []string) []unknownVar {
	var unknown []unknownVar
	known := map[string]bool{envName("version"): true}
	for _, n := range c.envNames {
		known[n] = true
	}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(strings.ToUpper(name), "COHORT_") || known[name] {
			continue
		}
		unknown = append(unknown, unknownVar{Name: name, Meant: closest(name, c.envNames)})
	}
	return unknown
}

// unknownVar is a COHORT_ variable that sets no flag, and the one it was
// probably meant to be ("" if none is close).
type unknownVar struct{ Name, Meant string }

// closest returns the name of names that name was probably meant to be:
// the same but for case and underscores, or within two edits; "" if none.
func closest(name string, names []string) string {
	squash := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "_", "")) }
	best, bestDist := "", 3
	for _, n := range names {
		if squash(n) == squash(name) {
			return n
		}
		if d := editDistance(strings.ToUpper(name), n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkPorts refuses listeners that would take the same port: -http (TCP),
// -bind (TCP and UDP) and the replication channel (TCP), which is not
// opened by the standard manager. derived is whether the replication
// address was derived from -bind.
func (c *config) checkPorts(derived bool) error {
	bad := func(name, value, want string) error {
		return &flagError{Flag: name, Value: value, Source: c.source[name], Want: want}
	}
	replUse := "the replication channel (-replication)"
	if derived {
		replUse = "the replication channel (-replication, derived from -bind " + c.Bind + " as its port + 1000)"
	}
	repl := c.Manager != "standard"
	switch {
	case samePort(c.HTTP, c.Bind):
		return bad("http", c.HTTP, "a port other than "+port(c.Bind)+", which -bind uses for gossip, such as 127.0.0.1:8080")
	case repl && samePort(c.HTTP, c.Replication):
		return bad("http", c.HTTP, "a port other than "+port(c.Replication)+", which "+replUse+" uses, such as 127.0.0.1:8080")
	case repl && samePort(c.Replication, c.Bind):
		return bad("replication", c.Replication, "a port other than "+port(c.Bind)+", which -bind uses for gossip, such as the -bind port + 1000")
	}
	return nil
}

// samePort reports whether listeners on a and b (host:port) would take
// the same port: a host name, an empty host, 0.0.0.0 or :: may be the
// other's address. Port 0 picks a free port and never collides.
func samePort(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if errA != nil || errB != nil || na != nb || na == 0 {
		return false
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	return ia == nil || ib == nil || ia.IsUnspecified() || ib.IsUnspecified() || ia.Equal(ib)
}

// port is the port of a validated host:port.
func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// defaultRoute is the route a node on host takes when -route is not set:
// the host name up to its first '.', web1 for web1.example.com.
func defaultRoute(host string) string {
	label, _, _ := strings.Cut(host, ".")
	return label
}

// printUsage is -help: each flag with the form of its value, its default
// and its environment variable.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, "Usage: cohort-node [flags]\n\n"+
		"Every flag but -version can also be set with the environment variable named below it\n"+
		"(COHORT_<FLAG>, e.g. COHORT_DROP_TIME=5s); a flag wins over the environment.\n\n")
	fs.VisitAll(func(f *flag.Flag) {
		form, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  -%s", f.Name)
		if form != "" {
			fmt.Fprintf(w, " %s", form)
		}
		fmt.Fprintf(w, "\n    \t%s", usage)
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		if hasEnv(f.Name) {
			fmt.Fprintf(w, "\n    \t%s", envName(f.Name))
		}
		fmt.Fprintln(w)
	})
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

// seedAddr returns seed as host:port: a seed without a port, such as a
// headless service's name, has the gossip port of -bind, which the nodes
// of a cluster share. It reports false for a seed that is not a host name
// or IP address with a port from 1 to 65535, or without one when -bind's
// port is 0.
func seedAddr(seed, bindPort string) (string, bool) {
	if h, p, err := net.SplitHostPort(seed); err == nil {
		return seed, validHost(h) && validPort(p, false)
	}
	h := seed
	if inner, ok := strings.CutPrefix(h, "["); ok {
		h, ok = strings.CutSuffix(inner, "]")
		if !ok || net.ParseIP(h) == nil {
			return "", false
		}
	}
	if !validHost(h) || !validPort(bindPort, false) {
		return "", false
	}
	return net.JoinHostPort(h, bindPort), true
}

// validHost reports whether h is an IP address or a DNS name.
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
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
	if c.Manager == "standard" {
		m.File = c.SessionFile
	}
	_ = m.Mode.UnmarshalText([]byte(c.SendMode)) // validated by parseFlags
	m.SendTimeout = c.SendTimeout
	cc.Replication.SendTimeout = c.SendTimeout
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

// LogValue lists the effective configuration, the key redacted;
// durations are strings such as "500ms".
func (c *config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("route", c.Route), slog.String("http", c.HTTP), slog.String("bind", c.Bind),
		slog.String("replication", c.Replication), slog.Any("join", append([]string{}, c.Join...)),
		slog.String("multicast", orOff(c.Multicast)), slog.String("frequency", c.Frequency.String()),
		slog.String("drop_time", c.DropTime.String()), slog.String("manager", c.Manager),
		slog.Int("backups", c.Backups), slog.String("send_mode", c.SendMode),
		slog.String("send_timeout", c.SendTimeout.String()),
		slog.String("session_timeout", c.SessionTimeout.String()), slog.String("drain_time", c.DrainTime.String()),
		slog.Int("large_session", c.LargeSession), slog.Int("max_sessions", c.MaxSessions),
		slog.String("session_file", c.SessionFile),
		slog.String("cookie", c.Cookie), slog.String("domain", c.Domain), slog.Any("key", c.Key),
		slog.String("log_level", c.LogLevel.String()), slog.String("log_format", c.LogFormat),
	)
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

// validRoute is manager.ValidRoute, which parse cannot name: its -manager
// flag shadows the package.
func validRoute(s string) bool { return manager.ValidRoute(s) }
