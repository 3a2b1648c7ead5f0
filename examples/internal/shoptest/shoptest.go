package shoptest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cohort-cluster/cohort/internal/leaktest"
)

// Example is one shop example as its tests drive it.
type Example struct {
	// Start starts a node from command-line flags and returns once it
	// serves; Run serves until ctx is cancelled (the example's main).
	Start func(ctx context.Context, args []string, stderr io.Writer) (Node, error)
	Run   func(ctx context.Context, args []string, stderr io.Writer) error
	// Cookie is the session cookie's name.
	Cookie string
	// RebindOnRead says whether a request that only reads the session on
	// another node rebinds its id to that node (the middleware does, and
	// so does the gorilla Store behind Store.Middleware; without it, the
	// Store rebinds only when the session is saved).
	RebindOnRead bool
}

// Node is a running shop node.
type Node struct {
	HTTP   string // the shop's address
	Gossip string // its gossip address, to join
	Close  func() error
}

// startNode starts a shop node on 127.0.0.1 with ports chosen by the
// system, joined to the gossip address join if given, and closes it when
// the test ends.
func (ex Example) startNode(t *testing.T, route, join string) Node {
	t.Helper()
	args := []string{"-route", route, "-http", "127.0.0.1:0", "-bind", "127.0.0.1:0"}
	if join != "" {
		args = append(args, "-join", join)
	}
	n, err := ex.Start(t.Context(), args, t.Output())
	if err != nil {
		t.Fatalf("start %s: %v", route, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close %s: %v", route, err)
		}
	})
	return n
}

