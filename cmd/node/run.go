package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

// run starts a node and serves until ctx is cancelled, then shuts down
// gracefully: it stops taking requests, leaves the cluster and returns. A
// SIGINT, SIGTERM or SIGHUP that arrives after ctx is cancelled (the second
// signal, when ctx is main's signal context) makes run return at once,
// without leaving. With -log-format json, an error that ends the node is
// logged as a JSON record and returned as a loggedError.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	host, _ := os.Hostname() // "" on failure: the route check then asks for -route
	cfg, err := parseFlags(args, getenv, host, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil
	case errors.Is(err, errVersion):
		_, err = fmt.Fprintln(stdout, versionLine())
		return err
	case err == nil:
		err = serveUntilForced(ctx, cfg, newLogger(cfg, stderr))
	}
	var logged loggedError
	if err != nil && cfg != nil && cfg.LogFormat == "json" && !errors.As(err, &logged) {
		newLogger(cfg, stderr).Error("exiting on error", "err", err)
		return loggedError{err}
	}
	return err
}

// loggedError is an error that run has logged already; main only sets the
// exit status.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// errStoppedNow is returned by run when a second signal cut the graceful
// stop short.
var errStoppedNow = errors.New("stopped by a second signal, without leaving the cluster")

// serveUntilForced runs serve, and returns at once, leaving serve behind,
// on a second signal: the process is about to exit.
func serveUntilForced(ctx context.Context, cfg *config, logger *slog.Logger) error {
	res := make(chan error, 1)
	go func() { res <- serve(ctx, cfg, logger) }() // ends with serve; abandoned only when the process exits
	second, release := secondSignal(ctx)
	defer release()
	select {
	case err := <-res:
		return err
	case sig := <-second:
		logger.Warn("second signal: stopping now", "signal", sig.String())
		return loggedError{errStoppedNow}
	}
}

// secondSignal returns a channel that receives the first SIGINT, SIGTERM or SIGHUP
// to arrive after ctx is done, and a func that releases the signals. The
// signal that cancelled main's context was delivered before ctx was done,
// so it is not seen again here.
func secondSignal(ctx context.Context) (<-chan os.Signal, func()) {
	out := make(chan os.Signal, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // exits on the signal or on release
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sigs)
		select {
		case s := <-sigs:
			out <- s
		case <-done:
		}
	})
	return out, func() { close(done); wg.Wait() }
}

