// Package cohort is the root of Cohort, an in-process session replication
// cluster for Go web applications: sessions live in the application's own
// memory and are replicated among its nodes, so a user keeps their session
// when the node serving them dies. No Redis, no database.
//
// The code is in the packages below, each importing only those under it:
//
//   - [github.com/cohort-cluster/cohort/web]: HTTP middleware, route binder,
//     gorilla/sessions Store, WebSocket hub
//   - [github.com/cohort-cluster/cohort/manager]: sessions and the Standard,
//     Delta and Backup managers
//   - [github.com/cohort-cluster/cohort/replication]: the channel between
//     nodes
//   - [github.com/cohort-cluster/cohort/membership]: who is in the cluster
//
// cmd/node is the ready-to-run node; see README.md and docs/.
package cohort
