package main

import (
	"context"
	"io"
	"testing"

	"github.com/cohort-cluster/cohort/examples/internal/shoptest"
)

// example is this shop as examples/internal/shoptest drives it: real nodes
// on 127.0.0.1 started through the same flags as main.
var example = shoptest.Example{
	Start: func(ctx context.Context, args []string, stderr io.Writer) (shoptest.Node, error) {
		n, err := start(ctx, args, stderr)
		if err != nil {
			return shoptest.Node{}, err
		}
		return shoptest.Node{HTTP: n.ln.Addr().String(), Gossip: n.cluster.Membership().Addr().String(), Close: n.Close}, nil
	},
	Run: run,
	// the session cookie, which gorilla names after the session:
	// store.Get(r, "cart"). Reading the cart on another node rebinds it:
	// main serves the shop through store.Middleware.
	Cookie:       "cart",
	RebindOnRead: true,
}

func TestCartAcrossNodes(t *testing.T)         { shoptest.CartAcrossNodes(t, example) }
func TestRunStoppedWhileStarting(t *testing.T) { shoptest.RunStoppedWhileStarting(t, example) }
func TestBadFlags(t *testing.T)                { shoptest.BadFlags(t, example) }
