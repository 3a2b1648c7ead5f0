package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// httpdConf is the httpd in front of the nodes; {{balancer}} is
// httpdBalancer or the shipped examples/rolling-restart/httpd-balancer.conf
// (see startApache).
const httpdConf = `ServerName 127.0.0.1
Listen {{listen}}
PidFile {{dir}}/httpd.pid
ErrorLog {{dir}}/error.log
LogLevel warn proxy:info proxy_balancer:info
DefaultRuntimeDir {{dir}}
Mutex file:{{dir}} default
{{user}}
LoadModule mpm_event_module {{modules}}/mod_mpm_event.so
LoadModule authz_core_module {{modules}}/mod_authz_core.so
LoadModule env_module {{modules}}/mod_env.so
{{balancer}}
`

// httpdBalancer is the balancer without health checks: mod_proxy_balancer
// sticky on the route suffix of JSESSIONID (cookie or path parameter).
// The settings that make failover fast are explained in docs/failover.md.
const httpdBalancer = `LoadModule slotmem_shm_module {{modules}}/mod_slotmem_shm.so
LoadModule proxy_module {{modules}}/mod_proxy.so
LoadModule proxy_http_module {{modules}}/mod_proxy_http.so
LoadModule proxy_balancer_module {{modules}}/mod_proxy_balancer.so
LoadModule lbmethod_byrequests_module {{modules}}/mod_lbmethod_byrequests.so

# A connection to a killed node is refused at once: httpd puts that
# member in error for retry seconds and sends the request to another.
# proxy-initial-not-pooled keeps a request that opens a client connection
# off a pooled backend connection the node may have closed.
SetEnv proxy-initial-not-pooled 1
ProxyTimeout 10
<Proxy "balancer://cohort">
{{members}}
    ProxySet stickysession=JSESSIONID|jsessionid lbmethod=byrequests nofailover=Off
</Proxy>
ProxyPass "/" "balancer://cohort/"
ProxyPassReverse "/" "balancer://cohort/"
`

// apacheBinary finds httpd: Debian's apache2 or a plain httpd. In CI it
// must be there (.ci/run installs it); elsewhere the test skips.
func apacheBinary(t testing.TB) (bin, modules string) {
	t.Helper()
	for _, c := range []struct{ bin, mods string }{
		{"/usr/sbin/apache2", "/usr/lib/apache2/modules"},
		{"/usr/sbin/httpd", "/usr/lib/httpd/modules"},
		{"/usr/local/apache2/bin/httpd", "/usr/local/apache2/modules"},
	} {
		if _, err := os.Stat(c.bin); err == nil {
			return c.bin, c.mods
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("Apache httpd not found (Debian package apache2); .ci/run installs it")
	}
	t.Skip("Apache httpd not installed (apt-get install apache2); the failover test needs it")
	return "", ""
}

// shippedBalancer is examples/rolling-restart/httpd-balancer.conf as an
// operator would use it: its members' addresses (http://10.0.0.N:8080,
// routes nodeN) are those of nodes, and, on an httpd that is not Debian's,
// its modules directory is modules.
func shippedBalancer(t testing.TB, nodes []nodeSpec, modules string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "rolling-restart", "httpd-balancer.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.ReplaceAll(string(b), "/usr/lib/apache2/modules/", modules+"/")
	for i, n := range nodes {
		member := fmt.Sprintf(`BalancerMember "http://10.0.0.%d:8080" route=%s `, i+1, n.route)
		if !strings.Contains(conf, member) {
			t.Fatalf("httpd-balancer.conf has no %s", member)
		}
		conf = strings.Replace(conf, member, fmt.Sprintf(`BalancerMember "http://%s" route=%s `, n.http, n.route), 1)
	}
	return conf
}

// startApache writes a config balancing over nodes and starts httpd in
// the foreground on a free port. It returns the base URL. With
// healthCheck, the balancer is the one operators are given,
// examples/rolling-restart/httpd-balancer.conf, included as it is but for
// the nodes' addresses: httpd probes each node's /readyz every second
// (mod_proxy_hcheck) and opens a backend connection per request.
func startApache(t testing.TB, nodes []nodeSpec, healthCheck bool) string {
	t.Helper()
	bin, modules := apacheBinary(t)
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var members strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&members, "    BalancerMember \"http://%s\" route=%s retry=1 connectiontimeout=1 timeout=10\n", n.http, n.route)
	}
	balancer := strings.NewReplacer("{{modules}}", modules, "{{members}}", strings.TrimRight(members.String(), "\n")).Replace(httpdBalancer)
	if healthCheck {
		path := filepath.Join(dir, "httpd-balancer.conf")
		if err := os.WriteFile(path, []byte(shippedBalancer(t, nodes, modules)), 0o644); err != nil {
			t.Fatal(err)
		}
		balancer = fmt.Sprintf("Include %q", path)
	}
	userLine := ""
	if os.Geteuid() == 0 {
		// httpd refuses to serve as root; its workers run as nobody, who
		// must reach the runtime directory.
		u := "www-data"
		if _, err := user.Lookup(u); err != nil {
			u = "nobody"
		}
		userLine = "User " + u + "\nGroup " + groupOf(u)
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := strings.NewReplacer("{{listen}}", listen, "{{dir}}", dir, "{{modules}}", modules,
		"{{user}}", userLine, "{{balancer}}", balancer).Replace(httpdConf)
	confPath := filepath.Join(dir, "httpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", confPath, "-DFOREGROUND")
	out, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt) // graceful-stop would wait for clients
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		out.Close()
		if t.Failed() {
			for _, f := range []string{"stdout.log", "error.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("httpd %s:\n%s", f, b)
			}
		}
	})
	base := "http://" + listen
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
			e, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("httpd exited at start:\n%s\n%s", b, e)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("httpd not serving on %s: %v", listen, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func groupOf(name string) string {
	u, err := user.Lookup(name)
	if err != nil {
		return name
	}
	if g, err := user.LookupGroupId(u.Gid); err == nil {
		return g.Name
	}
	return name
}

var counterBody = regexp.MustCompile(`^count=(\d+) node=(\S+) id=(\S+)\n$`)

// hit is one /counter answer.
type hit struct {
	count int
	node  string
	id    string
}

func getCounter(c *http.Client, u string) (hit, error) {
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		return hit{}, err
	}
	return doCounter(c, req)
}

