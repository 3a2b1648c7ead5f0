package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags([]string{"-route", "node1"}, env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP != "127.0.0.1:8080" || c.Bind != "127.0.0.1:7946" || c.Replication != "127.0.0.1:8946" ||
		c.Multicast != "228.0.0.4:45564" || c.Frequency != 500*time.Millisecond || c.DropTime != 3*time.Second ||
		c.Manager != "delta" || c.Backups != 1 || c.SendMode != "ack" || c.SendTimeout != 5*time.Second || c.SessionTimeout != 30*time.Minute ||
		c.Cookie != "JSESSIONID" || c.Domain != "cohort" || c.Key != nil || len(c.Join) != 0 {
		t.Errorf("defaults = %+v", c)
	}
}

func TestParseFlagsPrecedence(t *testing.T) {
	e := env(map[string]string{
		"COHORT_DROP_TIME":    "5s",
		"COHORT_SEND_TIMEOUT": "750ms",
		"COHORT_FREQUENCY":    "1s",
		"COHORT_JOIN":         "10.0.0.1:7946, cohort.default.svc:7946",
		"COHORT_MULTICAST":    "off",
		"COHORT_KEY":          "MDEyMzQ1Njc4OWFiY2RlZg==",
	})
	c, err := parseFlags([]string{"-route=n1", "-frequency=2s", "-bind=10.1.1.1:7000"}, e, "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Frequency != 2*time.Second {
		t.Errorf("frequency = %v, want the flag's 2s over the environment's 1s", c.Frequency)
	}
	if cc := c.clusterConfig(slog.Default()); cc.Manager.SendTimeout != 750*time.Millisecond || cc.Replication.SendTimeout != 750*time.Millisecond {
		t.Errorf("send timeout: manager %v, channel %v; want COHORT_SEND_TIMEOUT's 750ms for both", cc.Manager.SendTimeout, cc.Replication.SendTimeout)
	}
	if c.DropTime != 5*time.Second || c.Multicast != "" || len(c.Key) != 16 || c.Replication != "10.1.1.1:8000" {
		t.Errorf("config from environment = %+v", c)
	}
	if want := []string{"10.0.0.1:7946", "cohort.default.svc:7946"}; strings.Join(c.Join, ",") != strings.Join(want, ",") {
		t.Errorf("join = %q, want %q", c.Join, want)
	}
}

