package kubernetes

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeShutdownTimeout bounds a node's shutdown after its drain time, with
// the default -send-timeout and -drop-time: 10 s for the in-flight
// requests, then the replication flush (-send-timeout, 5 s), leaving the
// cluster (-drop-time, 3 s) and 2 s for a Backup hand-over
// (cmd/node/run.go, clusterCloseBudget).
const nodeShutdownTimeout = 20 * time.Second

// The names the manifests and README agree on.
const (
	headless   = "cohort-gossip"
	gossipPort = 7946
	httpPort   = 8080
)

// node is a YAML mapping or list item, as its lines; this test reads the
// manifests with indentation alone, to need no YAML package.
type node []string

func indent(line string) int { return len(line) - len(strings.TrimLeft(line, " ")) }

// keyValue splits "  - key: value" into key and value.
func keyValue(line string) (key, value string) {
	s := strings.TrimPrefix(strings.TrimSpace(line), "- ")
	key, value, _ = strings.Cut(s, ":")
	return strings.TrimSpace(key), strings.Trim(strings.TrimSpace(value), `"'`)
}

// get returns the block nested under the first line whose key is key,
// or nil.
func (n node) get(key string) node {
	for i, l := range n {
		if k, _ := keyValue(l); k != key || strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		var out node
		for _, c := range n[i+1:] {
			if strings.TrimSpace(c) == "" || strings.HasPrefix(strings.TrimSpace(c), "#") {
				continue
			}
			if indent(c) <= indent(l) {
				break
			}
			out = append(out, c)
		}
		return out
	}
	return nil
}

// value returns the scalar of the first "key: value" line, or "".
func (n node) value(key string) string {
	for _, l := range n {
		if k, v := keyValue(l); k == key && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			return v
		}
	}
	return ""
}

// items splits a list block into its items.
func (n node) items() []node {
	var out []node
	for _, l := range n {
		if strings.HasPrefix(strings.TrimSpace(l), "- ") && (len(out) == 0 || indent(l) == indent(out[0][0])) {
			out = append(out, node{l})
		} else if len(out) > 0 {
			out[len(out)-1] = append(out[len(out)-1], l)
		}
	}
	return out
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// manifests returns cohort.yaml's documents by "Kind/name".
func manifests(t *testing.T) map[string]node {
	t.Helper()
	docs := make(map[string]node)
	for _, d := range regexp.MustCompile(`(?m)^---$`).Split(read(t, "cohort.yaml"), -1) {
		n := node(strings.Split(d, "\n"))
		docs[n.value("kind")+"/"+n.get("metadata").value("name")] = n
	}
	return docs
}

func mustGet(t *testing.T, docs map[string]node, name string) node {
	t.Helper()
	n, ok := docs[name]
	if !ok {
		t.Fatalf("cohort.yaml has no %s", name)
	}
	return n
}

// container returns the StatefulSet's one container.
func container(t *testing.T) node {
	t.Helper()
	c := mustGet(t, manifests(t), "StatefulSet/cohort").get("containers").items()
	if len(c) != 1 {
		t.Fatalf("StatefulSet has %d containers, want 1", len(c))
	}
	return c[0]
}

// args returns the container's arguments, "-flag=value", as flag -> value.
func args(t *testing.T) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for _, it := range container(t).get("args").items() {
		a := strings.Trim(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(it[0]), "- ")), `"'`)
		flag, value, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(flag, "-") {
			t.Fatalf("argument %q: want -flag=value", a)
		}
		out[strings.TrimPrefix(flag, "-")] = value
	}
	return out
}

// TestNodeFlags checks the flags the README promises, and that every
// flag given is one cohort-node has.
func TestNodeFlags(t *testing.T) {
	got := args(t)
	want := map[string]string{
		"route":      "$(POD_NAME)",
		"bind":       "$(POD_IP):" + strconv.Itoa(gossipPort),
		"join":       headless + ".$(POD_NAMESPACE).svc:" + strconv.Itoa(gossipPort),
		"multicast":  "off",
		"http":       "0.0.0.0:" + strconv.Itoa(httpPort),
		"drain-time": "5s",
	}
	for flag, v := range want {
		if got[flag] != v {
			t.Errorf("-%s = %q, want %q", flag, got[flag], v)
		}
	}
	known := make(map[string]bool)
	for _, m := range regexp.MustCompile(`fs\.(?:String|Bool|Int|Duration)\("([a-z-]+)"`).FindAllStringSubmatch(read(t, filepath.Join("..", "..", "cmd", "node", "flags.go")), -1) {
		known[m[1]] = true
	}
	if len(known) < 10 {
		t.Fatalf("found %d flags in cmd/node/flags.go; has the way it declares flags changed?", len(known))
	}
	for flag := range got {
		if !known[flag] {
			t.Errorf("-%s is not a cohort-node flag", flag)
		}
	}
}

