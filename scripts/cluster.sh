#!/usr/bin/env bash
# cluster.sh: run a cluster of vbcache nodes on this machine, on 127.0.0.1 only.
#
# Usage:
#   scripts/cluster.sh start N    build ./cmd/node, start nodes 0..N-1, wait until every
#                                 node's /healthz answers 200 and all agree on the members
#   scripts/cluster.sh status     one line per node, then "N healthy members, one rev R"
#                                 (exit 0) or what the nodes disagree on (exit 1)
#   scripts/cluster.sh stop       SIGTERM every node and wait for it to exit
#   scripts/cluster.sh add        start the next node, joined to the running ones
#   scripts/cluster.sh kill I     SIGKILL node I (a crash)
#   scripts/cluster.sh remove I   SIGTERM node I and wait for it to exit (a clean leave)
#   scripts/cluster.sh -h         this help
#
# Node I (0, 1, ...) is named nodeI and listens on 127.0.0.1 at
#   memcached  BASE_PORT + I          (11211, 11212, ... by default)
#   gossip     BASE_PORT + 1000 + I   (12211, 12212, ...)
#   HTTP       BASE_PORT + 2000 + I   (13211, 13212, ...: /healthz, /cluster, /pools)
# Node 0 joins nobody; every other node started by `start` joins node 0's gossip
# address, and a node started by `add` joins every running node. Nodes retry their
# seeds in the background, so start order does not matter.
#
# Environment:
#   BASE_PORT=11211      first memcached port (see above); I must stay below 1000
#   CLUSTER_DIR=DIR      where the binary, pids (nodeI.pid) and logs (nodeI.log) live;
#                        default /tmp/vbcache-cluster-$BASE_PORT. Commands after `start`
#                        read BASE_PORT back from DIR, so only CLUSTER_DIR is needed.
#   NODE_ARGS="-x y"     extra flags for every node (split on whitespace), e.g.
#                        NODE_ARGS="-vbuckets 64 -replicas 2 -log-level debug";
#                        `add` reuses the ones given to `start` unless NODE_ARGS is set.
#   NODE_BIN=PATH        run this node binary instead of building ./cmd/node
#   START_TIMEOUT=60     seconds `start`/`add` wait for health and agreement
#   STOP_TIMEOUT=40      seconds `stop`/`remove` wait for a node to exit, then SIGKILL it
#                        (above the node's default 30s -drain-timeout)
#
# HTTP goes through curl, or python3 when curl is missing; `status` reads the /cluster
# JSON with python3 or jq.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=scripts/cluster.sh
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-40}
MAX_NODES=1000 # memcached ports must stay below the gossip ports

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die() {
	echo "$PROG: $*" >&2
	exit 1
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# setup_dir resolves BASE_PORT and CLUSTER_DIR. With create=1 it makes the
# directory and records BASE_PORT in it; otherwise the directory must exist.
setup_dir() {
	local create=$1 env_base=${BASE_PORT-}
	BASE_PORT=${BASE_PORT:-11211}
	is_uint "$BASE_PORT" || die "BASE_PORT=$BASE_PORT is not a port number"
	CLUSTER_DIR=${CLUSTER_DIR:-/tmp/vbcache-cluster-$BASE_PORT}
	if ((create)); then
		mkdir -p "$CLUSTER_DIR"
	elif [[ ! -d $CLUSTER_DIR ]]; then
		die "no cluster in $CLUSTER_DIR (start one with: $PROG start N)"
	fi
	CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd)
	if ((!create)) && [[ -f $CLUSTER_DIR/base_port ]]; then
		local saved
		saved=$(<"$CLUSTER_DIR/base_port")
		if [[ -n $env_base && $env_base != "$saved" ]]; then
			die "BASE_PORT=$env_base but the cluster in $CLUSTER_DIR was started with BASE_PORT=$saved"
		fi
		BASE_PORT=$saved
	fi
}

kv_port() { echo $((BASE_PORT + $1)); }
gossip_port() { echo $((BASE_PORT + 1000 + $1)); }
http_port() { echo $((BASE_PORT + 2000 + $1)); }

