#!/usr/bin/env bash
# Failover demo: 3 Cohort nodes behind a real load balancer. A session
# counts through the balancer; the node serving it is killed with SIGKILL;
# the count goes on, on another node, whose route the cookie now carries;
# the killed node is restarted and answers for the session with the state
# it fetched. Done behind Apache httpd, then behind HAProxy.
#
# Usage: demo.sh [-frequency 500ms] [-drop-time 3s] [apache|haproxy|both]
#
# Needs bin/cohort-node (make build; or set BIN), curl, and the balancers:
# Debian packages apache2 and haproxy. Ports: nodes on BASE+1..3 (HTTP),
# BASE+11..13 (gossip), BASE+21..23 (replication), balancer on BASE;
# BASE defaults to 18080. Prints the failure detection time it observed
# (SIGKILL to the survivors reporting the node dead). Exits non-zero if
# the count does not go on.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../../bin/cohort-node}
base=${BASE:-18080}
frequency=500ms
drop_time=3s
which=both
while [ $# -gt 0 ]; do
	case $1 in
	-frequency) frequency=$2; shift 2 ;;
	-drop-time) drop_time=$2; shift 2 ;;
	apache | haproxy | both) which=$1; shift ;;
	*) sed -n '2,17p' "$0" >&2; exit 2 ;;
	esac
done
[ -x "$bin" ] || { echo "demo: $bin not found; run make build or set BIN" >&2; exit 2; }

work=$(mktemp -d)
pids=()
balancer_pid=
# cleanup runs on every exit, also after a failure or Ctrl-C, when the
# balancer or a node may be gone already: no step of it may stop it.
cleanup() {
	if [ -n "$balancer_pid" ]; then kill "$balancer_pid" 2>/dev/null || true; fi
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
http() { echo "127.0.0.1:$((base + $1))"; }
gossip() { echo "127.0.0.1:$((base + 10 + $1))"; }
now_ms() { date +%s%3N; }
# sed_escape S: S as the replacement of a sed s|...|...| command.
sed_escape() { printf '%s' "$1" | sed 's/[\\|&]/\\&/g'; }

start_node() { # start_node N
	local i=$1 seeds
	seeds="$(gossip 1),$(gossip 2),$(gossip 3)"
	"$bin" -route "node$i" -http "$(http "$i")" -bind "$(gossip "$i")" \
		-replication "127.0.0.1:$((base + 20 + i))" -join "$seeds" -multicast off \
		-frequency "$frequency" -drop-time "$drop_time" -manager delta -send-mode ack \
		>>"$work/node$i.log" 2>&1 &
	pids[i]=$!
}

wait_until() { # wait_until SECONDS COMMAND...
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || { echo "demo: timed out: $*" >&2; tail -n 20 "$work"/*.log >&2; exit 1; }
		sleep 0.05
	done
}
ready() { curl -fsS --max-time 1 "http://$(http "$1")/readyz"; }
state_of() { # state_of OBSERVER ROUTE: the state OBSERVER reports for ROUTE
	curl -fsS --max-time 1 "http://$(http "$1")/cluster/status" |
		tr -d ' \n' | grep -o "\"route\":\"$2\",\"address\":\"[^\"]*\",\"state\":\"[a-z]*\"" | sed 's/.*"state":"//; s/"//'
}
is_dead() { [ "$(state_of "$1" "$2")" = dead ]; }

# count REQUESTS: drive the session through the balancer with curl and a
# cookie jar; sets last_count, last_node, last_id.
count() {
	local i out
	for ((i = 0; i < $1; i++)); do
		out=$(curl -fsS --max-time 10 -c "$work/jar" -b "$work/jar" "http://$(http 0)/counter")
		echo "  $out"
		read -r c n id <<<"$out"
		last_count=${c#count=} last_node=${n#node=} last_id=${id#id=}
	done
}

start_balancer() {
	local kind=$1 conf
	case $kind in
	apache)
		local modules=/usr/lib/apache2/modules user=""
		[ "$(id -u)" = 0 ] && user=$'User www-data\nGroup www-data' && chmod 755 "$work"
		conf=$work/httpd.conf
		sed -e "s|@PORT@|$base|; s|@DIR@|$(sed_escape "$work")|g; s|@MODULES@|$modules|g" \
			-e "s|@NODE1@|$(http 1)|; s|@NODE2@|$(http 2)|; s|@NODE3@|$(http 3)|" \
			"$here/httpd.conf.tmpl" | awk -v u="$user" '{ if ($0 == "@USER@") print u; else print }' >"$conf"
		/usr/sbin/apache2 -f "$conf" -DFOREGROUND >>"$work/balancer.log" 2>&1 &
		;;
	haproxy)
		conf=$work/haproxy.cfg
		sed -e "s|@PORT@|$base|" -e "s|@NODE1@|$(http 1)|; s|@NODE2@|$(http 2)|; s|@NODE3@|$(http 3)|" \
			"$here/haproxy.cfg.tmpl" >"$conf"
		haproxy -f "$conf" -db >>"$work/balancer.log" 2>&1 &
		;;
	esac
	balancer_pid=$!
	wait_until 15 curl -fsS --max-time 1 "http://$(http 0)/readyz"
}

demo() {
	local kind=$1 victim first_id killed detected survivor
	say "$kind: 3 nodes (frequency $frequency, drop-time $drop_time) behind $kind on $(http 0)"
	rm -f "$work/jar"
	for i in 1 2 3; do start_node "$i"; done
	for i in 1 2 3; do wait_until 30 ready "$i"; done
	start_balancer "$kind"

	say "$kind: a session counts through the balancer"
	count 5
	[ "$last_count" = 5 ] || { echo "demo: count $last_count, want 5" >&2; exit 1; }
	victim=${last_node#node} first_id=$last_id
	echo "  served by node$victim; cookie JSESSIONID=$first_id"

	say "$kind: kill -9 node$victim"
	killed=$(now_ms)
	kill -9 "${pids[victim]}"
	wait "${pids[victim]}" 2>/dev/null || true
	count 3
	[ "$last_count" = 8 ] || { echo "demo: count $last_count after the kill, want 8" >&2; exit 1; }
	[ "$last_node" != "node$victim" ] || { echo "demo: still served by the killed node" >&2; exit 1; }
	echo "  the count went on at $last_node; the cookie's route changed: ${first_id##*.} -> ${last_id##*.}"
	survivor=${last_node#node}
	wait_until 60 is_dead "$survivor" "node$victim"
	detected=$(now_ms)
	echo "  failure detection: node$survivor reported node$victim dead $((detected - killed)) ms after the SIGKILL (drop-time $drop_time)"

	say "$kind: node$victim restarts and gets the state back"
	start_node "$victim"
	wait_until 30 ready "$victim"
	out=$(curl -fsS --max-time 10 -b "JSESSIONID=$last_id" "http://$(http "$victim")/counter")
	echo "  asked directly: $out"
	[[ $out == "count=9 node=node$victim "* ]] || { echo "demo: the restarted node answered '$out', want count=9" >&2; exit 1; }

	kill "$balancer_pid" 2>/dev/null || true
	wait "$balancer_pid" 2>/dev/null || true
	balancer_pid=
	for i in 1 2 3; do kill -TERM "${pids[i]}" 2>/dev/null || true; done
	for i in 1 2 3; do wait "${pids[i]}" 2>/dev/null || true; done
}

case $which in
apache) demo apache ;;
haproxy) demo haproxy ;;
both) demo apache; demo haproxy ;;
esac
say "done"
