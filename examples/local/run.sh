#!/usr/bin/env bash
# Starts a local 3-node Cohort cluster: routes node1..node3, HTTP on
# 127.0.0.1:8081-8083, gossip on 7946-7948, replication on 8946-8948.
# The nodes find each other through seeds, so multicast is not needed.
# Each log line is prefixed with its node. Ctrl-C stops all three.
set -euo pipefail

bin=${1:-bin/cohort-node}
shift || true
pids=()

stop() {
	trap - INT TERM EXIT
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap stop INT TERM EXIT

seeds=127.0.0.1:7946,127.0.0.1:7947,127.0.0.1:7948
# Extra arguments go to every node, e.g. `-manager backup`; COHORT_*
# variables work too.
for i in 1 2 3; do
	"$bin" -route "node$i" -http "127.0.0.1:808$i" -bind "127.0.0.1:794$((i + 5))" \
		-join "$seeds" "$@" > >(sed -u "s/^/[node$i] /") 2>&1 &
	pids+=($!) # the node itself, not its log filter
done
echo "cluster up: http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083 (Ctrl-C stops it)"
wait