// serve is the node's life: it starts the cluster, serves HTTP once the
// node is ready, and on ctx's end stops gracefully.
func serve(ctx context.Context, cfg *config, logger *slog.Logger) error {
	logger.Info("starting", "version", moduleVersion(), "config", cfg)
	for _, ig := range cfg.Ignored {
		logger.Warn("setting ignored", "flag", "-"+ig.Flag, "source", ig.Source, "reason", ig.Reason)
	}
	for _, u := range cfg.unknownEnv(os.Environ()) {
		attrs := []any{"variable", u.Name}
		if u.Meant != "" {
			attrs = append(attrs, "did_you_mean", u.Meant)
		}
		logger.Warn("environment variable ignored: no flag of that name", attrs...)
	}

	// Try the port first: a taken one fails the start before the node
	// joins.
	probe, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return newListenError(cfg, "http", cfg.HTTP, err)
	}
	_ = probe.Close()
	cluster, err := startCluster(ctx, cfg, logger, portRetry)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		logger.Info("stopped")
		return nil
	}
	if err != nil {
		return err
	}
	// The hub right away: its peers' messages (presence) start at once.
	hc := web.DefaultHubConfig()
	hc.Logger = logger
	hub, err := web.NewHub(cluster, hc)
	if err != nil {
		_ = cluster.Close(context.Background())
		return err
	}
	sessions, err := web.New(cluster.Manager(), cfg.webConfig(logger))
	if err != nil {
		_ = hub.Close()
		_ = cluster.Close(context.Background())
		return err
	}
	// HTTP opens only once the node has its sessions: until then a
	// balancer's connection is refused and goes to another node, rather
	// than getting a 503 for a session this node does not hold yet.
	for !cluster.Ready() {
		select {
		case <-ctx.Done():
			logger.Info("shutting down before ready")
			_ = hub.Close()
			if err := cluster.Close(context.Background()); err != nil {
				return err
			}
			logger.Info("stopped")
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	ln, err := listenHTTP("tcp", cfg.HTTP)
	if err != nil {
		_ = hub.Close()
		_ = cluster.Close(context.Background())
		return newListenError(cfg, "http", cfg.HTTP, err)
	}
	dash := web.NewDashboard(cluster, sessions, logger)
	srv := &http.Server{
		Handler:           newMux(cfg, cluster, sessions, dash, hub),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("serving", "http", ln.Addr().String(), "advertised", advertisedHTTP(cfg.HTTP, cfg.Bind))

	served := false // Serve has returned, its error read
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err = <-serveErr:
		served = true
		logger.Error("http server stopped", "err", err)
	}
	// Not ready first, then keep serving for the drain time, so balancers
	// that probe /readyz stop sending requests before the listener closes.
	cluster.Drain()
	if cfg.DrainTime > 0 && err == nil {
		logger.Info("draining: not ready, still serving", "for", cfg.DrainTime.String())
		time.Sleep(cfg.DrainTime)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	herr := srv.Shutdown(shutdownCtx)
	dash.Close()
	_ = hub.Close()
	if !served {
		<-serveErr
	}
	// The cluster's stop has a budget of its own, which requests that were
	// slow to finish cannot eat into: the flush takes at most the send
	// timeout and the leave the drop time (see Cluster.Close).
	closeCtx, cancelClose := context.WithTimeout(context.Background(), clusterCloseBudget(cfg))
	defer cancelClose()
	cerr := cluster.Close(closeCtx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err = errors.Join(err, herr, cerr); err == nil {
		logger.Info("stopped")
	}
	return err
}

// newLogger is the node's logger: every line carries route=.
func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		// Durations as the text format writes them ("1.5s"), not as
		// nanoseconds, wherever a component logs one.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				a.Value = slog.StringValue(a.Value.Duration().String())
			}
			return a
		}
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(newRouteHandler(h, cfg.Route))
}

// routeHandler adds route= to every record, first, unless a logger derived
// from it adds route itself, as the components do with
// logger.With("component", ..., "route", route): the key is then written
// once.
type routeHandler struct {
	plain  slog.Handler // without the route
	routed slog.Handler // plain with the route first
	group  bool         // a group is open: a "route" from now on is the group's
}

func newRouteHandler(h slog.Handler, route string) *routeHandler {
	return &routeHandler{plain: h, routed: h.WithAttrs([]slog.Attr{slog.String("route", route)})}
}

func (h *routeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.routed.Enabled(ctx, l)
}

func (h *routeHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.routed.Handle(ctx, r)
}

func (h *routeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if !h.group && slices.ContainsFunc(as, func(a slog.Attr) bool { return a.Key == "route" }) {
		return h.plain.WithAttrs(as) // carries its own route
	}
	return &routeHandler{plain: h.plain.WithAttrs(as), routed: h.routed.WithAttrs(as), group: h.group}
}

func (h *routeHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &routeHandler{plain: h.plain.WithGroup(name), routed: h.routed.WithGroup(name), group: true}
}

// listenHTTP opens the HTTP listener; tests replace it.
var listenHTTP = net.Listen

// portRetry is how long a start retries a port that is still in use.
const portRetry = 15 * time.Second