// A seed without a port has -bind's: the nodes of a cluster share their
// gossip port, and a headless service's name is given as it is.
func TestJoinSeedsWithoutPort(t *testing.T) {
	c, err := parseFlags([]string{"-route=n1", "-bind=10.1.1.1:7000", "-join=cohort-gossip, 10.0.0.2, fd00::3, [fd00::4], seed:7946"}, env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cohort-gossip:7000", "10.0.0.2:7000", "[fd00::3]:7000", "[fd00::4]:7000", "seed:7946"}
	if !slices.Equal(c.Join, want) {
		t.Errorf("join = %q, want %q", c.Join, want)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string // the flag or variable the error must name
	}{
		{[]string{"-route", "a.b"}, nil, "-route"},
		{[]string{"-http", "8080"}, nil, "-http"},
		{[]string{"-bind", "localhost:7946"}, nil, "-bind"},
		{[]string{"-bind", "127.0.0.1:70000"}, nil, "-bind"},
		{[]string{"-replication", "x"}, nil, "-replication"},
		{[]string{"-join", "10.0.0.1:0"}, nil, "-join"},
		{[]string{"-join", "10.0.0.1:7946,seed 2"}, nil, `"seed 2" is not`}, // the bad element, named
		{[]string{"-join", ":7946"}, nil, "-join"},
		{[]string{"-join", "seed:x"}, nil, "-join"},
		{[]string{"-join", "[seed]"}, nil, "-join"},
		{[]string{"-join", "seed", "-bind", "127.0.0.1:0"}, nil, "-join"}, // no port to take
		{[]string{"-multicast", "10.0.0.1:45564"}, nil, "-multicast"},
		{[]string{"-frequency", "fast"}, nil, "-frequency"},
		{[]string{"-frequency", "0s"}, nil, "-frequency"},
		{[]string{"-frequency", "1ns", "-drop-time", "2ns"}, nil, "-frequency"},
		{[]string{"-drop-time", "-3s"}, nil, "-drop-time"},
		{[]string{"-frequency", "1s", "-drop-time", "1500ms"}, nil, "-drop-time"},
		{[]string{"-frequency", "1h"}, nil, "flag -frequency: want a duration of at most half -drop-time, which is its default 3s"}, // not the unset -drop-time
		{[]string{"-manager", "redis"}, nil, "-manager"},
		{[]string{"-manager", "standard", "-session-file", "."}, nil, "-session-file"},
		{[]string{"-manager", "standard", "-session-file", "no/such/dir/sessions"}, nil, "-session-file"},
		{[]string{"-backups", "-1"}, nil, "-backups"},
		{[]string{"-large-session", "12GB"}, nil, "-large-session"},
		{[]string{"-drain-time", "-1s"}, nil, "-drain-time"},
		{[]string{"-send-mode", "fire"}, nil, "-send-mode"},
		{[]string{"-session-timeout", "1"}, nil, "-session-timeout"},
		{[]string{"-send-timeout", "0s"}, nil, "-send-timeout"},
		{nil, map[string]string{"COHORT_SEND_TIMEOUT": "soon"}, "COHORT_SEND_TIMEOUT"},
		{[]string{"-cookie", "a b"}, nil, "-cookie"},
		{[]string{"-cookie", "sé"}, nil, "-cookie"},
		{[]string{"-key", "c2hvcnQ="}, nil, "-key"},
		{[]string{"-log-level", "loud"}, nil, "-log-level"},
		{[]string{"-log-format", "xml"}, nil, "-log-format"},
		{nil, map[string]string{"COHORT_DROP_TIME": "soon"}, "COHORT_DROP_TIME"},
	} {
		t.Run(strings.Join(tc.args, " ")+strings.Join(keys(tc.env), ""), func(t *testing.T) {
			_, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(tc.env), "testhost", io.Discard)
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("parseFlags(%q) = %v, want a flag error", tc.args, err)
			}
			if !strings.Contains(err.Error(), tc.want) || fe.Want == "" {
				t.Errorf("error %q does not name %s and the accepted form", err, tc.want)
			}
		})
	}
	if _, err := parseFlags([]string{"-key", "c2VjcmV0c2VjcmV0"}, env(nil), "testhost", io.Discard); err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("a bad key's error must not repeat the key: %v", err)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestParseFlagsPorts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string // what the error must name; none: accepted
	}{
		{[]string{"-http", "127.0.0.1:7946"}, []string{"-http", "-bind", "7946"}},
		{[]string{"-http", "0.0.0.0:7946"}, []string{"-http", "-bind"}},
		{[]string{"-http", ":7946"}, []string{"-http", "-bind"}},
		{[]string{"-http", "localhost:7946"}, []string{"-http", "-bind"}},
		{[]string{"-http", "127.0.0.1:8946"}, []string{"-http", "-replication", "derived from -bind", "port + 1000"}},
		{[]string{"-http", "127.0.0.1:9000", "-replication", "127.0.0.1:9000"}, []string{"-http", "-replication"}},
		{[]string{"-replication", "127.0.0.1:7946"}, []string{"-replication", "-bind"}},
		{[]string{"-http", "127.0.0.1:8946", "-manager", "standard"}, nil}, // no replication channel
		{[]string{"-http", "10.0.0.1:7946"}, nil},                          // another address
		{[]string{"-bind", "127.0.0.1:0", "-http", "127.0.0.1:1000"}, nil}, // port 0 picks a free one
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(nil), "testhost", io.Discard)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("parseFlags(%q) = %v, want no error", tc.args, err)
				}
				return
			}
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("parseFlags(%q) = %v, want a flag error", tc.args, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
			if !strings.Contains(fe.Want, "a port other than") {
				t.Errorf("error %q does not give the accepted form", err)
			}
		})
	}
}