// awaitProbes makes the test's end wait, up to 2s, for the probes
// memberlist still had under way when the nodes closed: its Shutdown does
// not wait for them, and one ends after a probe interval (about 0.5s with
// the default 500ms frequency), longer than goleak waits before it reports
// a leak (about 0.4s). Call it just after leaktest.Check, so that it runs
// after the nodes' Close and before the check.
func awaitProbes(t *testing.T) {
	t.Cleanup(func() {
		buf := make([]byte, 1<<20)
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			if n := runtime.Stack(buf, true); !bytes.Contains(buf[:n], []byte("memberlist.(*Memberlist).probe")) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// browser is one shopper's view of one node. Like a browser, it keeps
// cookies per host; a balancer that fails the shopper over to another node
// is played by copying the cookie to that node's browser.
type browser struct {
	t      *testing.T
	url    *url.URL
	client *http.Client
}

func newBrowser(t *testing.T, n Node) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: t, url: &url.URL{Scheme: "http", Host: n.HTTP, Path: "/"},
		client: &http.Client{Jar: jar, Transport: tr, Timeout: 5 * time.Second}}
}

// do sends a request, follows redirects, and returns the final page.
func (b *browser) do(method, path string, form url.Values) string {
	b.t.Helper()
	req, err := http.NewRequest(method, b.url.JoinPath(path).String(), strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.t.Fatalf("%s %s: %s %v: %.200s", method, path, resp.Status, err, body)
	}
	return string(body)
}

// cookie returns the session cookie the browser holds.
func (b *browser) cookie(name string) *http.Cookie {
	b.t.Helper()
	for _, c := range b.client.Jar.Cookies(b.url) {
		if c.Name == name {
			return c
		}
	}
	b.t.Fatalf("no cookie %q for %s", name, b.url.Host)
	return nil
}

// copyCookie gives b the cookie another browser holds.
func (b *browser) copyCookie(from *browser, name string) {
	c := from.cookie(name)
	b.client.Jar.SetCookies(b.url, []*http.Cookie{{Name: c.Name, Value: c.Value, Path: "/"}})
}

var (
	lineRE   = regexp.MustCompile(`data-product="(\w+)" data-qty="(\d+)"`)
	ordersRE = regexp.MustCompile(`data-orders="(\d+)"`)
	servedRE = regexp.MustCompile(`served by (\w+)`)
)

// cart returns what a cart page shows: "beans=2 grinder=1 orders=0".
func cart(page string) string {
	var parts []string
	for _, m := range lineRE.FindAllStringSubmatch(page, -1) {
		parts = append(parts, m[1]+"="+m[2])
	}
	if m := ordersRE.FindStringSubmatch(page); m != nil {
		parts = append(parts, "orders="+m[1])
	}
	return strings.Join(parts, " ")
}

// waitCart reloads the cart page until it shows want: replication is
// acknowledged when the peer has read the change, which it applies just
// after.
func waitCart(t *testing.T, b *browser, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		page := b.do("GET", "/cart", nil)
		got := cart(page)
		if got == want {
			if m := servedRE.FindStringSubmatch(page); m == nil {
				t.Errorf("%s: page does not say which node served it", b.url.Host)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cart at %s = %q, want %q", b.url.Host, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CartAcrossNodes fills a cart on node 1, reads it on nodes 2 and 3,
// checks out on node 3 and finds it empty on node 1.
func CartAcrossNodes(t *testing.T, ex Example) {
	leaktest.Check(t)
	awaitProbes(t)
	cookieName := ex.Cookie
	n1 := ex.startNode(t, "n1", "")
	n2 := ex.startNode(t, "n2", n1.Gossip)
	n3 := ex.startNode(t, "n3", n1.Gossip)
	b1, b2, b3 := newBrowser(t, n1), newBrowser(t, n2), newBrowser(t, n3)

	if page := b1.do("GET", "/", nil); !strings.Contains(page, "Espresso beans") || !strings.Contains(page, "served by n1") {
		t.Fatalf("product list: %.300s", page)
	}
	for _, p := range []string{"beans", "grinder", "beans"} {
		b1.do("POST", "/cart", url.Values{"product": {p}})
	}
	if got, want := cart(b1.do("GET", "/cart", nil)), "beans=2 grinder=1 orders=0"; got != want {
		t.Fatalf("cart at n1 = %q, want %q", got, want)
	}
	if c := b1.cookie(cookieName); !strings.HasSuffix(c.Value, ".n1") {
		t.Errorf("cookie from n1 = %q, want an id ending in .n1", c.Value)
	}

	// Node 1 fails the shopper over to node 2, then to node 3.
	b2.copyCookie(b1, cookieName)
	waitCart(t, b2, "beans=2 grinder=1 orders=0")
	if c := b2.cookie(cookieName); ex.RebindOnRead && !strings.HasSuffix(c.Value, ".n2") {
		t.Errorf("cookie after a read on n2 = %q, want the id rebound to .n2", c.Value)
	}
	b3.copyCookie(b1, cookieName)
	waitCart(t, b3, "beans=2 grinder=1 orders=0")

	b3.do("POST", "/cart", url.Values{"product": {"filters"}})
	if got, want := cart(b3.do("POST", "/checkout", nil)), "orders=1"; got != want {
		t.Fatalf("cart at n3 after checkout = %q, want %q", got, want)
	}
	if c := b3.cookie(cookieName); !strings.HasSuffix(c.Value, ".n3") {
		t.Errorf("cookie after changes on n3 = %q, want the id rebound to .n3", c.Value)
	}

	// Back on node 1, with the cookie node 3 set.
	b1.copyCookie(b3, cookieName)
	waitCart(t, b1, "orders=1")
	// No one else's cart changed: a new shopper starts empty.
	if got := cart(newBrowser(t, n2).do("GET", "/cart", nil)); got != "orders=0" {
		t.Errorf("new shopper's cart = %q, want empty", got)
	}
}

// RunStoppedWhileStarting cancels run before the node is serving: it
// returns nil and closes the cluster.
func RunStoppedWhileStarting(t *testing.T, ex Example) {
	leaktest.Check(t)
	awaitProbes(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ex.Run(ctx, []string{"-route", "n1", "-http", "127.0.0.1:0", "-bind", "127.0.0.1:0"}, t.Output()); err != nil {
		t.Fatalf("run = %v, want nil", err)
	}
}

// BadFlags checks that run reports a bad flag and accepts -h.
func BadFlags(t *testing.T, ex Example) {
	if err := ex.Run(t.Context(), []string{"-nosuch"}, io.Discard); err == nil {
		t.Error("run -nosuch = nil, want an error")
	}
	if err := ex.Run(t.Context(), []string{"-h"}, io.Discard); err != nil {
		t.Errorf("run -h = %v, want nil", err)
	}
}
