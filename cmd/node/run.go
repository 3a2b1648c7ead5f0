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
	"strings"
	"syscall"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/web"
)

// run starts a node and serves until ctx is cancelled, then shuts down
// gracefully: it stops taking requests, leaves the cluster and returns.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	logger.Info("starting", "config", cfg)

	// Try the port first: a taken one fails the start before the node
	// joins.
	probe, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return fmt.Errorf("listen on -http %s: %w", cfg.HTTP, err)
	}
	_ = probe.Close()
	cluster, err := startCluster(ctx, cfg, logger)
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
			_ = hub.Close()
			return cluster.Close(context.Background())
		case <-time.After(20 * time.Millisecond):
		}
	}
	ln, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		_ = hub.Close()
		_ = cluster.Close(context.Background())
		return fmt.Errorf("listen on -http %s: %w", cfg.HTTP, err)
	}
	dash := web.NewDashboard(cluster, sessions, logger)
	srv := &http.Server{
		Handler:           newMux(cfg, cluster, sessions, dash, hub),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("serving", "http", ln.Addr().String())

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err = <-serveErr:
		logger.Error("http server stopped", "err", err)
	}
	// Not ready first, then keep serving for the drain time, so balancers
	// that probe /readyz stop sending requests before the listener closes.
	cluster.Drain()
	if cfg.DrainTime > 0 && err == nil {
		logger.Info("draining: not ready, still serving", "for", cfg.DrainTime)
		time.Sleep(cfg.DrainTime)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	herr := srv.Shutdown(shutdownCtx)
	dash.Close()
	_ = hub.Close()
	<-serveErr
	cerr := cluster.Close(shutdownCtx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, herr, cerr)
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h)
}

// startCluster starts the node's cluster. A port still held, as when the
// previous process of a restarted node has closed its HTTP port but not
// yet left the cluster, is retried for up to 15 s.
func startCluster(ctx context.Context, cfg *config, logger *slog.Logger) (*manager.Cluster, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := manager.StartCluster(cfg.clusterConfig(logger))
		if err == nil || !addrInUse(err) || time.Now().After(deadline) {
			return c, err
		}
		logger.Warn("a port is still in use; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// status is the body of GET /cluster/status.
type status struct {
	Route       string           `json:"route"`
	Manager     string           `json:"manager"`
	Ready       bool             `json:"ready"`
	Members     []memberStatus   `json:"members"`
	Sessions    sessionCounts    `json:"sessions"`
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

func newMux(cfg *config, cluster *manager.Cluster, sessions *web.Sessions, dash *web.Dashboard, hub *web.Hub) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /counter", sessions.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
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
		rs := cluster.Stats()
		st.Replication = replicationStats{
			Replicated: rs.Replicated, Received: rs.Received, Conflicts: rs.Conflicts, Resyncs: rs.Resyncs,
			SendErrors: rs.SendErrors, Transfers: rs.Transfers, TransferFailures: rs.TransferFailures,
			UnderReplicated: rs.UnderReplicated,
		}
		if ch := cluster.Channel(); ch != nil {
			for _, p := range ch.Stats().Peers {
				st.Peers = append(st.Peers, peerStatus{
					Route: p.Route, Address: p.Addr, Connected: p.Connected, QueueDepth: p.QueueDepth,
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
}
