// Package web is Cohort's HTTP side: the session middleware, the route
// binder, the gorilla/sessions Store and the cluster WebSocket hub.
//
// # Overview
//
// Applications embed Cohort through this package. The middleware finds the
// request's session in a [github.com/cohort-cluster/cohort/manager] manager,
// puts it in the request context, and commits the session's changes when the
// handler returns, which is what triggers replication.
//
// The package is the top of the import graph: web imports manager, manager
// imports replication, replication imports membership, never the reverse.
package web
