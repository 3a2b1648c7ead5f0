package compare

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
	"github.com/gorilla/sessions"
)

// TestApp checks the benchmark's application against the stores that
// start without a cluster or a server: count goes up with each write and
// reads back, for the same cookie.
func TestApp(t *testing.T) {
	c := manager.DefaultConfig()
	c.Route, c.Logger = "node1", slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := manager.NewStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = "node1", c.Logger
	standard, err := web.NewStore(m, wc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		store sessions.Store
	}{
		{"cookie", sessions.NewCookieStore(hashKey)},
		{"standard", standard},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := app(tc.store)
			cookie := ""
			for i, path := range []string{"/write", "/write", "/read", "/read"} {
				r := httptest.NewRequest(http.MethodGet, path, nil)
				if cookie != "" {
					r.Header.Set("Cookie", cookie)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					t.Fatalf("request %d, %s: status %d: %s", i, path, w.Code, w.Body)
				}
				for _, c := range w.Result().Cookies() {
					if c.Name == sessionName {
						cookie = sessionName + "=" + c.Value
					}
				}
			}
			// A read of a new session must fail, not measure nothing.
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/read", nil))
			if w.Code != http.StatusInternalServerError {
				t.Errorf("read without a session: status %d, want 500", w.Code)
			}
		})
	}
}

// TestWritePlot draws a chart from made-up figures and checks a PNG came
// out.
func TestWritePlot(t *testing.T) {
	var f figures
	for _, r := range []figure{{"redis", 10000, 8000, 1, 1}, {"delta-3-ack", 30000, 20000, 2.9, 2.4}, {"cookie", 40000, 35000, 0, 0}} {
		f.set(r.store, "read", r.read, r.readX)
		f.set(r.store, "write", r.write, r.writeX)
	}
	path := filepath.Join(t.TempDir(), "compare.png")
	if err := writePlot(path, f, "redis", "wrk, 96 connections"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("%s is not a PNG: starts %q", path, b[:min(len(b), 8)])
	}
}