// startCluster starts the node's cluster. A port still held, as when the
// previous process of a restarted node has closed its HTTP port but not
// yet left the cluster, is retried for up to retryFor; the wait is logged
// once, and the final error names the flag of the port. The end of ctx
// ends the wait, and startCluster returns ctx's error.
func startCluster(ctx context.Context, cfg *config, logger *slog.Logger, retryFor time.Duration) (*manager.Cluster, error) {
	deadline := time.Now().Add(retryFor)
	warned := false
	for {
		c, err := manager.StartClusterContext(ctx, cfg.clusterConfig(logger))
		if rc := (*membership.RouteConflictError)(nil); errors.As(err, &rc) {
			return nil, fmt.Errorf("%s %q: %w: give every node a route of its own", cfg.source["route"], cfg.Route, err)
		}
		if me := (*membership.MulticastError)(nil); errors.As(err, &me) {
			// A failed group join is a listen error too: checked first, so
			// that it does not read as the -bind address's fault.
			return nil, fmt.Errorf("%s %s: %w", cfg.source["multicast"], me.Group, err)
		}
		if err != nil && !addrInUse(err) && listenFailed(err) {
			name, addr := takenFlag(cfg, err)
			return nil, newListenError(cfg, name, addr, err)
		}
		if err == nil || !addrInUse(err) {
			return c, err
		}
		name, addr := takenFlag(cfg, err)
		if time.Now().After(deadline) {
			return nil, &portInUseError{Source: cfg.source[name], Addr: addr, After: retryFor, Err: err}
		}
		if !warned {
			logger.Warn("a port is still in use; retrying", "flag", "-"+name, "source", cfg.source[name], "addr", addr, "for", retryFor.String(), "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			// Told to stop while waiting: a stop, not a failed start.
			logger.Info("shutting down before start: no longer waiting for the port", "flag", "-"+name, "addr", addr)
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// portInUseError is a port that another process holds. Its message names
// the address once; the listener's own error, which repeats it, is only
// wrapped.
type portInUseError struct {
	Source string        // the flag, or where the address came from
	Addr   string        // IP:port
	After  time.Duration // how long the start retried; 0 if it was stopped first
	Err    error
}

func (e *portInUseError) Error() string {
	msg := e.Source + ": " + e.Addr + " is in use by another process"
	if e.After > 0 {
		msg += ", still after " + e.After.String()
	}
	return msg + "; stop that process (ss -tulpn names it) or choose another port"
}

func (e *portInUseError) Unwrap() error { return e.Err }

// listenError is a listener that cannot open for a reason other than a
// port in use, such as an address that is not one of this host's. Its
// message names the flag the address came from and what to set it to.
type listenError struct {
	Source string // the flag, or where the address came from
	Addr   string // what the listener was to open; may say where it came from
	Cause  string
	Fix    string // "" when there is nothing better than the cause
	Err    error
}

func (e *listenError) Error() string {
	msg := e.Source + ": cannot listen on " + e.Addr + ": " + e.Cause
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	return msg
}

func (e *listenError) Unwrap() error { return e.Err }

// newListenError explains err, the failure of the listener of flag name
// (http, bind or replication) on addr.
func newListenError(cfg *config, name, addr string, err error) error {
	if addrInUse(err) {
		return &portInUseError{Source: cfg.source[name], Addr: addr, Err: err}
	}
	e := &listenError{Source: cfg.source[name], Addr: addr, Err: err}
	host, p, _ := net.SplitHostPort(addr)
	reach := " that the other nodes can reach"
	if name == "http" {
		reach = ", or 0.0.0.0:" + p + " for all of them"
	}
	var dns *net.DNSError
	switch {
	case hasErrno(err, syscall.EADDRNOTAVAIL):
		e.Cause = host + " is not an IP address of this host"
		e.Fix = "set it to an IP address of one of this host's interfaces (ip addr lists them)" + reach
		if name == "replication" && cfg.replDerived {
			// The IP is -bind's: that is the setting to change.
			e.Source, e.Addr = cfg.source["bind"], addr+", the replication address derived from it"
		}
	case hasErrno(err, syscall.EACCES):
		e.Cause = "permission denied"
		if n, _ := strconv.Atoi(p); n > 0 && n < 1024 {
			e.Cause = "permission denied: a port below 1024 needs root or CAP_NET_BIND_SERVICE"
			e.Fix = "set it to a port of 1024 or more"
		}
	case errors.As(err, &dns):
		e.Cause = fmt.Sprintf("host %q not found", dns.Name)
		if !dns.IsNotFound {
			e.Cause = fmt.Sprintf("host %q could not be looked up: %s", dns.Name, dns.Err)
		}
		e.Fix = "set it to an IP address of this host" + reach
	default:
		e.Cause = innermost(err)
	}
	return e
}

// listenFailed reports whether err from StartCluster is a listener's: the
// replication channel's, which wraps its *net.OpError, or the gossip
// listener's, which memberlist formats with %v.
func listenFailed(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "listen" {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "failed to start TCP listener") || strings.Contains(msg, "failed to start UDP listener")
}

// hasErrno reports whether err is, or for memberlist's errors says, errno.
func hasErrno(err error, errno syscall.Errno) bool {
	return errors.Is(err, errno) || strings.HasSuffix(err.Error(), errno.Error())
}

// innermost is the system's own words for err, such as "permission
// denied", without the addresses its wrappers repeat.
func innermost(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		return msg[i+2:]
	}
	return msg
}

// addrInUse reports whether err is a listener's "address already in use".
// memberlist formats its listener errors with %v, so for the gossip port
// only the text is left to go by.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// takenFlag names the flag, and its address, of the port that err reports
// in use. The replication channel wraps its *net.OpError, which gives the
// address; the gossip listener's error, from memberlist, does not, so any
// other is -bind's.
func takenFlag(cfg *config, err error) (name, addr string) {
	var oe *net.OpError
	if cfg.Manager != "standard" && errors.As(err, &oe) && oe.Addr != nil && port(oe.Addr.String()) == port(cfg.Replication) {
		return "replication", cfg.Replication
	}
	return "bind", cfg.Bind
}

// moduleVersion is the main module's version as the build recorded it: a
// tag, a pseudo-version for a build from a checkout, or "(devel)".
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// versionLine is the output of -version: the module version, the commit
// when the build recorded it, the Go version and the platform.
func versionLine() string {
	line := "cohort-node " + moduleVersion()
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			line += " commit " + rev
			if modified == "true" {
				line += " (modified)"
			}
		}
	}
	return line + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// clusterCloseBudget bounds a graceful cluster stop: the flush, the
// leave, and a margin for handing primaries over and saving sessions.
func clusterCloseBudget(cfg *config) time.Duration {
	return cfg.SendTimeout + cfg.DropTime + 2*time.Second
}

// status is the body of GET /cluster/status.
type status struct {
	Route       string           `json:"route"`
	Manager     string           `json:"manager"`
	Ready       bool             `json:"ready"`
	Members     []memberStatus   `json:"members"`
	Sessions    sessionCounts    `json:"sessions"`
	Join        joinStatus       `json:"join"`
	Replication replicationStats `json:"replication"`
	Peers       []peerStatus     `json:"peers,omitempty"` // the replication channel's peers
}

type memberStatus struct {
	Route       string           `json:"route"`
	Address     string           `json:"address"`
	State       membership.State `json:"state"`
	Replication string           `json:"replication,omitempty"`
	HTTP        string           `json:"http,omitempty"`
	Local       bool             `json:"local,omitempty"`
}

type sessionCounts struct {
	Total   int `json:"total"`
	Primary int `json:"primary"`
	Backup  int `json:"backup"`
}

// joinStatus is how the node's joins went: the failed attempts, the last
// one's error with its likely cause, and each seed (-join).
type joinStatus struct {
	Errors      int64        `json:"errors"`
	LastError   string       `json:"last_error,omitempty"`
	LastErrorAt time.Time    `json:"last_error_at,omitzero"`
	Seeds       []seedStatus `json:"seeds"`
}

type seedStatus struct {
	Seed      string    `json:"seed"`
	Failures  int       `json:"failures"` // consecutive; 0 once it answers
	LastError string    `json:"last_error,omitempty"`
	LastOK    time.Time `json:"last_ok,omitzero"`
	Refused   bool      `json:"refused"` // it answered but refused this node: another -key or -domain
}

func newJoinStatus(ms membership.Stats) joinStatus {
	js := joinStatus{Errors: ms.JoinErrors, LastError: ms.LastJoinError, LastErrorAt: ms.LastJoinErrorAt, Seeds: []seedStatus{}}
	for _, s := range ms.Seeds {
		js.Seeds = append(js.Seeds, seedStatus{Seed: s.Seed, Failures: s.Failures, LastError: s.LastError, LastOK: s.LastOK, Refused: s.Refused})
	}
	return js
}

func newMux(cfg *config, cluster *manager.Cluster, sessions *web.Sessions, dash *web.Dashboard, hub *web.Hub) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /counter", sessions.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if r.Method == http.MethodHead {
			// A HEAD (a monitor's probe) changes nothing: it neither
			// counts nor makes a session, and answers with the headers
			// the next GET would get.
			var n int64
			id := ""
			if s := web.Existing(r); s != nil {
				n, _ = s.GetInt("count")
				id = s.ID()
			}
			fmt.Fprintf(w, "count=%d node=%s id=%s\n", n+1, cfg.Route, id)
			return
		}
		s, err := web.Get(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		n, _ := s.GetInt("count")
		if err := s.Set("count", n+1); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "count=%d node=%s id=%s\n", n+1, cfg.Route, s.ID())
	})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", web.NewMetrics(cluster, sessions).WithHub(hub).Handler())
	// WebSockets: GET /ws?user=U; POST /push/U and POST /publish/TOPIC
	// answer {"reached": N}, the sockets reached cluster-wide.
	mux.Handle("GET /ws", sessions.Middleware(hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") })))
	mux.Handle("POST /push/{user}", hub.PushHandler())
	mux.Handle("POST /publish/{topic}", hub.PublishHandler())
	mux.Handle("GET /cluster/{$}", dash)
	mux.Handle("GET /cluster/ws", dash)
	mux.HandleFunc("GET /cluster/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		s := cluster.Lookup(r.PathValue("id"))
		if s == nil {
			http.Error(w, "no such session on this node", http.StatusNotFound)
			return
		}
		rev := s.Rev()
		writeJSON(w, sessionView{ID: s.ID(), Version: rev.N, Node: rev.Node, Attributes: s.Names()})
	})
	mux.HandleFunc("GET /cluster/status", func(w http.ResponseWriter, r *http.Request) {
		st := status{Route: cfg.Route, Manager: cfg.Manager, Ready: cluster.Ready(), Members: []memberStatus{}}
		st.Sessions.Total, st.Sessions.Primary, st.Sessions.Backup = cluster.SessionCounts()
		for _, m := range cluster.Membership().Members() {
			st.Members = append(st.Members, memberStatus{
				Route: m.Name, Address: m.Addr, State: m.State,
				Replication: m.Meta.ReplicationAddr, HTTP: m.Meta.HTTPAddr, Local: m.Name == cfg.Route,
			})
		}
		st.Join = newJoinStatus(cluster.Membership().Stats())
		rs := cluster.Stats()
		st.Replication = replicationStats{
			Replicated: rs.Replicated, Received: rs.Received, Conflicts: rs.Conflicts, Resyncs: rs.Resyncs,
			SendErrors: rs.SendErrors, Transfers: rs.Transfers, TransferFailures: rs.TransferFailures,
			UnderReplicated: rs.UnderReplicated, BackupCopies: rs.BackupCopies,
		}
		if ch := cluster.Channel(); ch != nil {
			for _, p := range ch.Stats().Peers {
				st.Peers = append(st.Peers, peerStatus{
					Route: p.Route, Address: p.Addr, Connected: p.Connected, Stalled: p.Stalled, QueueDepth: p.QueueDepth,
					NeedsResync: p.NeedsResync, FramesSent: p.FramesSent, FramesReceived: p.FramesReceived,
				})
			}
		}
		writeJSON(w, st)
	})
	return mux
}