check_ports_fit() {
	local last=$1
	((last < MAX_NODES)) || die "node $last: at most $MAX_NODES nodes (ports would overlap)"
	(($(http_port "$last") <= 65535)) || die "node $last: HTTP port $(http_port "$last") is above 65535; lower BASE_PORT"
	(($(kv_port 0) >= 1)) || die "BASE_PORT must be at least 1"
}

# port_in_use succeeds if something accepts TCP on 127.0.0.1:$1.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports_free() {
	local i p
	for i in "$@"; do
		for p in "$(kv_port "$i")" "$(gossip_port "$i")" "$(http_port "$i")"; do
			if port_in_use "$p"; then
				die "node $i: port $p on 127.0.0.1 is already in use (pick another BASE_PORT)"
			fi
		done
	done
}

# known_nodes prints the index of every node started in CLUSTER_DIR, ascending.
known_nodes() {
	local f n
	for f in "$CLUSTER_DIR"/node*.pid; do
		[[ -e $f ]] || continue
		n=${f##*/node}
		n=${n%.pid}
		is_uint "$n" && echo "$n"
	done | sort -n
}

node_pid() {
	local f=$CLUSTER_DIR/node$1.pid
	[[ -f $f ]] && cat "$f"
}

# pid_alive succeeds if pid $1 is a running (not zombie) process of the node
# binary recorded in CLUSTER_DIR, so a recycled pid is not mistaken for a node.
pid_alive() {
	local pid=$1 stat bin
	is_uint "$pid" || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	[[ -r /proc/$pid/stat ]] || return 0 # no procfs: trust kill -0
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]] || return 1
	# The binary is argv[0], or a later argument when it is a script.
	bin=$(cat "$CLUSTER_DIR/bin" 2>/dev/null) || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -Fxq -- "$bin"
}

node_alive() {
	local pid
	pid=$(node_pid "$1") || return 1
	pid_alive "$pid"
}

alive_nodes() {
	local i
	for i in $(known_nodes); do
		if node_alive "$i"; then echo "$i"; fi
	done
}

# http_get prints the body of http://127.0.0.1:$1$2 and succeeds only on 200.
http_get() {
	local url="http://127.0.0.1:$1$2"
	if command -v curl >/dev/null; then
		curl -fsS --max-time 2 "$url" 2>/dev/null
	elif command -v python3 >/dev/null; then
		python3 -c '
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.stdout.buffer.write(r.read())
except Exception:
    sys.exit(1)
' "$url"
	else
		die "need curl or python3 to talk HTTP to the nodes"
	fi
}

healthy() { http_get "$(http_port "$1")" /healthz >/dev/null; }

# cluster_view prints "REV NAMES" for node $1: the rev of its map and the
# sorted, comma-separated names of the members it sees alive.
cluster_view() {
	local body
	body=$(http_get "$(http_port "$1")" /cluster) || return 1
	if command -v python3 >/dev/null; then
		python3 -c '
import json, sys
d = json.load(sys.stdin)
names = sorted(m["name"] for m in d.get("members") or [] if m.get("state") == "alive")
print(d["rev"], ",".join(names) or "-")
' <<<"$body" 2>/dev/null
	elif command -v jq >/dev/null; then
		jq -er '"\(.rev) \([.members[]? | select(.state == "alive") | .name] | sort | join(",") | if . == "" then "-" else . end)"' <<<"$body" 2>/dev/null
	else
		die "need python3 or jq to read /cluster"
	fi
}

# probe reads every running node once: RUNNING lists their indices and
# VIEW[i] is "REV NAMES" (see cluster_view), "unhealthy" or "unreadable".
# status and agreement both use this one reading, so they cannot disagree.
probe() {
	local i
	RUNNING=()
	VIEW=()
	mapfile -t RUNNING < <(alive_nodes)
	for i in "${RUNNING[@]}"; do
		if ! healthy "$i"; then
			VIEW[$i]=unhealthy
		elif ! VIEW[$i]=$(cluster_view "$i"); then
			VIEW[$i]=unreadable
		fi
	done
	return 0
}
declare -a RUNNING=()
declare -A VIEW=()

