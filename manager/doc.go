// Package manager holds Cohort's sessions: the session model, change
// tracking, expiry and listeners, and the managers that decide where a
// session's copies live.
//
// # Overview
//
// A [Session] has an id <base>.<route> (192 random bits, URL-safe base64),
// creation and last-access times, a max inactive interval, a principal,
// attributes, a version and a new flag. [Manager] is the interface every
// kind offers the web layer; [Standard] keeps sessions on one node and
// saves them to a file across restarts, as Tomcat's StandardManager does.
//
// # Semantics
//
// Attribute values must be replicable: [Session.Set] encodes them at once,
// with msgpack, under the name their type is registered with in a [Types]
// registry (the built-in types are registered already), and refuses any
// other value with a *[NotDistributableError]. On another node the value
// decodes as the same Go type. Attribute names matching Config.LocalOnly
// stay on their node and may hold anything.
//
// Changes are tracked as a [Change]: the last operation per attribute, the
// principal and max inactive interval when they changed, made on top of a
// version. A replica applies a delta only on top of the version it was
// made from, so replicas never silently diverge. [Session.MarkDirty]
// replicates a value changed in place. Committing a request that only read
// the session replicates nothing.
//
// Listeners ([Listener]) hear of sessions created and destroyed (expired
// or invalidated), attributes added, replaced and removed, and id changes.
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