// TestDownwardAPI checks that the variables the arguments use come from
// the pod.
func TestDownwardAPI(t *testing.T) {
	want := map[string]string{"POD_NAME": "metadata.name", "POD_IP": "status.podIP", "POD_NAMESPACE": "metadata.namespace"}
	got := make(map[string]string)
	for _, e := range container(t).get("env").items() {
		got[e.value("name")] = e.value("fieldPath")
	}
	for name, path := range want {
		if got[name] != path {
			t.Errorf("env %s from %q, want fieldRef %s", name, got[name], path)
		}
	}
	for flag, v := range args(t) {
		for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(v, -1) {
			if _, ok := got[m[1]]; !ok {
				t.Errorf("-%s uses $(%s), which env does not set", flag, m[1])
			}
		}
	}
}

// TestPorts checks the container's ports: HTTP, gossip on TCP and UDP,
// and replication on the gossip port + 1000, as cohort-node defaults it.
func TestPorts(t *testing.T) {
	want := []string{
		"http " + strconv.Itoa(httpPort) + "/TCP",
		"gossip-tcp " + strconv.Itoa(gossipPort) + "/TCP",
		"gossip-udp " + strconv.Itoa(gossipPort) + "/UDP",
		"replication " + strconv.Itoa(gossipPort+1000) + "/TCP",
	}
	var got []string
	for _, p := range container(t).get("ports").items() {
		got = append(got, p.value("name")+" "+p.value("containerPort")+"/"+p.value("protocol"))
	}
	if !slices.Equal(got, want) {
		t.Errorf("container ports = %q, want %q", got, want)
	}
}

// TestProbes checks the probes: readiness on /readyz, liveness on /healthz
// held back by a startup probe while the node fetches its sessions (its
// HTTP port is closed until then), and a grace period that covers the
// drain.
func TestProbes(t *testing.T) {
	c := container(t)
	for _, tc := range []struct{ probe, path string }{
		{"readinessProbe", "/readyz"},
		{"livenessProbe", "/healthz"},
		{"startupProbe", "/healthz"},
	} {
		p := c.get(tc.probe)
		if p == nil {
			t.Errorf("no %s", tc.probe)
			continue
		}
		if got := p.get("httpGet").value("path"); got != tc.path {
			t.Errorf("%s path = %q, want %q", tc.probe, got, tc.path)
		}
		if got := p.get("httpGet").value("port"); got != "http" && got != strconv.Itoa(httpPort) {
			t.Errorf("%s port = %q, want http", tc.probe, got)
		}
	}
	s := c.get("startupProbe")
	period, _ := strconv.Atoi(s.value("periodSeconds"))
	failures, _ := strconv.Atoi(s.value("failureThreshold"))
	if budget := time.Duration(period*failures) * time.Second; budget < time.Minute {
		t.Errorf("startup probe allows %v for the state transfer, want at least 1m", budget)
	}
	readyPeriod, _ := strconv.Atoi(c.get("readinessProbe").value("periodSeconds"))
	drain, err := time.ParseDuration(args(t)["drain-time"])
	if err != nil {
		t.Fatal(err)
	}
	if readyPeriod == 0 || drain < 2*time.Duration(readyPeriod)*time.Second {
		t.Errorf("-drain-time %v is shorter than two readiness periods (%ds)", drain, readyPeriod)
	}
	grace, _ := strconv.Atoi(mustGet(t, manifests(t), "StatefulSet/cohort").value("terminationGracePeriodSeconds"))
	if g := time.Duration(grace) * time.Second; g < drain+nodeShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %v < -drain-time %v + shutdown %v", g, drain, nodeShutdownTimeout)
	}
}