# agreement judges the last probe: it prints "N healthy members, one rev R"
# and succeeds if every running node is healthy and reports the same rev and
# exactly the running nodes as its alive members; otherwise it prints what
# disagrees and fails.
agreement() {
	local i rev names want problems=() revs=() labels=()
	if ((${#RUNNING[@]} == 0)); then
		echo "no node is running"
		return 1
	fi
	want=$(printf 'node%s\n' "${RUNNING[@]}" | sort | paste -sd, -)
	for i in "${RUNNING[@]}"; do
		case ${VIEW[$i]} in
		unhealthy) problems+=("node$i: /healthz not 200") ;;
		unreadable) problems+=("node$i: /cluster unreadable") ;;
		*)
			rev=${VIEW[$i]%% *} names=${VIEW[$i]#* }
			revs+=("$rev") labels+=("node$i=$rev")
			if [[ $names != "$want" ]]; then
				problems+=("node$i (rev $rev) sees alive [$names], running are [$want]")
			fi
			;;
		esac
	done
	if (($(printf '%s\n' "${revs[@]}" | sort -u | wc -l) > 1)); then
		problems+=("revs differ: ${labels[*]}")
	fi
	if ((${#problems[@]} == 0)); then
		echo "${#RUNNING[@]} healthy members, one rev ${revs[0]}"
		return 0
	fi
	printf 'disagreement: %s' "${problems[0]}"
	printf '; %s' "${problems[@]:1}"
	echo
	return 1
}

log_tail() {
	local f=$CLUSTER_DIR/node$1.log
	echo "--- last lines of $f:" >&2
	tail -n 25 "$f" >&2 2>/dev/null || true
}

build() {
	if [[ -n ${NODE_BIN-} ]]; then
		[[ -x $NODE_BIN ]] || die "NODE_BIN=$NODE_BIN is not an executable"
		(cd "$(dirname "$NODE_BIN")" && echo "$(pwd)/$(basename "$NODE_BIN")") >"$CLUSTER_DIR/bin"
		return
	fi
	command -v go >/dev/null || die "go is not on PATH (or set NODE_BIN)"
	echo "building ./cmd/node into $CLUSTER_DIR/node"
	(cd "$ROOT" && go build -o "$CLUSTER_DIR/node" ./cmd/node) || die "go build ./cmd/node failed"
	echo "$CLUSTER_DIR/node" >"$CLUSTER_DIR/bin"
}

# launch starts node $1 in the background, joining the gossip addresses in $2
# (comma-separated, may be empty).
launch() {
	local i=$1 join=$2 bin args extra=()
	bin=$(<"$CLUSTER_DIR/bin")
	read -ra extra <<<"$(cat "$CLUSTER_DIR/node_args" 2>/dev/null)"
	args=(-listen "127.0.0.1:$(kv_port "$i")" -gossip "127.0.0.1:$(gossip_port "$i")"
		-http "127.0.0.1:$(http_port "$i")" -name "node$i")
	if [[ -n $join ]]; then args+=(-join "$join"); fi
	args+=("${extra[@]}")
	rm -f "$CLUSTER_DIR/node$i.removed"
	echo "\$ $bin ${args[*]}" >"$CLUSTER_DIR/node$i.log"
	# Own session: a ^C in this terminal or the end of this script does not stop it.
	if command -v setsid >/dev/null; then
		setsid "$bin" "${args[@]}" </dev/null >>"$CLUSTER_DIR/node$i.log" 2>&1 &
	else
		nohup "$bin" "${args[@]}" </dev/null >>"$CLUSTER_DIR/node$i.log" 2>&1 &
	fi
	echo $! >"$CLUSTER_DIR/node$i.pid"
	printf 'node%-3s pid %-7s kv 127.0.0.1:%s  gossip 127.0.0.1:%s  http 127.0.0.1:%s\n' \
		"$i" "$!" "$(kv_port "$i")" "$(gossip_port "$i")" "$(http_port "$i")"
}

# wait_ready waits until nodes "$@" are healthy, then until the running nodes
# agree, for at most START_TIMEOUT seconds in all. On failure it reports why,
# with the log tail of every node at fault, and fails.
wait_ready() {
	local deadline=$((SECONDS + START_TIMEOUT)) i pending=("$@") left msg
	while ((${#pending[@]})); do
		left=()
		for i in "${pending[@]}"; do
			if ! node_alive "$i"; then
				echo "$PROG: node$i exited during start-up" >&2
				log_tail "$i"
				return 1
			fi
			healthy "$i" || left+=("$i")
		done
		pending=("${left[@]}")
		((${#pending[@]})) || break
		if ((SECONDS >= deadline)); then
			echo "$PROG: /healthz did not answer 200 within ${START_TIMEOUT}s on: ${pending[*]/#/node}" >&2
			for i in "${pending[@]}"; do log_tail "$i"; done
			return 1
		fi
		sleep 0.2
	done
	while probe && ! msg=$(agreement); do
		if ((SECONDS >= deadline)); then
			echo "$PROG: the nodes did not agree within ${START_TIMEOUT}s: $msg" >&2
			for i in "$@"; do log_tail "$i"; done
			return 1
		fi
		sleep 0.2
	done
	echo "$msg"
}

# signal_and_wait sends signal $1 to nodes "${@:2}" and waits up to
# STOP_TIMEOUT seconds for them to exit; a node still running then is killed
# and reported, and the function fails.
signal_and_wait() {
	local sig=$1 i pid deadline=$((SECONDS + STOP_TIMEOUT)) left=() status=0
	shift
	for i in "$@"; do
		pid=$(node_pid "$i")
		kill "-$sig" "$pid" 2>/dev/null || true
	done
	left=("$@")
	while ((${#left[@]})); do
		local still=()
		for i in "${left[@]}"; do
			if node_alive "$i"; then still+=("$i"); fi
		done
		left=("${still[@]}")
		((${#left[@]})) || break
		if ((SECONDS >= deadline)); then
			for i in "${left[@]}"; do
				echo "$PROG: node$i still running ${STOP_TIMEOUT}s after SIG$sig; sending SIGKILL" >&2
				kill -KILL "$(node_pid "$i")" 2>/dev/null || true
				log_tail "$i"
			done
			status=1
			break
		fi
		sleep 0.1
	done
	return "$status"
}

need_index() {
	[[ -n ${1-} ]] || die "$2 needs a node index (see $PROG status)"
	is_uint "$1" || die "node index '$1' is not a number"
	[[ -f $CLUSTER_DIR/node$1.pid ]] || die "no node$1 in $CLUSTER_DIR"
}

cmd_start() {
	local n=${1-} i running
	local indices=()
	[[ -n $n ]] || die "start needs the number of nodes, e.g. $PROG start 3"
	(($# == 1)) || die "start takes one argument, the number of nodes"
	if ! is_uint "$n" || ((n < 1)); then die "start: '$n' is not a positive number of nodes"; fi
	setup_dir 1
	check_ports_fit $((n - 1))
	for ((i = 0; i < n; i++)); do indices+=("$i"); done
	running=$(alive_nodes | sed 's/^/node/' | paste -sd' ' -)
	[[ -z $running ]] || die "a cluster is running in $CLUSTER_DIR ($running); run $PROG stop first"
	check_ports_free "${indices[@]}"
	rm -f "$CLUSTER_DIR"/node*.pid "$CLUSTER_DIR"/node*.log "$CLUSTER_DIR"/node*.removed
	echo "$BASE_PORT" >"$CLUSTER_DIR/base_port"
	printf '%s\n' "${NODE_ARGS-}" >"$CLUSTER_DIR/node_args"
	echo "cluster dir: $CLUSTER_DIR"
	build
	launch 0 ""
	for ((i = 1; i < n; i++)); do
		launch "$i" "127.0.0.1:$(gossip_port 0)"
	done
	if ! wait_ready "${indices[@]}"; then
		echo "$PROG: stopping the nodes started; logs stay in $CLUSTER_DIR" >&2
		local started
		mapfile -t started < <(alive_nodes)
		signal_and_wait TERM "${started[@]}" || true
		exit 1
	fi
	echo "cluster of $n nodes is up; logs and pids in $CLUSTER_DIR"
}

cmd_status() {
	(($# == 0)) || die "status takes no argument"
	setup_dir 0
	local i pid state extra names
	probe
	for i in $(known_nodes); do
		pid=$(node_pid "$i")
		extra=""
		if [[ -n ${VIEW[$i]+set} ]]; then
			state=alive
			case ${VIEW[$i]} in
			unhealthy) extra="  unhealthy (/healthz not 200)" ;;
			unreadable) extra="  /cluster unreadable" ;;
			*)
				names=${VIEW[$i]#* }
				extra="  rev ${VIEW[$i]%% *}  members $(tr ',' '\n' <<<"$names" | grep -vc '^-$') [$names]"
				;;
			esac
		else
			state=dead
			[[ ! -f $CLUSTER_DIR/node$i.removed ]] || extra="  (removed)"
		fi
		printf 'node%-3s pid %-7s %-5s  kv 127.0.0.1:%s  gossip 127.0.0.1:%s  http 127.0.0.1:%s%s\n' \
			"$i" "$pid" "$state" "$(kv_port "$i")" "$(gossip_port "$i")" "$(http_port "$i")" "$extra"
	done
	agreement
}

cmd_stop() {
	(($# == 0)) || die "stop takes no argument"
	setup_dir 0
	local nodes
	nodes=$(alive_nodes | paste -sd' ' -)
	if [[ -z $nodes ]]; then
		echo "no node is running in $CLUSTER_DIR"
		return 0
	fi
	# shellcheck disable=SC2086 # a list of indices
	signal_and_wait TERM $nodes || die "not every node stopped cleanly"
	echo "stopped $(wc -w <<<"$nodes") nodes; logs stay in $CLUSTER_DIR"
}

cmd_add() {
	(($# == 0)) || die "add takes no argument"
	setup_dir 0
	local i next=0 seeds=""
	[[ -f $CLUSTER_DIR/bin ]] || die "no cluster in $CLUSTER_DIR (start one with: $PROG start N)"
	for i in $(known_nodes); do next=$((i + 1)); done
	for i in $(alive_nodes); do seeds+="${seeds:+,}127.0.0.1:$(gossip_port "$i")"; done
	[[ -n $seeds ]] || die "no node is running in $CLUSTER_DIR to join (use $PROG start N)"
	check_ports_fit "$next"
	check_ports_free "$next"
	if [[ -n ${NODE_ARGS+set} ]]; then printf '%s\n' "$NODE_ARGS" >"$CLUSTER_DIR/node_args"; fi
	launch "$next" "$seeds"
	if ! wait_ready "$next"; then
		echo "$PROG: stopping node$next" >&2
		signal_and_wait TERM "$next" || true
		exit 1
	fi
}

cmd_kill() {
	(($# <= 1)) || die "kill takes one node index"
	setup_dir 0
	need_index "${1-}" kill
	node_alive "$1" || die "node$1 is not running"
	signal_and_wait KILL "$1"
	echo "killed node$1 (pid $(node_pid "$1"))"
}

cmd_remove() {
	(($# <= 1)) || die "remove takes one node index"
	setup_dir 0
	need_index "${1-}" remove
	node_alive "$1" || die "node$1 is not running"
	signal_and_wait TERM "$1" || die "node$1 did not exit on SIGTERM"
	touch "$CLUSTER_DIR/node$1.removed"
	echo "removed node$1"
}

main() {
	local cmd=${1-}
	(($#)) && shift
	case $cmd in
	-h | --help | help) usage ;;
	"")
		usage >&2
		exit 2
		;;
	start) cmd_start "$@" ;;
	status) cmd_status "$@" ;;
	stop) cmd_stop "$@" ;;
	add) cmd_add "$@" ;;
	kill) cmd_kill "$@" ;;
	remove) cmd_remove "$@" ;;
	*)
		echo "$PROG: unknown command '$cmd'" >&2
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