func TestParseFlagsAddresses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // the flag the error must name
	}{
		{[]string{"-http", "127.0.0.1:"}, "-http"},
		{[]string{"-http", "127.0.0.1:http"}, "-http"},
		{[]string{"-http", ":99999"}, "-http"},
		{[]string{"-http", "127.0.0.1:0"}, "-http"},
		{[]string{"-bind", "0.0.0.0:7946"}, "-bind"},
		{[]string{"-bind", "[::]:7946"}, "-bind"},
		{[]string{"-replication", "0.0.0.0:8946"}, "-replication"},
		{[]string{"-route", "nö"}, "-route"},
		{[]string{"-route", "a;b"}, "-route"},
		{[]string{"-route", "a b"}, "-route"},
		{[]string{"-route", "a=b"}, "-route"},
		{[]string{"-route", strings.Repeat("n", 129)}, "-route"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(nil), "testhost", io.Discard)
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("parseFlags(%q) = %v, want a flag error", tc.args, err)
			}
			if !strings.Contains(err.Error(), tc.want) || fe.Want == "" {
				t.Errorf("error %q does not name %s and the accepted form", err, tc.want)
			}
		})
	}
	if _, err := parseFlags([]string{"-bind", "0.0.0.0:7946"}, env(nil), "testhost", io.Discard); err == nil || !strings.Contains(err.Error(), "reach") {
		t.Errorf("-bind 0.0.0.0: error %v, want one that asks for the address peers reach", err)
	}
	c, err := parseFlags([]string{"-route", "node_1-a", "-http", ":8081", "-bind", "10.1.1.1:7000"}, env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.membershipConfig(nil).HTTPAddr; got != "10.1.1.1:8081" {
		t.Errorf("-http :8081 -bind 10.1.1.1:7000 advertises HTTP %q, want 10.1.1.1:8081", got)
	}
	for _, httpAddr := range []string{"0.0.0.0:8081", "[::]:8081"} {
		c, err := parseFlags([]string{"-route", "n1", "-http", httpAddr}, env(nil), "testhost", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.membershipConfig(nil).HTTPAddr; got != "127.0.0.1:8081" {
			t.Errorf("-http %s advertises HTTP %q, want 127.0.0.1:8081 (the -bind IP)", httpAddr, got)
		}
	}
}

func TestParseFlagsRouteFromHost(t *testing.T) {
	for _, tc := range []struct {
		host, want string
	}{
		{"web1.example.com", "web1"},
		{"web1", "web1"},
		{"ip-10-0-0-1.ec2.internal", "ip-10-0-0-1"},
	} {
		c, err := parseFlags(nil, env(nil), tc.host, io.Discard)
		if err != nil {
			t.Fatalf("host %q: %v", tc.host, err)
		}
		if c.Route != tc.want {
			t.Errorf("host %q: route %q, want %q", tc.host, c.Route, tc.want)
		}
	}
	for _, host := range []string{"nö.example.com", ""} {
		_, err := parseFlags(nil, env(nil), host, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "host name") || !strings.Contains(err.Error(), "set -route") {
			t.Errorf("host %q: error %v, want one saying the route came from the host name and to set -route", host, err)
		}
	}
	// A route that is set is never the host's.
	if c, err := parseFlags(nil, env(map[string]string{"COHORT_ROUTE": "n2"}), "nö", io.Discard); err != nil || c.Route != "n2" {
		t.Errorf("COHORT_ROUTE=n2 on host nö = %v, %v; want route n2", c, err)
	}
}

func TestParseFlagsIgnored(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string // the flags reported as ignored
	}{
		{[]string{"-backups", "2"}, nil, []string{"backups"}},
		{nil, map[string]string{"COHORT_BACKUPS": "2"}, []string{"backups"}},
		{[]string{"-manager", "backup", "-backups", "2"}, nil, nil},
		{[]string{"-manager", "standard", "-backups", "2", "-send-mode", "sync"}, nil, []string{"backups", "send-mode"}},
		{[]string{"-manager", "standard", "-replication", "127.0.0.1:9000", "-large-session", "off"}, nil, []string{"replication", "large-session"}},
		{[]string{"-manager", "delta", "-send-mode", "sync"}, nil, nil},
		{[]string{"-manager", "standard"}, nil, nil}, // defaults are not reported
		{[]string{"-session-file", "sessions"}, nil, []string{"session-file"}},
		{[]string{"-session-file", "no/such/dir/sessions"}, nil, []string{"session-file"}}, // not checked when ignored
		{[]string{"-manager", "standard", "-session-file", "sessions"}, nil, nil},
	} {
		t.Run(strings.Join(tc.args, " ")+strings.Join(keys(tc.env), ""), func(t *testing.T) {
			c, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(tc.env), "testhost", io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ig := range c.Ignored {
				got = append(got, ig.Flag)
				if ig.Reason == "" || !strings.Contains(ig.Source, ig.Flag) {
					t.Errorf("ignored %+v: want the source naming the flag and a reason", ig)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("ignored = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	var out strings.Builder
	if _, err := parseFlags([]string{"-h"}, env(nil), "testhost", &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h = %v, want flag.ErrHelp", err)
	}
	usage := out.String()
	for _, want := range []string{
		"  -backups n\n", "  -max-sessions n\n", "  -frequency duration\n", "  -drop-time duration\n",
		"  -http host:port\n", "  -bind IP:port\n", "  -manager delta|backup|standard\n", "  -large-session size\n",
		"  -version\n", "SIGTERM or SIGINT", "COHORT_KEY: a flag's value shows in ps",
	} {
		if !strings.Contains(usage, want) {
			t.Errorf("usage lacks %q:\n%s", want, usage)
		}
	}
	if strings.Contains(usage, " string\n") {
		t.Errorf("usage still calls a value string:\n%s", usage)
	}
	for _, name := range []string{"route", "http", "bind", "replication", "join", "multicast", "frequency", "drop-time",
		"manager", "backups", "send-mode", "send-timeout", "session-timeout", "drain-time", "large-session", "max-sessions",
		"cookie", "domain", "key", "log-level", "log-format"} {
		if !strings.Contains(usage, "\n    \t"+envName(name)+"\n") {
			t.Errorf("usage does not name %s on a line of its own", envName(name))
		}
	}
	if strings.Contains(usage, "COHORT_VERSION") {
		t.Errorf("usage offers COHORT_VERSION")
	}

	if _, err := parseFlags([]string{"-version", "-route", "nö"}, env(nil), "testhost", io.Discard); !errors.Is(err, errVersion) {
		t.Errorf("-version = %v, want errVersion whatever the other flags", err)
	}
	if _, err := parseFlags([]string{"-route", "n1"}, env(map[string]string{"COHORT_VERSION": "1.2.3"}), "testhost", io.Discard); err != nil {
		t.Errorf("COHORT_VERSION in the environment = %v, want it ignored", err)
	}
}

func TestParseFlagsLogSettingsOnError(t *testing.T) {
	c, err := parseFlags([]string{"-route", "n1", "-log-format", "json", "-log-level", "warn", "-frequency", "fast"}, env(nil), "testhost", io.Discard)
	if err == nil || c == nil || c.LogFormat != "json" || c.LogLevel != slog.LevelWarn || c.Route != "n1" {
		t.Errorf("parseFlags with a bad -frequency = %+v, %v; want the error and the log settings", c, err)
	}
	if c, err := parseFlags([]string{"-log-format", "xml"}, env(nil), "testhost", io.Discard); err == nil || c != nil {
		t.Errorf("parseFlags with a bad -log-format = %+v, %v; want only the error", c, err)
	}
}

// A COHORT_ variable that sets no flag is reported, with the one it was
// probably meant to be; flags' own variables and other programs' are not.
func TestUnknownEnv(t *testing.T) {
	c, err := parseFlags([]string{"-route", "n1"}, env(nil), "testhost", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := c.unknownEnv([]string{
		"COHORT_DROP_TIME=5s", "COHORT_VERSION=1.2.3", "PATH=/bin", "COHORTX=1",
		"COHORT_DROPTIME=5s", "cohort_frequency=1s", "COHORT_SEND_MOD=sync", "COHORT_COLOR=blue", "COHORT_KEY_FILE==x",
	})
	want := []unknownVar{
		{"COHORT_DROPTIME", "COHORT_DROP_TIME"},
		{"cohort_frequency", "COHORT_FREQUENCY"},
		{"COHORT_SEND_MOD", "COHORT_SEND_MODE"},
		{"COHORT_COLOR", ""},
		{"COHORT_KEY_FILE", ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("unknownEnv = %v, want %v", got, want)
	}
}

// A command line the flag package refuses gets one line that names the
// flag and the accepted form, and no usage dump.
func TestParseFlagsCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-bind"}, "flag -bind needs a value: want IP:port, as in -bind=127.0.0.1:7946"},
		{[]string{"-replication"}, "flag -replication needs a value: want IP:port"},
		{[]string{"-version=maybe"}, `invalid value "maybe" for flag -version: want no value, -version=true or -version=false`},
		{[]string{"-bnd", "10.0.0.1:7946"}, "unknown flag -bnd: did you mean -bind? (cohort-node -help lists the flags)"},
		{[]string{"-droptime", "5s"}, "did you mean -drop-time?"},
		{[]string{"-colour", "blue"}, "unknown flag -colour (cohort-node -help lists the flags)"},
		{[]string{"-multicast="}, `invalid value "" for flag -multicast: want an IPv4 multicast group addr:port such as 228.0.0.4:45564, or off`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out strings.Builder
			_, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(nil), "testhost", &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseFlags(%q) = %v, want %q", tc.args, err, tc.want)
			}
			if out.Len() > 0 {
				first, _, _ := strings.Cut(out.String(), "\n")
				t.Errorf("parseFlags(%q) printed %d bytes, from %q; want nothing", tc.args, out.Len(), first)
			}
		})
	}
	// An empty variable leaves its flag's default, as it does for every
	// other flag; only an empty -multicast itself is refused.
	c, err := parseFlags([]string{"-route", "n1"}, env(map[string]string{"COHORT_MULTICAST": ""}), "testhost", io.Discard)
	if err != nil || c.Multicast != "228.0.0.4:45564" {
		t.Errorf("empty COHORT_MULTICAST: %+v, %v; want the default group", c, err)
	}
}