func doCounter(c *http.Client, req *http.Request) (hit, error) {
	resp, err := c.Do(req)
	if err != nil {
		return hit{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return hit{}, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	m := counterBody.FindSubmatch(b)
	if m == nil {
		return hit{}, fmt.Errorf("body %q does not match count=N node=ROUTE id=SESSIONID", b)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return hit{count: n, node: string(m[2]), id: string(m[3])}, nil
}

// waitReady polls /readyz of p.
func waitReady(t testing.TB, p *proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", p.route, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFailoverBehindApache runs 3 real nodes behind a real Apache httpd
// with mod_proxy_balancer, for each replicating manager in ack mode: a
// session counts to 10 on one node; that node is killed with SIGKILL; the
// count goes on at 11 on another node, with the cookie rebound to its
// route and sticking there; the killed node restarts, gets the state back
// and answers for the session when asked directly.
func TestFailoverBehindApache(t *testing.T) {
	for _, kind := range []string{"delta", "backup"} {
		t.Run(kind, func(t *testing.T) {
			specs := newSpecs(t, 3)
			join := seeds(specs)
			procs := map[string]*proc{}
			for _, sp := range specs {
				procs[sp.route] = startNode(t, sp, join, "-manager", kind, "-send-mode", "ack")
			}
			for _, r := range []string{"node1", "node2", "node3"} {
				waitState(t, r, "alive", procs["node1"], procs["node2"], procs["node3"])
			}
			for _, p := range procs {
				waitReady(t, p)
			}
			base := startApache(t, specs, false)
			jar, _ := cookiejar.New(nil)
			client := &http.Client{Jar: jar, Timeout: 15 * time.Second}

			var first hit
			for i := 1; i <= 10; i++ {
				h, err := getCounter(client, base+"/counter")
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if i == 1 {
					first = h
				}
				if h.count != i || h.node != first.node || h.id != first.id {
					t.Fatalf("request %d answered %+v; want count %d on %s with id %s", i, h, i, first.node, first.id)
				}
			}
			if !strings.HasSuffix(first.id, "."+first.node) {
				t.Fatalf("id %s does not end with the serving node's route %s", first.id, first.node)
			}

			// SIGKILL the serving node.
			victim := procs[first.node]
			if err := victim.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-victim.done
			failed, want := 0, 11
			var last hit
			for sent := 0; want <= 20; sent++ {
				if sent > 30 {
					t.Fatalf("only reached count %d after %d requests", want-1, sent)
				}
				h, err := getCounter(client, base+"/counter")
				if err != nil {
					failed++
					t.Logf("request after the kill failed: %v", err)
					continue
				}
				if h.count != want {
					t.Fatalf("after the kill: count %d, want %d (an increment was lost or doubled): %+v", h.count, want, h)
				}
				if h.node == first.node {
					t.Fatalf("answered by the killed node: %+v", h)
				}
				if want > 11 && h.node != last.node {
					t.Errorf("count %d served by %s, then %s: the session did not stick", h.count, last.node, h.node)
				}
				if base, _, _ := strings.Cut(h.id, "."); !strings.HasPrefix(first.id, base+".") || !strings.HasSuffix(h.id, "."+h.node) {
					t.Errorf("id after failover %s, want the same base as %s with route %s", h.id, first.id, h.node)
				}
				last = h
				want++
			}
			if failed > 1 {
				t.Errorf("%d requests failed for one kill, want at most 1", failed)
			}
			u, _ := url.Parse(base)
			for _, c := range jar.Cookies(u) {
				if c.Name == "JSESSIONID" && c.Value != last.id {
					t.Errorf("cookie %s, want %s", c.Value, last.id)
				}
			}

			// The killed node comes back with its route: it gets the state
			// and answers for the session when asked directly.
			var spec nodeSpec
			for _, sp := range specs {
				if sp.route == first.node {
					spec = sp
				}
			}
			back := startNode(t, spec, join, "-manager", kind, "-send-mode", "ack")
			waitReady(t, back)
			waitState(t, first.node, "alive", procs[last.node])
			if kind == "delta" {
				st, err := getStatus(back.http)
				if err != nil || st.Sessions.Total < 1 {
					t.Errorf("restarted %s holds %+v sessions (err %v), want the session back", first.node, st, err)
				}
			}
			direct, _ := cookiejar.New(nil)
			du, _ := url.Parse("http://" + back.http)
			direct.SetCookies(du, []*http.Cookie{{Name: "JSESSIONID", Value: last.id, Path: "/"}})
			h, err := getCounter(&http.Client{Jar: direct, Timeout: 15 * time.Second}, "http://"+back.http+"/counter")
			if err != nil {
				t.Fatalf("restarted node: %v", err)
			}
			if h.count != 21 || h.node != first.node || !strings.HasSuffix(h.id, "."+first.node) {
				t.Errorf("restarted node answered %+v, want count 21 on %s", h, first.node)
			}
		})
	}
}
