#!/usr/bin/env bash
# Starts a local 3-node Cohort cluster: routes node1..node3, HTTP on
# 127.0.0.1:8081-8083, gossip on 7946-7948, replication on 8946-8948.
# The nodes find each other through seeds, so multicast is off. Each log
# line is prefixed with its node. "cluster up" is printed once every node
# answers 200 on /readyz. Ctrl-C stops all three gracefully (each leaves
# the cluster) and waits for them; a second Ctrl-C stops them at once.
#
# Usage: run.sh [BINARY [FLAGS...]]. The flags go to every node, e.g.
# `-manager backup`; COHORT_* variables work too. PORT_OFFSET=N moves
# every port up by N.
set -euo pipefail

bin=${1:-bin/cohort-node}
shift || true
offset=${PORT_OFFSET:-0}
pids=()      # the nodes
prefixers=() # their log filters
logs=$(mktemp -d)

signal_nodes() {
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}

# wait_for PID...: until each has exited (wait returns early on a trapped
# signal).
wait_for() {
	for pid in "$@"; do
		while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null || true; done
	done
}

stop() {
	trap - EXIT
	# A second Ctrl-C or TERM from now on is the nodes' second signal:
	# they stop without leaving.
	trap signal_nodes INT TERM
	signal_nodes
	wait_for "${pids[@]}"
	wait_for "${prefixers[@]}" # their last lines are printed
	rm -rf "$logs"
}
trap 'stop; trap - INT; kill -INT $$' INT # die of SIGINT, as the caller expects
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP # the terminal went away: stop as for Ctrl-C
trap stop EXIT

# ready PORT: the node on 127.0.0.1:PORT answers 200 on /readyz.
ready() {
	local status=
	{
		printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
			IFS= read -r -t 2 status <&3
	} 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	[[ $status == "HTTP/1."?" 200"* ]]
}

# Another process on a node's HTTP port (the nodes of an earlier run left
# behind) would answer for it below.
for i in 1 2 3; do
	if { : >"/dev/tcp/127.0.0.1/$((8080 + i + offset))"; } 2>/dev/null; then
		echo "run.sh: 127.0.0.1:$((8080 + i + offset)) is already in use (an earlier run still going?); not starting" >&2
		exit 1
	fi
done

seeds=127.0.0.1:$((7946 + offset)),127.0.0.1:$((7947 + offset)),127.0.0.1:$((7948 + offset))
for i in 1 2 3; do
	mkfifo "$logs/node$i"
	# The prefixer ignores INT, TERM and HUP, and ends when its node closes the
	# pipe, so it prints the node's last lines (the leave).
	(
		trap '' INT TERM HUP
		exec sed -u "s/^/[node$i] /" <"$logs/node$i"
	) &
	prefixers+=($!)
	# The node in a process group of its own (set -m): Ctrl-C reaches only
	# this script, which signals each node once.
	set -m
	"$bin" -route "node$i" -http "127.0.0.1:$((8080 + i + offset))" -bind "127.0.0.1:$((7945 + i + offset))" \
		-join "$seeds" -multicast off "$@" >"$logs/node$i" 2>&1 &
	set +m
	pids+=($!)
done

for i in 1 2 3; do
	until ready $((8080 + i + offset)); do
		for pid in "${pids[@]}"; do
			if ! kill -0 "$pid" 2>/dev/null; then
				echo "run.sh: a node exited before the cluster was up; its log is above" >&2
				exit 1
			fi
		done
		sleep 0.1
	done
done
echo "cluster up: http://127.0.0.1:$((8081 + offset)) http://127.0.0.1:$((8082 + offset)) http://127.0.0.1:$((8083 + offset)) (Ctrl-C stops it)"
# A node that stops on its own (killed, or an error: its log is above)
# leaves the other two running, as in a real cluster, so that kill -9 of
# one shows the failover. The script ends once every node has stopped,
# with status 1 if any of them failed; Ctrl-C stops the others as above.
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
wait_for "${pids[@]}"
exit "$status"
