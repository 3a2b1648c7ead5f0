package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags([]string{"-route", "node1"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP != "127.0.0.1:8080" || c.Bind != "127.0.0.1:7946" || c.Replication != "127.0.0.1:8946" ||
		c.Multicast != "228.0.0.4:45564" || c.Frequency != 500*time.Millisecond || c.DropTime != 3*time.Second ||
		c.Manager != "delta" || c.Backups != 1 || c.SendMode != "ack" || c.SessionTimeout != 30*time.Minute ||
		c.Cookie != "JSESSIONID" || c.Domain != "cohort" || c.Key != nil || len(c.Join) != 0 {
		t.Errorf("defaults = %+v", c)
	}
}

func TestParseFlagsPrecedence(t *testing.T) {
	e := env(map[string]string{
		"COHORT_DROP_TIME": "5s",
		"COHORT_FREQUENCY": "1s",
		"COHORT_JOIN":      "10.0.0.1:7946, cohort.default.svc:7946",
		"COHORT_MULTICAST": "off",
		"COHORT_KEY":       "MDEyMzQ1Njc4OWFiY2RlZg==",
	})
	c, err := parseFlags([]string{"-route=n1", "-frequency=2s", "-bind=10.1.1.1:7000"}, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Frequency != 2*time.Second {
		t.Errorf("frequency = %v, want the flag's 2s over the environment's 1s", c.Frequency)
	}
	if c.DropTime != 5*time.Second || c.Multicast != "" || len(c.Key) != 16 || c.Replication != "10.1.1.1:8000" {
		t.Errorf("config from environment = %+v", c)
	}
	if want := []string{"10.0.0.1:7946", "cohort.default.svc:7946"}; strings.Join(c.Join, ",") != strings.Join(want, ",") {
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
		{[]string{"-join", "10.0.0.1"}, nil, "-join"},
		{[]string{"-multicast", "10.0.0.1:45564"}, nil, "-multicast"},
		{[]string{"-frequency", "fast"}, nil, "-frequency"},
		{[]string{"-frequency", "0s"}, nil, "-frequency"},
		{[]string{"-drop-time", "-3s"}, nil, "-drop-time"},
		{[]string{"-frequency", "1s", "-drop-time", "1500ms"}, nil, "-drop-time"},
		{[]string{"-manager", "redis"}, nil, "-manager"},
		{[]string{"-backups", "-1"}, nil, "-backups"},
		{[]string{"-large-session", "12GB"}, nil, "-large-session"},
		{[]string{"-drain-time", "-1s"}, nil, "-drain-time"},
		{[]string{"-send-mode", "fire"}, nil, "-send-mode"},
		{[]string{"-session-timeout", "1"}, nil, "-session-timeout"},
		{[]string{"-cookie", "a b"}, nil, "-cookie"},
		{[]string{"-cookie", "sé"}, nil, "-cookie"},
		{[]string{"-key", "c2hvcnQ="}, nil, "-key"},
		{[]string{"-log-level", "loud"}, nil, "-log-level"},
		{[]string{"-log-format", "xml"}, nil, "-log-format"},
		{nil, map[string]string{"COHORT_DROP_TIME": "soon"}, "COHORT_DROP_TIME"},
	} {
		t.Run(strings.Join(tc.args, " ")+strings.Join(keys(tc.env), ""), func(t *testing.T) {
			_, err := parseFlags(append([]string{"-route", "n1"}, tc.args...), env(tc.env), io.Discard)
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("parseFlags(%q) = %v, want a flag error", tc.args, err)
			}
			if !strings.Contains(err.Error(), tc.want) || fe.Want == "" {
				t.Errorf("error %q does not name %s and the accepted form", err, tc.want)
			}
		})
	}
	if _, err := parseFlags([]string{"-key", "c2VjcmV0c2VjcmV0"}, env(nil), io.Discard); err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
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
