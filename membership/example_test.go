package membership_test

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cohort-cluster/cohort/membership"
)

// Two nodes on loopback: the second joins the first through a seed, and the
// first sees it join and then leave.
func ExampleNode_Subscribe() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c1 := membership.DefaultLocalConfig()
	c1.Route, c1.Logger = "node1", quiet
	n1, err := membership.New(c1)
	if err != nil {
		panic(err)
	}
	defer n1.Close()
	events := n1.Subscribe()
	defer events.Close()

	c2 := membership.DefaultLocalConfig()
	c2.Route, c2.Logger = "node2", quiet
	c2.Join = []string{n1.Addr().String()}
	n2, err := membership.New(c2)
	if err != nil {
		panic(err)
	}
	ev := <-events.C
	fmt.Println(ev.Type, ev.Member.Name)

	// Leave once node2 knows node1 too: the leave is announced to the
	// members a node knows.
	seen := n2.Subscribe()
	<-seen.C
	seen.Close()
	_ = n2.Leave(5 * time.Second)
	for ev = range events.C {
		if ev.Type != membership.EventUpdate { // the leaving flag comes first
			break
		}
	}
	fmt.Println(ev.Type, ev.Member.Name, ev.Member.State)
	// Output:
	// join node2
	// leave node2 left
}
