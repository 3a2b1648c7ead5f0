package httpload

import (
	"net/http"
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