// peerStatus is one replication peer in the status.
type peerStatus struct {
	Route          string `json:"route"`
	Address        string `json:"address"`
	Connected      bool   `json:"connected"`
	Stalled        bool   `json:"stalled"` // did not answer a send in time, nor since: not waited for
	QueueDepth     int    `json:"queue_depth"`
	NeedsResync    bool   `json:"needs_resync"`
	FramesSent     int64  `json:"frames_sent"`
	FramesReceived int64  `json:"frames_received"`
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// sessionView is the body of GET /cluster/sessions/{id}: what a node holds
// of a session, attribute names but not values.
type sessionView struct {
	ID         string   `json:"id"`
	Version    uint64   `json:"version"`
	Node       string   `json:"node"` // the node that made the revision
	Attributes []string `json:"attributes"`
}

// replicationStats are the manager's replication counters in the status.
type replicationStats struct {
	Replicated       int64 `json:"replicated"`
	Received         int64 `json:"received"`
	Conflicts        int64 `json:"conflicts"`
	Resyncs          int64 `json:"resyncs"`
	SendErrors       int64 `json:"send_errors"`
	Transfers        int64 `json:"transfers"`
	TransferFailures int64 `json:"transfer_failures"`
	UnderReplicated  int64 `json:"under_replicated"`
	BackupCopies     int   `json:"backup_copies,omitempty"` // backup manager: copies each session gets now
}
