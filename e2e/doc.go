// Package e2e tests Cohort as operators run it: it builds bin/cohort-node,
// starts real processes on loopback ports, kills them with SIGKILL, and
// checks what the survivors report over HTTP.
package e2e
