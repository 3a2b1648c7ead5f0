package httpload

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBaselineKeepsCookies: every client sends its first request to first
// without a cookie, then the cookie it was given to path.
func TestBaselineKeepsCookies(t *testing.T) {
	var issued, bad atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("sid")
		switch {
		case r.URL.Path == "/first" && err != nil:
			issued.Add(1)
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "s"})
		case r.URL.Path == "/next" && err == nil && c.Value == "s":
		default:
			bad.Add(1)
		}
	})
	s := Start(t.Cleanup, h, 4, "sid")
	rps, err := s.Baseline("/first", "/next", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rps <= 0 || issued.Load() != 4 || bad.Load() != 0 {
		t.Fatalf("rps %v, %d cookies issued (want 4), %d bad requests", rps, issued.Load(), bad.Load())
	}
}

// TestBaselineReportsFailures: a server that fails makes Baseline fail,
// naming the status.
func TestBaselineReportsFailures(t *testing.T) {
	s := Start(t.Cleanup, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}), 2, "sid")
	if _, err := s.Baseline("/", "/", 20*time.Millisecond); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("err = %v, want the 503 named", err)
	}
}

// TestWrkSendsCookies: with wrk, every request to path carries the cookie
// of one of the sessions made by a request to first, and the round's
// requests are counted.
func TestWrkSendsCookies(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("wrk is needed (Debian package wrk): %v", err)
		}
		t.Skipf("wrk not installed (Debian package wrk): %v", err)
	}
	var issued, served, bad atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("sid")
		switch {
		case r.URL.Path == "/first" && err != nil:
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: fmt.Sprint(issued.Add(1))})
		case r.URL.Path == "/next" && err == nil && c.Value != "" && c.Value <= "4":
			served.Add(1)
		default:
			bad.Add(1)
			http.Error(w, "bad request", http.StatusBadRequest)
		}
	})
	s := Start(t.Cleanup, h, 4, "sid")
	r, err := s.wrkRound("/first", "/next", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if issued.Load() != 4 || bad.Load() != 0 || r.requests == 0 || int64(r.requests) > served.Load() {
		t.Fatalf("%d cookies issued (want 4), %d bad requests, wrk counted %d, server served %d",
			issued.Load(), bad.Load(), r.requests, served.Load())
	}
	if _, err := s.wrkRound("/first", "/missing", 200*time.Millisecond); err == nil {
		t.Fatal("a round of failing requests did not fail")
	}
}

// TestParseWrk reads the summary line among wrk's own output and refuses
// output without one.
func TestParseWrk(t *testing.T) {
	r, err := parseWrk("Running 1h test @ http://127.0.0.1:1/\n  2 threads\nhttpload-wrk 1200 500000 3\n")
	if err != nil || r.requests != 1200 || r.elapsed != 500*time.Millisecond || r.errors != 3 {
		t.Fatalf("parsed %+v, %v", r, err)
	}
	for _, out := range []string{"", "httpload-wrk 1 2\n", "httpload-wrk x 2 3\n"} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("parsed %q", out)
		}
	}
}
