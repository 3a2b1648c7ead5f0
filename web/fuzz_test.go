package web

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/cohort-cluster/cohort/manager"
)

// FuzzRequestID feeds the session id parser arbitrary cookies and paths:
// it must never panic, must strip the ;jsessionid= parameter it reads, and
// must give the same answer for the same request twice.
func FuzzRequestID(f *testing.F) {
	f.Add("/counter", "abc.node1")
	f.Add("/counter;jsessionid=abc.node1", "")
	f.Add("/a;JSESSIONID=x.y/b;v=1", "z")
	f.Add(";jsessionid=", "")
	f.Add("/%3Bjsessionid=abc", "\x00")
	f.Add("\xed;JSESSIONID=", "0") // ToLower would make the index point past the path
	ss := &Sessions{cfg: Config{CookieName: "JSESSIONID"}}
	f.Fuzz(func(t *testing.T, path, cookie string) {
		r := &http.Request{Method: "GET", URL: &url.URL{Path: path}, Header: http.Header{}}
		if cookie != "" {
			r.Header.Set("Cookie", "JSESSIONID="+cookie)
		}
		r2, id := ss.requestID(r)
		if r.URL.Path != path {
			t.Fatalf("requestID changed the caller's request path to %q", r.URL.Path)
		}
		const param = ";jsessionid="
		if indexFoldASCII(r2.URL.Path, param) >= 0 && indexFoldASCII(path[indexFoldASCII(path, param)+1:], param) < 0 {
			t.Fatalf("path %q kept its parameter: %q", path, r2.URL.Path)
		}
		_, id2 := ss.requestID(r)
		if id != id2 {
			t.Fatalf("requestID not deterministic: %q, %q", id, id2)
		}
		base, route := manager.SplitID(id)
		if manager.JoinID(base, route) != id && route != "" {
			t.Fatalf("SplitID(%q) = %q, %q does not join back", id, base, route)
		}
	})
}

// FuzzCookieValue: the session cookie read in place is the one net/http's
// r.Cookie reads, whatever else the Cookie header lines hold.
func FuzzCookieValue(f *testing.F) {
	f.Add("JSESSIONID=abc.node1", "", "JSESSIONID")
	f.Add(" a=1; JSESSIONID = x.y ;b=2", "", "JSESSIONID")
	f.Add(`JSESSIONID="quoted"; JSESSIONID=second`, "", "JSESSIONID")
	f.Add("JSESSIONID=; JSESSIONID=later", "JSESSIONID=other", "JSESSIONID")
	f.Add("jsessionid=lower;JSESSIONID=a b", "", "JSESSIONID")
	f.Add("sid=\x7f; sid=ok", "", "sid")
	f.Fuzz(func(t *testing.T, line1, line2, name string) {
		if !ValidCookieName(name) {
			return // New refuses it
		}
		r := &http.Request{Header: http.Header{}}
		for _, l := range []string{line1, line2} {
			if l != "" {
				r.Header.Add("Cookie", l)
			}
		}
		want := ""
		if c, err := r.Cookie(name); err == nil {
			want = c.Value
		}
		if got := cookieValue(r, name); got != want {
			t.Fatalf("cookie %q of %q: read %q, net/http reads %q", name, r.Header["Cookie"], got, want)
		}
	})
}

// FuzzSkip: the default filter's shortcut for paths without an extension
// agrees with its regexp.
func FuzzSkip(f *testing.F) {
	for _, p := range []string{"/", "/counter", "/app.js", "/a.b/c", "/x.PNG", "/v1.2/api", "/.css", "/a/b.woff2", "/a.js/"} {
		f.Add(p)
	}
	ss := &Sessions{cfg: Config{Skip: DefaultSkip}}
	f.Fuzz(func(t *testing.T, path string) {
		if got, want := ss.skip(path), DefaultSkip.MatchString(path); got != want {
			t.Fatalf("skip(%q) = %v, the regexp says %v", path, got, want)
		}
	})
}