// TestServices checks the headless gossip Service (peers listed before
// they are ready) and the HTTP Service, and that both select the pods.
func TestServices(t *testing.T) {
	docs := manifests(t)
	sts := mustGet(t, docs, "StatefulSet/cohort")
	if got := sts.value("serviceName"); got != headless {
		t.Errorf("StatefulSet serviceName = %q, want %q", got, headless)
	}
	if got := sts.value("replicas"); got != "3" {
		t.Errorf("replicas = %s, want 3", got)
	}
	podLabels := sts.get("template").get("metadata").get("labels")
	h := mustGet(t, docs, "Service/"+headless).get("spec")
	if h.value("clusterIP") != "None" || h.value("publishNotReadyAddresses") != "true" {
		t.Errorf("Service %s: clusterIP %q, publishNotReadyAddresses %q; want None and true",
			headless, h.value("clusterIP"), h.value("publishNotReadyAddresses"))
	}
	var gossip []string
	for _, p := range h.get("ports").items() {
		if p.value("port") == strconv.Itoa(gossipPort) {
			gossip = append(gossip, p.value("protocol"))
		}
	}
	if slices.Sort(gossip); !slices.Equal(gossip, []string{"TCP", "UDP"}) {
		t.Errorf("Service %s gossip port %d protocols = %v, want TCP and UDP", headless, gossipPort, gossip)
	}
	web := mustGet(t, docs, "Service/cohort").get("spec")
	if got := web.get("ports").items()[0].value("targetPort"); got != "http" {
		t.Errorf("Service cohort targetPort = %q, want http", got)
	}
	for _, sel := range []node{h.get("selector"), web.get("selector"), sts.get("selector").get("matchLabels")} {
		for _, l := range sel {
			if k, v := keyValue(l); podLabels.value(k) != v {
				t.Errorf("selector %s: %s does not match the pod labels %q", k, v, podLabels)
			}
		}
	}
}

// TestReadme checks what README.md quotes from the manifests: every
// -flag=value it shows is the manifest's, and so are the grace period and
// the probe paths.
func TestReadme(t *testing.T) {
	readme := read(t, "README.md")
	got := args(t)
	shown := regexp.MustCompile(`(?m)^\s*- -([a-z-]+)=(\S+)\s*$`).FindAllStringSubmatch(readme, -1)
	if len(shown) < len(got) {
		t.Errorf("README.md shows %d arguments, the StatefulSet has %d", len(shown), len(got))
	}
	for _, m := range shown {
		if got[m[1]] != m[2] {
			t.Errorf("README.md shows -%s=%s, cohort.yaml has %q", m[1], m[2], got[m[1]])
		}
	}
	grace := mustGet(t, manifests(t), "StatefulSet/cohort").value("terminationGracePeriodSeconds")
	if !strings.Contains(readme, "terminationGracePeriodSeconds: "+grace) {
		t.Errorf("README.md does not give terminationGracePeriodSeconds: %s", grace)
	}
	for _, s := range []string{"/readyz", "/healthz", "publishNotReadyAddresses: true", "startupProbe", container(t).value("image")} {
		if !strings.Contains(readme, s) {
			t.Errorf("README.md does not mention %q", s)
		}
	}
}

// TestDockerfile checks that the image is a multi-stage build of a static
// cmd/node and exposes the container's ports.
func TestDockerfile(t *testing.T) {
	df := read(t, "Dockerfile")
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(df, -1)); n < 2 {
		t.Errorf("Dockerfile has %d stages, want a build stage and a runtime stage", n)
	}
	if !regexp.MustCompile(`CGO_ENABLED=0 go build .*\./cmd/node\b`).MatchString(df) {
		t.Error("Dockerfile does not build ./cmd/node with CGO_ENABLED=0")
	}
	m := regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"\]`).FindStringSubmatch(df)
	if m == nil || !strings.Contains(df, "COPY --from=build /out/cohort-node "+m[1]) {
		t.Errorf("Dockerfile ENTRYPOINT %q is not the binary the build stage copies", m)
	}
	expose := regexp.MustCompile(`(?m)^EXPOSE (.*)$`).FindStringSubmatch(df)
	for _, p := range container(t).get("ports").items() {
		want := p.value("containerPort") + "/" + strings.ToLower(p.value("protocol"))
		if expose == nil || !slices.Contains(strings.Fields(expose[1]), want) {
			t.Errorf("Dockerfile does not EXPOSE %s", want)
		}
	}
	if image := container(t).value("image"); !strings.Contains(read(t, "README.md"), "-t "+image) {
		t.Errorf("README.md does not build the image the StatefulSet runs (%s)", image)
	}
}
