// Command chat is a browser chat on a Cohort cluster: each node serves the
// page and WebSockets, messages are published to the topic "chat" on every
// node through the hub, and the list of who is online is pushed to every
// browser when it changes. See README.md.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

//go:embed index.html
var page []byte

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// run starts a chat node from the command line's flags and serves until
// ctx is cancelled.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	n, err := start(cfg)
	if err != nil {
		return err
	}
	cfg.logger.Info("chat node serving", "url", "http://"+n.Addr())
	<-ctx.Done()
	return n.Close()
}

// config is what the flags set.
type config struct {
	route, http, bind string
	join, failover    []string
	membership        membership.Config
	logger            *slog.Logger
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	route := fs.String("route", strings.ReplaceAll(strings.Split(host, ".")[0], " ", ""), "this node's route name")
	httpAddr := fs.String("http", "127.0.0.1:8080", "HTTP listen address (page and WebSockets)")
	bind := fs.String("bind", "127.0.0.1:7946", "gossip address; replication listens on its port + 1000")
	join := fs.String("join", "", "comma-separated gossip addresses of nodes to join")
	failover := fs.String("failover", "", "comma-separated HTTP addresses of the other chat nodes, which the page reconnects to when its own node dies (no balancer in front)")
	quiet := fs.Bool("quiet", false, "log warnings only")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	level := slog.LevelInfo
	if *quiet {
		level = slog.LevelWarn
	}
	cfg := config{
		route: *route, http: *httpAddr, bind: *bind,
		join: split(*join), failover: split(*failover),
		membership: membership.DefaultConfig(),
		logger:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("node", *route),
	}
	cfg.membership.Route, cfg.membership.BindAddr, cfg.membership.Join = cfg.route, cfg.bind, cfg.join
	cfg.membership.MulticastAddr = "" // seeds only
	cfg.membership.Logger = cfg.logger
	return cfg, nil
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// node is one running chat node.
type node struct {
	cfg     config
	ln      net.Listener
	srv     *http.Server
	cluster *manager.Cluster
	hub     *web.Hub
	served  chan struct{}
}

// start listens, starts the cluster node, the hub and the HTTP server.
func start(cfg config) (*node, error) {
	ln, err := net.Listen("tcp", cfg.http)
	if err != nil {
		return nil, fmt.Errorf("listen on -http %s: %w", cfg.http, err)
	}
	cc := manager.DefaultClusterConfig()
	cc.Membership = cfg.membership
	cc.Replication.Addr = "" // the gossip port + 1000
	cluster, err := manager.StartCluster(cc)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	n := &node{cfg: cfg, ln: ln, cluster: cluster, served: make(chan struct{})}
	hc := web.DefaultHubConfig()
	hc.Logger = cfg.logger
	hc.CheckOrigin = n.checkOrigin
	hc.OnConnect = n.connected
	hc.OnMessage = n.message
	hc.OnPresence = n.presence
	if n.hub, err = web.NewHub(cluster, hc); err != nil {
		_ = ln.Close()
		_ = cluster.Close(context.Background())
		return nil, err
	}
	wc := web.DefaultConfig()
	wc.Route, wc.Logger = cluster.Membership().Route(), cfg.logger
	sessions, err := web.New(cluster.Manager(), wc)
	if err != nil {
		_ = n.hub.Close()
		_ = ln.Close()
		_ = cluster.Close(context.Background())
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.HandleFunc("GET /config", n.config)
	mux.Handle("GET /ws", n.hub.Handler(userName))
	n.srv = &http.Server{
		Handler:           sessions.Middleware(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(n.served)
		_ = n.srv.Serve(ln)
	}()
	return n, nil
}

// Addr returns the HTTP address the node serves on.
func (n *node) Addr() string { return n.ln.Addr().String() }

// Close stops the HTTP server, closes the sockets (browsers reconnect to
// another node), and leaves the cluster.
func (n *node) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.srv.Shutdown(ctx)
	<-n.served
	err = errors.Join(err, n.hub.Close())
	return errors.Join(err, n.cluster.Close(ctx))
}

// userName is the chat name in ?user=: 1 to 32 characters, printable, no
// surrounding spaces. Anything else is refused.
func userName(r *http.Request) string {
	u := strings.TrimSpace(r.URL.Query().Get("user"))
	if u == "" || utf8.RuneCountInString(u) > 32 || strings.ContainsFunc(u, func(c rune) bool { return c < ' ' || c == 0x7f }) {
		return ""
	}
	return u
}

// checkOrigin accepts the page of this node and of the -failover nodes,
// over http or https: a balancer in front may end TLS.
func (n *node) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, a := range n.cfg.failover {
		if strings.EqualFold(u.Host, a) {
			return true
		}
	}
	return false
}

// config tells the page this node's route and where to fail over to.
func (n *node) config(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Route    string   `json:"route"`
		Failover []string `json:"failover"`
	}{n.hub.Route(), append([]string{}, n.cfg.failover...)})
}

// The messages the page receives, besides the hub's {"subscribed":...}.
type (
	chatLine struct {
		Type string    `json:"type"` // "message"
		User string    `json:"user"`
		Node string    `json:"node"` // where the sender is connected
		Text string    `json:"text"`
		At   time.Time `json:"at"`
	}
	presenceLine struct {
		Type   string   `json:"type"` // "presence"
		Users  []string `json:"users"`
		User   string   `json:"user,omitempty"`   // who came or went, if anyone
		Online *bool    `json:"online,omitempty"` // whether User came or went
	}
)

func encode(v any) []byte {
	b, _ := json.Marshal(v) // plain structs: cannot fail
	return b
}

// connected sends a new socket who is online now.
func (n *node) connected(c *web.Conn) {
	_ = c.Send(encode(presenceLine{Type: "presence", Users: n.hub.OnlineUsers()}))
}

// message publishes what a user typed ({"text": ...}) to everyone.
func (n *node) message(c *web.Conn, msg []byte) {
	var in struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(msg, &in) != nil || strings.TrimSpace(in.Text) == "" || len(in.Text) > 2000 {
		return
	}
	line := chatLine{Type: "message", User: c.User(), Node: n.hub.Route(), Text: in.Text, At: time.Now().UTC()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.hub.Publish(ctx, "chat", encode(line)); err != nil {
		n.cfg.logger.Warn("chat message not delivered everywhere", "err", err)
	}
}

// presence runs on every node when someone comes or goes anywhere: each
// node tells its own sockets.
func (n *node) presence(user string, online bool) {
	n.hub.PublishLocal("chat", encode(presenceLine{Type: "presence", Users: n.hub.OnlineUsers(), User: user, Online: &online}))
}
