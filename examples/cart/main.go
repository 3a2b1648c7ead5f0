// Command cart is a small shop whose cart is a gorilla/sessions session
// kept in a Cohort cluster. The handlers (shop.go) are written for
// gorilla/sessions and import nothing from Cohort; this file is the whole
// of the wiring: it starts the cluster node, makes the store with
// web.NewStore where a cookie-store app calls sessions.NewCookieStore,
// serves the shop through the store's Middleware, and leaves the cluster
// on SIGTERM. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cart:", err)
		os.Exit(1)
	}
}

// run starts a shop node from the command line's flags and serves until
// ctx is cancelled, then leaves the cluster.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	n, err := start(ctx, args, stderr)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, context.Canceled) {
		return nil // -h, or stopped before it was serving
	}
	if err != nil {
		return err
	}
	<-ctx.Done()
	return n.Close()
}

// node is one running shop: a member of the cluster and its HTTP server.
type node struct {
	cluster *manager.Cluster
	ln      net.Listener
	srv     *http.Server
	served  chan struct{} // closed when srv.Serve has returned
}

// start joins the cluster and serves the shop once this node holds the
// cluster's sessions, so that it never shows a returning shopper an empty
// cart. It returns when the shop is serving.
func start(ctx context.Context, args []string, stderr io.Writer) (*node, error) {
	fs := flag.NewFlagSet("cart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	route := fs.String("route", "node1", "this node's name, the suffix of the session ids it issues")
	httpAddr := fs.String("http", "127.0.0.1:8080", "the shop's HTTP address")
	bind := fs.String("bind", "127.0.0.1:7946", "gossip address; replication listens on its port + 1000")
	join := fs.String("join", "", "comma-separated gossip addresses of other nodes")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("node", *route)
	cc := manager.DefaultClusterConfig()
	cc.Membership.Route, cc.Membership.Domain, cc.Membership.Logger = *route, "shop", log
	cc.Membership.BindAddr, cc.Membership.Join = *bind, strings.Fields(strings.ReplaceAll(*join, ",", " "))
	cc.Membership.MulticastAddr, cc.Replication.Addr = "", "" // -join seeds only; replication on the gossip port + 1000
	cc.Manager.Types = manager.NewTypes()
	cc.Manager.Types.MustRegister("shop.Cart", Cart{}) // what gob.Register(Cart{}) is to a cookie store
	cluster, err := manager.StartCluster(cc)
	if err != nil {
		return nil, err
	}
	n := &node{cluster: cluster, served: make(chan struct{})}
	store, err := web.NewStore(cluster.Manager(), web.Config{Route: *route, Logger: log})
	for err == nil && !cluster.Ready() { // fetching the sessions from a peer
		time.Sleep(20 * time.Millisecond)
		err = ctx.Err()
	}
	if err == nil {
		n.ln, err = net.Listen("tcp", *httpAddr)
	}
	if err != nil {
		return nil, errors.Join(err, cluster.Close(context.Background()))
	}
	// store.Middleware sends the rebound cookie of a user failed over to
	// this node even from a page that only reads the cart.
	n.srv = &http.Server{Handler: store.Middleware(newShop(store, *route)), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(n.served)
		_ = n.srv.Serve(n.ln) // http.ErrServerClosed once Close runs
	}()
	log.Info("shop serving", "url", "http://"+n.ln.Addr().String())
	return n, nil
}

// Close stops taking requests, lets those under way finish, and leaves the
// cluster; the other nodes keep every cart.
func (n *node) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.srv.Shutdown(ctx)
	<-n.served
	return errors.Join(err, n.cluster.Close(ctx))
}
