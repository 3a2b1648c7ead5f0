// Command cohort-node runs one node of a Cohort cluster with the demo app.
// See the README for its flags and endpoints.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// A log pipe whose reader died (a log shipper, the prefixer of a
	// script) must not kill the node before it has left the cluster.
	signal.Ignore(syscall.SIGPIPE)
	// SIGHUP (the terminal went away) stops the node as SIGTERM does.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.As(err, new(loggedError)) {
			fmt.Fprintln(os.Stderr, "cohort-node:", err)
		}
		os.Exit(2)
	}
}
