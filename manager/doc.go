// Package manager holds Cohort's sessions: the session model, change
// tracking, expiry and listeners, and the managers that decide where a
// session's copies live.
//
// # Overview
//
// A [Session] has an id <base>.<route> (192 random bits, URL-safe base64),
// creation and last-access times, a max inactive interval, a principal,
// attributes, a version and a new flag. [Manager] is the interface every
// kind offers the web layer:
//
//   - [Standard] keeps sessions on one node and saves them to a file across
//     restarts, as Tomcat's StandardManager does.
//   - [Delta] replicates every committed change to every peer; a joining
//     node first fetches every session (state transfer).
//   - [Backup] keeps each session on its primary plus a fixed number of
//     backups placed by rendezvous hashing; a node asked for a session it
//     lacks fetches it from its holders and becomes its primary.
//
// [StartCluster] runs a node: membership, the replication channel and the
// manager, wired together (peers follow the live members, a joining node
// fetches its sessions before it is ready, new members are caught up,
// partitioned nodes exchange sessions when they meet again, and Close
// drains, flushes, hands off and leaves). It is what cmd/node runs.
//
// Delta and Backup send through a [Transport] (the replication channel)
// and receive through their Receive method.
//
// # Semantics
//
// Attribute values must be replicable: [Session.Set] encodes them at once,
// with msgpack, under the name their type is registered with in a [Types]
// registry (the built-in types are registered already), and refuses any
// other value with a *[NotDistributableError]. On another node the value
// decodes as the same Go type. Attribute names matching Config.LocalOnly
// stay on their node and may hold anything. [Session.SetCopies] stores and
// removes several attributes as one change, all or nothing.
//
// Changes are tracked as a [Change]: the last operation per attribute, the
// principal and max inactive interval when they changed, made on top of a
// revision ([Rev]: version number, commit time and committing node). A
// replica applies a change only on top of the exact revision it was made
// from. Otherwise it compares revisions: if the change's is greater, the
// replica was behind (a message was lost) or held a concurrent change that
// loses, and it fetches the sender's full copy; if the replica's is
// greater, the change lost a conflict and is dropped. The order (version,
// then commit time, then route) is total, so every node keeps the same
// winner; discarded concurrent changes are logged and counted. Replicas
// never silently diverge. [Session.MarkDirty] replicates a value changed
// in place. Committing a request that only read the session replicates
// nothing; its access time travels in a batch with the next sweep.
//
// Every peer message is checked before msgpack decodes it (internal/mpguard:
// no container claiming more elements than bytes remain, no nesting deeper
// than 64). A Change, sent on every write, and a Full, which carries a
// session's attribute map, are read straight from the bytes by decoders of
// their own, which bound what they allocate by the input's length and skip
// unknown fields through the same check. A malformed message is counted,
// logged and refused, and the node keeps serving.
//
// Expiry: every node sweeps its sessions every SweepInterval, after
// sending its batched access times, so a session expires on every node
// within one sweep interval of the others. An expiry is replicated with the
// last access the expiring node knew; a node that saw a later access keeps
// the session and re-sends that access. A copy whose last access is a
// peer's report (with Backup, a copy of another node's session) expires
// only two sweep intervals past its deadline, by when that peer's batch has
// come in: the node that served the last access, or the Backup primary,
// expires it on time and tells the others.
//
// Listeners ([Listener]) hear of sessions created and destroyed (expired
// or invalidated), attributes added, replaced and removed, and id changes.
// A listener that panics is logged and skipped. One registered with
// Listen ([Listenable]) can be removed.
//
// # Concurrency
//
// Managers and sessions are safe for concurrent use. Lock order: a
// manager's session table, then a session.
//
// # Usage
//
//	cfg := manager.DefaultConfig()
//	cfg.Route = "node1"
//	cfg.Types = manager.NewTypes()
//	cfg.Types.MustRegister("shop.Cart", Cart{})
//	m, err := manager.NewStandard(cfg)
package manager
