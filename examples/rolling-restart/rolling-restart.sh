#!/usr/bin/env bash
# Restarts the nodes of a Cohort cluster one at a time, without losing a
# session or failing a request, as long as the balancer in front checks
# /readyz (see httpd-balancer.conf here) and the nodes run with a
# -drain-time of at least two health check intervals.
#
# Usage: rolling-restart.sh NODE...
# where each NODE is  URL|STOP-COMMAND|START-COMMAND, for instance
#   'http://10.0.0.1:8080|systemctl stop cohort|systemctl start cohort'
#   'http://127.0.0.1:8081|kill -TERM $(cat node1.pid)|./start-node1.sh'
#
# For each node in turn: wait until every node is ready; stop it (SIGTERM:
# it reports not ready, drains, hands its sessions off and leaves); wait
# until it is down; start it; wait until it is ready again (it has fetched
# the sessions) and sees every other node alive. Exits non-zero, naming
# the node, when a step does not finish within TIMEOUT seconds (default 60).
set -euo pipefail

timeout=${TIMEOUT:-60}

log() { printf '%s rolling-restart: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it
# succeeds or the timeout passes.
wait_for() {
	local what=$1 deadline=$((SECONDS + timeout))
	shift
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			exit 1
		fi
		sleep 0.2
	done
}

ready() { curl -fsS -o /dev/null --max-time 2 "$1/readyz"; }
down() { ! curl -sS -o /dev/null --max-time 2 "$1/healthz"; }
# all_alive URL N: the node at URL sees N members, all alive.
all_alive() {
	local body
	body=$(curl -fsS --max-time 2 "$1/cluster/status") || return 1
	[ "$(grep -o '"state": *"alive"' <<<"$body" | wc -l)" -eq "$2" ]
}

if [ $# -eq 0 ]; then
	sed -n '2,18p' "$0" >&2
	exit 2
fi
urls=()
for node in "$@"; do
	IFS='|' read -r url _ _ <<<"$node"
	urls+=("$url")
done

for node in "$@"; do
	IFS='|' read -r url stop start <<<"$node"
	for u in "${urls[@]}"; do wait_for "$u to be ready" ready "$u"; done
	log "stopping $url"
	bash -c "$stop"
	wait_for "$url to stop" down "$url"
	log "starting $url"
	bash -c "$start"
	wait_for "$url to be ready" ready "$url"
	wait_for "$url to see all ${#urls[@]} nodes alive" all_alive "$url" "${#urls[@]}"
	log "$url is back"
done
log "done: ${#urls[@]} nodes restarted"
