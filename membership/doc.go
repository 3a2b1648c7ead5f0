// Package membership tells each Cohort node who else is in the cluster and
// whether they are alive.
//
// # Overview
//
// A [Node] wraps hashicorp/memberlist (SWIM gossip with Lifeguard) and adds
// what a session cluster needs on top of it:
//
//   - Discovery by any mix of multicast beacons (UDP group, default
//     228.0.0.4:45564, HMAC-authenticated with the cluster key), static
//     seeds, and DNS names that resolve to several addresses (a Kubernetes
//     headless Service). Seeds are re-resolved until the node has joined and
//     after members fail, so partitions heal.
//   - Metadata: every node advertises its route, replication address,
//     HTTP address, domain, manager kind, protocol version and start time
//     ([Meta]).
//   - Events: [Node.Subscribe] delivers Join, Leave, Fail and Update events
//     in order without ever blocking memberlist.
//   - Two operator knobs, Frequency and DropTime, mapped onto memberlist's
//     probe, suspicion and gossip settings (docs/tuning.md).
//
// # Semantics
//
// A member's name is its route, so a node that restarts with the same route
// takes its identity back, even on a new address. A route belongs to one
// live node: [New] fails with a [RouteConflictError] when a node that
// answers at another address already uses it, and the node that has it
// logs the conflict. A claim nobody answers is the restarting node's own
// previous incarnation, whose route is taken back once its peers declare
// it dead. Nodes pair only when
// their domains, protocol versions and manager kinds agree; the domain is
// also memberlist's packet label, so two clusters on one network never
// merge. With a cluster key, gossip is encrypted with AES-GCM (memberlist
// SecretKey) and beacons carry an HMAC-SHA256 under a key derived from it.
//
// A node stopped with [Node.Close] looks killed to its peers: they report it
// failed (EventFail) about DropTime later. [Node.Leave] announces the
// departure first: peers report EventLeave at once. From the start of Leave
// the node sends no beacons and joins no one, and peers do not join it
// again from its last beacons. A leave no peer confirms in time, as when
// every node stops at once, is logged, not returned.
//
// # Concurrency
//
// All methods of Node are safe for concurrent use. Each Subscription has its
// own unbounded queue and goroutine; a slow subscriber delays only itself.
// Lock order: memberlist's node lock, then Node.mu (memberlist calls the
// delegates with its lock held, and they take Node.mu briefly).
//
// # Failure handling
//
// Malformed, foreign or unauthenticated beacons are counted ([Stats]) and
// ignored. With multicast on, a host that cannot join the beacon group
// (no multicast route) fails New with a [MulticastError] naming
// MulticastAddr. Members whose metadata is unreadable or whose domain, protocol or
// manager kind differ are refused, counted and logged once per peer; their
// beacons are not joined. A beacon that cannot be sent (no multicast route)
// is logged once and retried; seeds keep working. A seed that does not
// answer or resolve is logged as a warning, named with its error, at its
// first failure and then at most once a minute while it keeps failing; its
// recovery is logged once. memberlist's own lines are forwarded to the
// Logger; one repeated within a minute is dropped, and the next copy
// logged says how many were.
//
// # Usage
//
//	cfg := membership.DefaultConfig()
//	cfg.Route = "node1"
//	cfg.Join = []string{"10.0.0.2:7946"}
//	n, err := membership.New(cfg)
//	if err != nil {
//		return err
//	}
//	defer n.Leave(5 * time.Second)
//	sub := n.Subscribe()
//	for ev := range sub.C {
//		log.Println(ev.Type, ev.Member.Name, ev.Member.Meta.ReplicationAddr)
//	}
package membership
