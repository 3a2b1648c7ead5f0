// Package manager holds Cohort's sessions: the session model, delta tracking,
// expiry and listeners, and the managers that decide where a session's copies
// live.
//
// # Overview
//
// Three managers share one session model:
//
//   - Standard keeps sessions on one node and persists them across restarts.
//   - Delta replicates every committed change to every member.
//   - Backup keeps each session on its primary plus a fixed number of backups,
//     chosen by rendezvous hashing over the live members.
//
// The package sits above [github.com/cohort-cluster/cohort/replication] and
// below [github.com/cohort-cluster/cohort/web]; it never imports the web layer.
package manager
