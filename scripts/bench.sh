#!/usr/bin/env bash
# bench.sh: run the same binary-protocol loads against memcached and against
# the vbcache node, one server at a time, then the cluster loads on 3-node
# clusters, and print a markdown table of both figures and their ratio for
# every load, and a "Targets" section: each target, the measured figure and
# PASS or FAIL.
#
# Usage (from anywhere):
#   scripts/bench.sh
#   DURATION=30s scripts/bench.sh
#   BENCH_LOADS="c16-d1 c16-d16" scripts/bench.sh
#   DURATION=3s BENCH_LOADS="fwd repl evict gc-1M" scripts/bench.sh
#   BENCH_ONLY_MEMCACHED=1 scripts/bench.sh    # memcached in both columns
#   NODE_BIN=/path/to/node scripts/bench.sh    # use a prebuilt node
#
# Loads (binary protocol, VALUE_SIZE-byte values; "mixed" is GET_RATIO GETs,
# the rest SETs, uniform over a prefilled key space):
#   c16-d1    mixed, 16 connections, 1 request in flight each, KEYS keys
#   c16-d16   mixed, 16 connections, 16 in flight each (one write per batch)
#   c256-d1   mixed, 256 connections, 1 in flight each
#   fill-1M   store 1,000,000 items with pipelined SETQ; look at RSS
#   evict     store EVICT_ITEMS items into servers limited to EVICT_MEMORY_MIB
#             (more than fits, so both evict); look at RSS and STAT evictions
#   gc-1M     prefill 1,000,000 keys, then c16-d1 mixed over all of them: a
#             large heap under load (look at p999)
#   fwd       3-node cluster (-replicas 0), keys whose vbucket node B holds
#             active, c16-d1 mixed from a legacy client (no HELLO, vbucket 0):
#             against B ("direct") and against A, which forwards every
#             request to B ("forwarded"); one cluster
#   repl      SETs only, c16-d16, to keys node A holds active: a 3-node
#             cluster with -replicas 0 and one with -replicas 1 -replication
#             sync, both running, only one loaded at a time
#   repl-d1   the same at depth 1
# The cluster loads measure their two columns in ROUNDS segments each,
# alternating (A B B A for 2), so that a change in the machine's speed
# during the run (other tenants of a VM) weighs on both columns alike; repl's
# two clusters run side by side for that. The memcached loads do not:
# memcached goes on working for seconds after a load (15-18% of a CPU for
# 3 s after storing 1M items), and with it running beside the node, gc-1M's
# node served 97-99k ops/s against 119k alone.
# memcached and the node both get MEMORY_MIB (1 GiB) except in evict. The
# cluster loads have no memcached column: their ratio is between two node
# runs of the same script run, and their CPU and RSS are the sums over all 3
# node processes.
#
# Targets (ratios are node/memcached unless said; PASS/FAIL is printed, the
# exit status stays 0 unless BENCH_STRICT=1):
#   c16-d1, c16-d16   ops/s >= 1.0x, CPU µs/op <= 1.0x, p99 <= 1.0x
#   c256-d1           ops/s >= 1.0x, no node connection failed
#   fill-1M           RSS <= 1.2x
#   evict             node RSS <= EVICT_MEMORY_MIB + the README's overhead
#                     (32 MiB + 40 B per item held) or EVICT_OVERHEAD_MIB
#   gc-1M             p999 <= 2.0x
#   fwd               forwarded/direct ops/s >= 0.5x
#   repl, repl-d1     replicated/unreplicated CPU µs/op (3 nodes) <= 2.0x,
#                     at pipeline depth 16 and 1
#
# Settings, all from the environment:
#   DURATION              measured time per load and server       (10s)
#   WARMUP                unmeasured load before each measurement (1s)
#   ROUNDS                segments per column of the cluster loads, each
#                         DURATION/ROUNDS after its own WARMUP; ops/s and
#                         CPU µs/op are over all of them, latencies the
#                         worst segment's                         (2)
#   KEYS                  key space of the mixed and cluster loads (100000)
#   VALUE_SIZE            value size in bytes                     (100)
#   GET_RATIO             fraction of GETs in the mixed loads     (0.9)
#   EVICT_ITEMS           items the evict load stores             (1000000)
#   EVICT_MEMORY_MIB      memory limit of both servers in evict   (64)
#   EVICT_OVERHEAD_MIB    node RSS allowed above that limit (the README's
#                         bound: 32 MiB + 40 B per item held)
#   CLUSTER_TIMEOUT       seconds a cluster may take to settle    (60)
#   CLUSTER_DRAIN         the cluster nodes' -drain-timeout       (5s)
#   BENCH_LOADS           names of the loads to run, space-separated (all)
#   BENCH_STRICT          1: exit 1 if a target fails             (0)
#   BENCH_KEEP            1: keep the work directory (server and loadgen
#                         logs, loadgen JSON) and print where it is (0)
#   NODE_BIN              node binary to use instead of building ./cmd/node
#   NODE_ARGS             extra node flags, word-split (cluster nodes too)
#   MEMCACHED_ARGS        extra memcached flags, word-split       (none)
#   BENCH_ONLY_MEMCACHED  1: run memcached in the node's column too and skip
#                         the cluster loads                       (0)
#   LOADGEN_GOMAXPROCS    GOMAXPROCS of the load generator        (1)
#   PIN_CPUS              1: pin the servers to CPUs 0..n-2 and loadgen to
#                         the last CPU with taskset; 0: let the kernel
#                         schedule all of them                    (0)
#
# CPU sharing: loadgen runs on the same machine as the server. By default it
# is held to GOMAXPROCS=1 and the kernel schedules everything. PIN_CPUS=1
# isolates them instead, but on a 2-CPU machine that leaves the server one
# core, where memcached's 4 default worker threads time-slice and its p99
# grows several-fold (MEMCACHED_ARGS="-t 1" avoids that), while the node's Go
# runtime sizes itself to the one CPU it is given.
#
# Every server gets a fresh process and port for every load (the fwd load's
# two columns share one cluster), so RSS and CPU belong to that load alone;
# a column's CPU counts only its own server's (or cluster's) processes.
# Only 127.0.0.1 is used. Every process the script starts is stopped on
# exit. The default run takes about 3 minutes on 2 CPUs (DURATION=3s: about
# 80 s).
set -euo pipefail

# ---------------------------------------------------------------- settings

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-2}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
GET_RATIO=${GET_RATIO:-0.9}
EVICT_ITEMS=${EVICT_ITEMS:-1000000}
EVICT_MEMORY_MIB=${EVICT_MEMORY_MIB:-64}
EVICT_OVERHEAD_MIB=${EVICT_OVERHEAD_MIB:-}
CLUSTER_TIMEOUT=${CLUSTER_TIMEOUT:-60}
CLUSTER_DRAIN=${CLUSTER_DRAIN:-5s}
BENCH_LOADS=${BENCH_LOADS:-}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_KEEP=${BENCH_KEEP:-0}
NODE_BIN=${NODE_BIN:-}
NODE_ARGS=${NODE_ARGS:-}
BENCH_ONLY_MEMCACHED=${BENCH_ONLY_MEMCACHED:-0}
LOADGEN_GOMAXPROCS=${LOADGEN_GOMAXPROCS:-1}
MEMCACHED_ARGS=${MEMCACHED_ARGS:-}
PIN_CPUS=${PIN_CPUS:-0}

MEMORY_MIB=1024 # both servers' memory limit in every load but evict
CLUSTER_SIZE=3

# ------------------------------------------------------------------- loads
#
# One load per line: name, kind, then loadgen flags.
#   mixed: store the keys (KEYS, or the line's -keys), run WARMUP of the load
#          unmeasured, then measure DURATION of the GET/SET mix.
#   fill:  measure storing -items items with pipelined SETQ (memory test:
#          look at RSS; "ops" are items stored).
#   evict: fill, with both servers limited to EVICT_MEMORY_MIB; STAT
#          evictions and curr_items are read afterwards.
#   fwd:   the mixed load on a 3-node cluster, direct to the owner of the
#          keys and forwarded through another node (see the header).
#   repl:  the mixed load on a 3-node cluster without and with replicas.
# To add a load of an existing kind, add a line; names must be unique.
LOADS=(
	"c16-d1     mixed  -conns 16 -depth 1"
	"c16-d16    mixed  -conns 16 -depth 16"
	"c256-d1    mixed  -conns 256 -depth 1"
	"fill-1M    fill   -conns 16 -items 1000000"
	"evict      evict  -conns 16 -items $EVICT_ITEMS"
	"gc-1M      mixed  -conns 16 -depth 1 -keys 1000000"
	"fwd        fwd    -conns 16 -depth 1"
	"repl       repl   -conns 16 -depth 16 -get-ratio 0"
	"repl-d1    repl   -conns 16 -depth 1 -get-ratio 0"
)

# The two columns of the comparison for the memcached loads. The second is
# "node" unless BENCH_ONLY_MEMCACHED=1, when memcached runs in both.
BASELINE=memcached
CANDIDATE=node
if [[ $BENCH_ONLY_MEMCACHED == 1 ]]; then
	CANDIDATE=memcached2
fi

# ---------------------------------------------------------------- helpers

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/vbcache-bench.XXXXXX")
STARTED_PIDS=()
declare -A USED_PORTS=()
declare -A LOG_OF=() # server pid: its log file
CLK_TCK=$(getconf CLK_TCK)

log() {
	echo "bench: $*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# cleanup stops every process this script started, all at once, and removes
# WORKDIR unless BENCH_KEEP=1.
cleanup() {
	if ((${#STARTED_PIDS[@]})); then
		stop_processes "${STARTED_PIDS[@]}"
	fi
	if [[ $BENCH_KEEP == 1 ]]; then
		log "logs and loadgen output kept in $WORKDIR"
	else
		rm -rf "$WORKDIR"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_processes sends SIGTERM to every pid given, waits up to 15 s for them
# all (cluster nodes hand vbuckets over within their -drain-timeout), then
# sends SIGKILL to those still running.
stop_processes() {
	local pid left
	for pid in "$@"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for _ in $(seq 1 150); do
		left=0
		for pid in "$@"; do
			if kill -0 "$pid" 2>/dev/null; then
				left=1
				break
			fi
		done
		((left)) || break
		sleep 0.1
	done
	for pid in "$@"; do
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid ignored SIGTERM for 15s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
}

# forget removes the pids given from STARTED_PIDS.
forget() {
	local p q keep
	local -a still=()
	for p in "${STARTED_PIDS[@]}"; do
		keep=1
		for q in "$@"; do
			if [[ $p == "$q" ]]; then
				keep=0
			fi
		done
		if ((keep)); then
			still+=("$p")
		fi
	done
	STARTED_PIDS=("${still[@]}")
}

# stop_servers stops the pids given, all at once, and forgets them.
stop_servers() {
	stop_processes "$@"
	forget "$@"
}

as_root() {
	if [[ $(id -u) == 0 ]]; then
		"$@"
	else
		sudo "$@"
	fi
}

# ensure_tools installs memcached, and jq and curl when a cluster load is to
# run, with apt-get if they are missing.
ensure_tools() {
	local -a missing=()
	command -v memcached >/dev/null || missing+=(memcached)
	if [[ $BENCH_ONLY_MEMCACHED != 1 ]] && { selected fwd || selected repl; }; then
		command -v jq >/dev/null || missing+=(jq)
		command -v curl >/dev/null || missing+=(curl)
	fi
	if ((${#missing[@]} == 0)); then
		return 0
	fi
	log "${missing[*]} not found; installing with apt-get"
	as_root apt-get update
	as_root apt-get install -y "${missing[@]}"
}

# build puts loadgen (and, unless told otherwise, node) in WORKDIR and sets
# LOADGEN and NODE.
build() {
	log "building ./cmd/loadgen"
	(cd "$REPO" && go build -o "$WORKDIR/loadgen" ./cmd/loadgen)
	LOADGEN=$WORKDIR/loadgen
	NODE=
	if [[ $BENCH_ONLY_MEMCACHED == 1 ]]; then
		return 0
	fi
	if [[ -n $NODE_BIN ]]; then
		[[ -x $NODE_BIN ]] || die "NODE_BIN=$NODE_BIN is not an executable"
		NODE=$NODE_BIN
		return 0
	fi
	log "building ./cmd/node"
	if ! (cd "$REPO" && go build -o "$WORKDIR/node" ./cmd/node); then
		die "./cmd/node does not build; set NODE_BIN, or BENCH_ONLY_MEMCACHED=1 to test the script"
	fi
	NODE=$WORKDIR/node
}

# choose_cpus sets SERVER_PIN and LOADGEN_PIN, command prefixes that, with
# PIN_CPUS=1, pin the server to all CPUs but the last and the load generator
# to the last, so the two never compete for a core.
choose_cpus() {
	local ncpu last
	ncpu=$(nproc)
	SERVER_PIN=()
	LOADGEN_PIN=()
	if [[ $PIN_CPUS == 1 ]]; then
		command -v taskset >/dev/null || die "PIN_CPUS=1 needs taskset (util-linux)"
		((ncpu >= 2)) || die "PIN_CPUS=1 needs at least 2 CPUs"
		last=$((ncpu - 1))
		SERVER_PIN=(taskset -c "0-$((last - 1))")
		LOADGEN_PIN=(taskset -c "$last")
		CPU_NOTE="server on CPUs 0-$((last - 1)), loadgen on CPU $last (taskset)"
	else
		CPU_NOTE="not pinned: server and loadgen share $ncpu CPUs"
	fi
}

# port_open succeeds if something accepts connections on 127.0.0.1:$1.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# port_busy succeeds if something listens on port $1, TCP or UDP (gossip
# uses both).
port_busy() {
	if command -v ss >/dev/null; then
		[[ -n $(ss -Htuln "sport = :$1" 2>/dev/null) ]] && return 0
	fi
	port_open "$1"
}

# free_port sets PORT to a port nothing listens on, below the ephemeral range,
# that this script has not handed out before.
free_port() {
	local port
	for _ in $(seq 1 100); do
		port=$((20000 + RANDOM % 12000))
		if [[ -z ${USED_PORTS[$port]:-} ]] && ! port_busy "$port"; then
			USED_PORTS[$port]=1
			PORT=$port
			return 0
		fi
	done
	die "found no free port"
}

# start_server starts server $1 ("memcached", "memcached2" or "node") on
# 127.0.0.1:$2 with a memory limit of $4 MiB, logging to $3, and sets
# SERVER_PID. It returns once the server accepts connections.
start_server() {
	local name=$1 port=$2 logfile=$3 mem=$4
	local -a cmd extra
	case $name in
	memcached | memcached2)
		read -r -a extra <<<"$MEMCACHED_ARGS"
		cmd=(memcached -l 127.0.0.1 -p "$port" -U 0 -m "$mem" -c 4096 "${extra[@]}")
		if [[ $(id -u) == 0 ]]; then
			cmd+=(-u root) # memcached refuses to run as root without -u
		fi
		;;
	node)
		read -r -a extra <<<"$NODE_ARGS"
		cmd=("$NODE" -listen "127.0.0.1:$port" -memory-limit "${mem}MiB" "${extra[@]}")
		;;
	*)
		die "unknown server $name"
		;;
	esac
	"${SERVER_PIN[@]}" "${cmd[@]}" >"$logfile" 2>&1 &
	SERVER_PID=$!
	STARTED_PIDS+=("$SERVER_PID")
	LOG_OF[$SERVER_PID]=$logfile
	wait_for_port "$SERVER_PID" "$port" "$logfile"
}

# wait_for_port waits up to 10 s for pid $1 to accept connections on port $2.
wait_for_port() {
	local pid=$1 port=$2 logfile=$3
	for _ in $(seq 1 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$logfile" >&2
			die "server (pid $pid) exited before accepting connections on port $port"
		fi
		if port_open "$port"; then
			return 0
		fi
		sleep 0.1
	done
	cat "$logfile" >&2
	die "server (pid $pid) did not accept connections on port $port within 10s"
}

# cpu_ticks prints the utime+stime of the pids given, summed, in clock
# ticks: fields 14 and 15 of /proc/PID/stat. Fields are counted after the
# command name, which is in parentheses and may contain spaces.
cpu_ticks() {
	local pid stat rest sum=0
	local -a fields
	for pid in "$@"; do
		stat=$(</proc/"$pid"/stat)
		rest=${stat##*) }
		read -r -a fields <<<"$rest"
		# fields[0] is field 3 (state), so field 14 is fields[11].
		sum=$((sum + fields[11] + fields[12]))
	done
	echo "$sum"
}

# rss_mib prints the VmRSS of the pids given, summed, in MiB.
rss_mib() {
	local pid
	for pid in "$@"; do
		cat /proc/"$pid"/status
	done | awk '/^VmRSS:/ { kb += $2 } END { printf "%.1f", kb / 1024 }'
}

# check_alive fails, after showing the end of its log, if a server pid given
# after the label $1 has exited: its CPU and RSS could not be read.
check_alive() {
	local label=$1 pid status=0
	shift
	for pid in "$@"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$label: server pid $pid exited during the load; the end of its log:"
			tail -n 30 "${LOG_OF[$pid]:-/dev/null}" >&2 || true
			status=1
		fi
	done
	return "$status"
}

# loadgen runs the load generator, pinned and limited as chosen, in the
# background so that a signal to this script stops it at once too.
loadgen() {
	local pid status=0
	GOMAXPROCS=$LOADGEN_GOMAXPROCS "${LOADGEN_PIN[@]}" "$LOADGEN" "$@" &
	pid=$!
	STARTED_PIDS+=("$pid")
	wait "$pid" || status=$?
	forget "$pid"
	return "$status"
}

# json_number prints the number field $2 of loadgen's one-line JSON in file
# $1, or nothing if it is absent.
json_number() {
	grep -o "\"$2\":[-0-9.eE+]*" "$1" | head -n 1 | cut -d: -f2 || true
}

# json_string prints the string field $2 of the one-line JSON in file $1.
json_string() {
	grep -o "\"$2\":\"[^\"]*\"" "$1" | head -n 1 | cut -d'"' -f4 || true
}

# calc evaluates an awk expression over the variables given as name=value.
calc() {
	local expr=$1
	shift
	local -a vars=()
	local v
	for v in "$@"; do
		vars+=(-v "$v")
	done
	awk "${vars[@]}" "BEGIN { print ($expr) }"
}

# flag_value prints the value of loadgen flag $1 among the remaining
# arguments (the last one given wins), or $2 if it is not there.
flag_value() {
	local name=$1 value=$2
	shift 2
	while (($#)); do
		if [[ $1 == "$name" && $# -ge 2 ]]; then
			value=$2
			shift
		fi
		shift
	done
	echo "$value"
}

# ------------------------------------------------------- running one load

# Results, keyed "load|column|field".
declare -A RESULT
# Notes printed under the table, one a line.
NOTES=()

# run_one runs load $1 of kind $2 (mixed, fill or evict) against a fresh
# server $3, passing the remaining arguments to loadgen, and records the
# results.
run_one() {
	local load=$1 kind=$2 server=$3
	shift 3
	local -a flags=("$@")
	local port addr logfile json errlog before after status=0 mem=$MEMORY_MIB keys

	free_port
	port=$PORT
	addr=127.0.0.1:$port
	logfile=$WORKDIR/$load-$server.log
	json=$WORKDIR/$load-$server.json
	errlog=$WORKDIR/$load-$server.loadgen.log
	if [[ $kind == evict ]]; then
		mem=$EVICT_MEMORY_MIB
	fi
	log "$load on $server (port $port, memory limit $mem MiB)"
	start_server "$server" "$port" "$logfile" "$mem"

	local -a common=(-addr "$addr" -value-size "$VALUE_SIZE")
	if [[ $kind == mixed ]]; then
		keys=$(flag_value -keys "$KEYS" "${flags[@]}")
		prefill "$load" "$server" "$errlog" -addr "$addr" -items "$keys"
		measure_mixed "$load" "$server" "$json" "$errlog" "$SERVER_PID" -- "${common[@]}" -keys "$keys" "${flags[@]}"
	else
		before=$(cpu_ticks "$SERVER_PID")
		loadgen "${common[@]}" "${flags[@]}" -mode load -json >"$json" 2>>"$errlog" || status=$?
		after=$(cpu_ticks "$SERVER_PID")
		RESULT["$load|$server|rss"]=$(rss_mib "$SERVER_PID")
		if [[ $status != 0 ]]; then
			log "$load on $server: loadgen exited $status:"
			cat "$errlog" >&2
		fi
		record "$load" "$server" "$kind" "$json" $((after - before))
		if ! check_alive "$load on $server" "$SERVER_PID"; then
			RESULT["$load|$server|ops_s"]=crashed
		fi
	fi
	if [[ $kind == evict ]]; then
		record_stats "$load" "$server" "$addr"
	fi
	stop_servers "$SERVER_PID"
	SERVER_PID=
}

# prefill stores the keys of load $1 on column $2 through loadgen load mode,
# logging to $3; the remaining arguments are loadgen flags (-addr, -items,
# -owner). Failures are reported, not fatal: the measured run counts misses.
prefill() {
	local load=$1 column=$2 errlog=$3
	shift 3
	if ! loadgen "$@" -value-size "$VALUE_SIZE" -mode load -conns 16 >>"$errlog" 2>&1; then
		log "$load on $column: prefill had errors:"
		cat "$errlog" >&2
	fi
}

# segment prints DURATION/ROUNDS as a duration loadgen takes, in
# milliseconds.
segment() {
	local n unit ms
	if [[ ! $DURATION =~ ^([0-9]+([.][0-9]+)?)(ms|s|m)$ ]]; then
		die "DURATION=$DURATION: give a number and ms, s or m, e.g. 10s"
	fi
	n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
	case $unit in
	ms) ms=$n ;;
	s) ms=$(calc 'x * 1000' "x=$n") ;;
	m) ms=$(calc 'x * 60000' "x=$n") ;;
	esac
	calc 'sprintf("%dms", ms / r)' "ms=$ms" "r=$ROUNDS"
}

# columns_in_round prints the two columns $2 and $3 in the order round $1
# (from 1) measures them: A B, then B A, and so on, so that a steady drift
# in the machine's speed costs both columns alike.
columns_in_round() {
	if (($1 % 2)); then
		echo "$2 $3"
	else
		echo "$3 $2"
	fi
}

# measure_mixed runs WARMUP of a mixed load unmeasured, then MEASURE (default
# DURATION) measured, and records it as load $1, column $2, with loadgen's
# JSON in $3 and its stderr in $4; a second measurement of the same load
# and column adds to the first (see record). The pids before "--" are the
# server processes whose CPU and RSS are summed; the loadgen flags follow
# it.
measure_mixed() {
	local load=$1 column=$2 json=$3 errlog=$4
	shift 4
	local -a pids=()
	while [[ $1 != -- ]]; do
		pids+=("$1")
		shift
	done
	shift
	local -a flags=(-get-ratio "$GET_RATIO" "$@" -prefill=false -warmup 0)
	local before after status=0
	loadgen "${flags[@]}" -duration "$WARMUP" -allow-errors >>"$errlog" 2>&1 || true
	before=$(cpu_ticks "${pids[@]}")
	loadgen "${flags[@]}" -duration "${MEASURE:-$DURATION}" -json >"$json" 2>>"$errlog" || status=$?
	after=$(cpu_ticks "${pids[@]}")
	RESULT["$load|$column|rss"]=$(rss_mib "${pids[@]}")
	if [[ $status != 0 ]]; then
		log "$load on $column: loadgen exited $status:"
		cat "$errlog" >&2
	fi
	record "$load" "$column" mixed "$json" $((after - before))
	if ! check_alive "$load on $column" "${pids[@]}"; then
		RESULT["$load|$column|ops_s"]=crashed
	fi
}

# record_stats reads STAT evictions and curr_items from the server at $3
# into the results of load $1, column $2.
record_stats() {
	local load=$1 column=$2 addr=$3 json=$WORKDIR/$1-$2.stats.json
	if loadgen -mode stats -addr "$addr" -json >"$json" 2>>"$WORKDIR/$load-$column.loadgen.log"; then
		RESULT["$load|$column|evictions"]=$(json_string "$json" evictions)
		RESULT["$load|$column|items"]=$(json_string "$json" curr_items)
	else
		log "$load on $column: STAT failed"
	fi
}

# record stores the metrics of one run in RESULT. Runs of the same load
# and column add up (the segments of a cluster load): ops/s and CPU µs/op
# are over their total time and requests, counts are summed, and each
# latency percentile is the worst segment's. A failed run fails the cell.
record() {
	local load=$1 server=$2 kind=$3 json=$4 ticks=$5
	local key="$load|$server"
	local ops secs f
	ops=$(json_number "$json" ops)
	secs=$(json_number "$json" seconds)
	if [[ -z $ops || -z $secs || ${RESULT[$key|ops_s]:-} == failed ]]; then
		RESULT[$key|ops_s]=failed
		return 0
	fi
	ops=$((${RESULT[$key|ops]:-0} + ops))
	ticks=$((${RESULT[$key|ticks]:-0} + ticks))
	secs=$(calc 'a + b' "a=${RESULT[$key|secs]:-0}" "b=$secs")
	RESULT[$key|ops]=$ops RESULT[$key|ticks]=$ticks RESULT[$key|secs]=$secs
	RESULT[$key|ops_s]=$(calc 'sprintf("%.0f", ops / secs)' "ops=$ops" "secs=$secs")
	if [[ $kind == mixed ]]; then
		for f in p50 p99 p999; do
			RESULT[$key|$f]=$(calc 'sprintf("%.1f", (old != "" && old + 0 > x) ? old : x)' \
				"old=${RESULT[$key|$f]:-}" "x=$(json_number "$json" "${f}_us")")
		done
	fi
	RESULT[$key|cpu]=$(calc 'ops > 0 ? sprintf("%.2f", t * 1e6 / hz / ops) : "-"' \
		"t=$ticks" "hz=$CLK_TCK" "ops=$ops")
	local n
	for f in errors conn_errors get_misses; do
		n=$(json_number "$json" "$f")
		RESULT[$key|${f#get_}]=$((${RESULT[$key|${f#get_}]:-0} + ${n:-0}))
	done
	RESULT[$key|vbuckets]=$(json_number "$json" owned_vbuckets)
}

# ------------------------------------------------------ 3-node clusters

# start_cluster starts CLUSTER_SIZE nodes named bench0.. on fresh ports, the
# first alone and the others joining it, with the node flags given (and
# NODE_ARGS), and waits until they have settled. It sets CL_PIDS, CL_KV (the
# nodes' host:port) and CL_HTTP; $1 names the log files.
start_cluster() {
	local tag=$1
	shift
	local -a args=("$@") extra join=()
	local i kv gossip http logfile first_gossip=
	read -r -a extra <<<"$NODE_ARGS"
	CL_PIDS=()
	CL_KV=()
	CL_HTTP=()
	CL_LOGS=()
	for ((i = 0; i < CLUSTER_SIZE; i++)); do
		free_port
		kv=$PORT
		free_port
		gossip=$PORT
		free_port
		http=$PORT
		join=()
		if [[ -n $first_gossip ]]; then
			join=(-join "$first_gossip")
		else
			first_gossip=127.0.0.1:$gossip
		fi
		logfile=$WORKDIR/$tag-node$i.log
		"${SERVER_PIN[@]}" "$NODE" -listen "127.0.0.1:$kv" -gossip "127.0.0.1:$gossip" \
			-http "127.0.0.1:$http" -name "bench$i" -memory-limit "${MEMORY_MIB}MiB" \
			-drain-timeout "$CLUSTER_DRAIN" "${join[@]}" "${args[@]}" "${extra[@]}" >"$logfile" 2>&1 &
		CL_PIDS+=("$!")
		STARTED_PIDS+=("$!")
		LOG_OF[$!]=$logfile
		CL_KV+=("127.0.0.1:$kv")
		CL_HTTP+=("127.0.0.1:$http")
		CL_LOGS+=("$logfile")
	done
	for ((i = 0; i < CLUSTER_SIZE; i++)); do
		wait_for_port "${CL_PIDS[$i]}" "${CL_KV[$i]##*:}" "${CL_LOGS[$i]}"
	done
	wait_settled
}

# cluster_view prints what node $1 (index) reports, as "rev alive-members
# forward-rows moving active-vbuckets vbuckets map-servers", or fails if it
# is not healthy or does not answer.
cluster_view() {
	local http=${CL_HTTP[$1]}
	curl -fsS --max-time 2 "http://$http/healthz" >/dev/null 2>&1 || return 1
	curl -fsS --max-time 2 "http://$http/cluster" 2>/dev/null | jq -r '[
		.rev,
		([.members[]? | select(.state == "alive") | .name] | sort | join(",")),
		((.map.forward // []) | length),
		(.progress.vbuckets_moving // 0),
		([.members[]? | select(.state == "alive") | .active_vbuckets] | add // 0),
		.vbuckets,
		((.map.servers // []) | length)
	] | map(tostring) | join(" ")' 2>/dev/null
}

# wait_settled waits up to CLUSTER_TIMEOUT seconds until every node of the
# cluster is healthy and reports the same rev, every node alive, no forward
# map, no vbucket moving, the map's servers exactly the nodes, and the alive
# members' active vbuckets adding up to all of them. It dies with the last
# views and log tails otherwise.
wait_settled() {
	local deadline=$((SECONDS + CLUSTER_TIMEOUT)) i view ok first want
	local -a views
	want=$(for ((i = 0; i < CLUSTER_SIZE; i++)); do echo "bench$i"; done | sort | paste -sd, -)
	while true; do
		ok=1
		views=()
		first=
		for ((i = 0; i < CLUSTER_SIZE; i++)); do
			if ! kill -0 "${CL_PIDS[$i]}" 2>/dev/null; then
				tail -n 20 "${CL_LOGS[$i]}" >&2
				die "cluster node bench$i exited while the cluster formed"
			fi
			if ! view=$(cluster_view "$i") || [[ -z $view ]]; then
				ok=0
				views+=("bench$i: not healthy")
				continue
			fi
			views+=("bench$i: $view")
			local rev alive fwd moving active nvb servers
			read -r rev alive fwd moving active nvb servers <<<"$view"
			if [[ $alive != "$want" || $fwd != 0 || $moving != 0 || $active != "$nvb" || $servers != "$CLUSTER_SIZE" ]]; then
				ok=0
			fi
			if [[ -z $first ]]; then
				first=$rev
			elif [[ $rev != "$first" ]]; then
				ok=0
			fi
		done
		if ((ok)); then
			log "cluster settled at rev $first (${#views[@]} nodes)"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			log "views (rev alive forward moving active vbuckets servers): ${views[*]}"
			for ((i = 0; i < CLUSTER_SIZE; i++)); do
				echo "--- the end of bench$i's log:" >&2
				tail -n 10 "${CL_LOGS[$i]}" >&2
			done
			die "the cluster did not settle within ${CLUSTER_TIMEOUT}s"
		fi
		sleep 0.2
	done
}

# cluster_items prints STAT curr_items of every cluster node, as "a/b/c".
cluster_items() {
	local kv json=$WORKDIR/cluster-stats.json
	local -a items=()
	for kv in "${CL_KV[@]}"; do
		if loadgen -mode stats -addr "$kv" -json >"$json" 2>/dev/null; then
			items+=("$(json_string "$json" curr_items)")
		else
			items+=("?")
		fi
	done
	(
		IFS=/
		echo "${items[*]}"
	)
}

stop_cluster() {
	stop_servers "${CL_PIDS[@]}"
	CL_PIDS=()
}

# run_fwd: one cluster with -replicas 0; the keys are those node B (bench1)
# holds active. The same load runs against B ("direct") and against A
# (bench0), which forwards every request to B ("forwarded"), in ROUNDS
# alternating segments each.
run_fwd() {
	local load=$1
	shift
	local -a flags=("$@")
	local a b keys items round column addr errlog=$WORKDIR/$load.loadgen.log
	log "$load: starting a $CLUSTER_SIZE-node cluster (-replicas 0)"
	start_cluster "$load" -replicas 0
	a=${CL_KV[0]} b=${CL_KV[1]}
	keys=$(flag_value -keys "$KEYS" "${flags[@]}")
	log "$load: prefilling $keys keys owned by B ($b) through B"
	prefill "$load" direct "$errlog" -addr "$b" -owner "$b" -items "$keys"
	for ((round = 1; round <= ROUNDS; round++)); do
		for column in $(columns_in_round "$round" direct forwarded); do
			addr=$b
			[[ $column == forwarded ]] && addr=$a
			log "$load: $column, against $addr (segment $round of $ROUNDS)"
			MEASURE=$(segment) measure_mixed "$load" "$column" "$WORKDIR/$load-$column.$round.json" "$errlog" \
				"${CL_PIDS[@]}" -- -addr "$addr" -owner "$b" -value-size "$VALUE_SIZE" -keys "$keys" "${flags[@]}"
		done
	done
	items=$(cluster_items)
	stop_cluster
	NOTES+=("$load: keys of B's ${RESULT[$load|direct|vbuckets]:-?} active vbuckets; A forwards to B over its peer connections; CPU and RSS are the sums over the 3 nodes; GET misses direct ${RESULT[$load|direct|misses]:--}, forwarded ${RESULT[$load|forwarded|misses]:--}; STAT curr_items A/B/C after the runs $items")
}

# run_repl: two clusters, without and with one sync replica, both running;
# the keys are those node A (bench0) of each holds active, and the load
# talks to that A, in ROUNDS alternating segments per cluster. CPU and RSS
# are those of the loaded cluster's nodes.
run_repl() {
	local load=$1
	shift
	local -a flags=("$@")
	local column keys errlog round
	local -a args all=()
	local -A counts pids kv
	keys=$(flag_value -keys "$KEYS" "${flags[@]}")
	for column in repl0 repl1; do
		if [[ $column == repl0 ]]; then
			args=(-replicas 0 -replication sync)
		else
			args=(-replicas 1 -replication sync)
		fi
		log "$load: starting a $CLUSTER_SIZE-node cluster (${args[*]})"
		start_cluster "$load-$column" "${args[@]}"
		pids[$column]=${CL_PIDS[*]} kv[$column]=${CL_KV[*]}
		all+=("${CL_PIDS[@]}")
		prefill "$load" "$column" "$WORKDIR/$load-$column.loadgen.log" -addr "${CL_KV[0]}" -owner "${CL_KV[0]}" -items "$keys"
	done
	for ((round = 1; round <= ROUNDS; round++)); do
		for column in $(columns_in_round "$round" repl0 repl1); do
			read -r -a CL_PIDS <<<"${pids[$column]}"
			read -r -a CL_KV <<<"${kv[$column]}"
			errlog=$WORKDIR/$load-$column.loadgen.log
			log "$load: $column, against A (${CL_KV[0]}) (segment $round of $ROUNDS)"
			MEASURE=$(segment) measure_mixed "$load" "$column" "$WORKDIR/$load-$column.$round.json" "$errlog" \
				"${CL_PIDS[@]}" -- -addr "${CL_KV[0]}" -owner "${CL_KV[0]}" -value-size "$VALUE_SIZE" -keys "$keys" "${flags[@]}"
		done
	done
	for column in repl0 repl1; do
		read -r -a CL_KV <<<"${kv[$column]}"
		counts[$column]=$(cluster_items)
	done
	CL_PIDS=("${all[@]}")
	stop_cluster
	NOTES+=("$load: keys of A's active vbuckets (${RESULT[$load|repl0|vbuckets]:-?} and ${RESULT[$load|repl1|vbuckets]:-?} of them), all writes sent to A; CPU and RSS are the sums over the 3 nodes of the cluster loaded; STAT curr_items A/B/C after the run: replicas 0 ${counts[repl0]}, replicas 1 ${counts[repl1]}")
}

# ----------------------------------------------------------------- report

FIELDS=(ops_s p50 p99 p999 cpu rss errors)

# columns_of sets COL_A and COL_B (result columns: baseline, candidate), their
# table labels LABEL_A and LABEL_B, and RATIO_LABEL, for load kind $1.
columns_of() {
	case $1 in
	fwd)
		COL_A=direct COL_B=forwarded
		LABEL_A="direct (to B)" LABEL_B="forwarded (A to B)"
		RATIO_LABEL="forwarded/direct"
		;;
	repl)
		COL_A=repl0 COL_B=repl1
		LABEL_A="replicas 0" LABEL_B="replicas 1 sync"
		RATIO_LABEL="replicated/unrepl."
		;;
	*)
		COL_A=$BASELINE COL_B=$CANDIDATE
		LABEL_A=$BASELINE LABEL_B=$CANDIDATE
		RATIO_LABEL="$CANDIDATE/$BASELINE"
		;;
	esac
}

# row prints one markdown table row.
row() {
	printf '| %-9s | %-20s | %9s | %8s | %8s | %8s | %9s | %7s | %6s | %-20s |\n' "$@"
}

# ratio prints a/b as "1.23x", or "-" if either is not a positive number.
ratio() {
	calc '(a + 0 > 0 && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-"' "a=$1" "b=$2"
}

print_table() {
	local line load kind field
	local -a values ratios
	echo
	echo "| load      | server               |     ops/s |   p50 µs |   p99 µs |  p999 µs | CPU µs/op | RSS MiB | errors | ratio: better when   |"
	echo "|-----------|----------------------|----------:|---------:|---------:|---------:|----------:|--------:|-------:|----------------------|"
	for line in "${LOADS[@]}"; do
		read -r load kind _ <<<"$line"
		if ! runs "$load" "$kind"; then
			continue
		fi
		columns_of "$kind"
		values=()
		for field in "${FIELDS[@]}"; do
			values+=("${RESULT[$load|$COL_A|$field]:--}")
		done
		row "$load" "$LABEL_A" "${values[@]}" ""
		values=()
		for field in "${FIELDS[@]}"; do
			values+=("${RESULT[$load|$COL_B|$field]:--}")
		done
		row "$load" "$LABEL_B" "${values[@]}" ""
		ratios=()
		for field in "${FIELDS[@]}"; do
			if [[ $field == errors ]]; then
				ratios+=(-)
			else
				ratios+=("$(ratio "${RESULT[$load|$COL_B|$field]:-}" "${RESULT[$load|$COL_A|$field]:-}")")
			fi
		done
		row "$load" "$RATIO_LABEL" "${ratios[@]}" "ops/s >1, others <1"
	done
	echo
	echo "Ratio rows are the second row over the first ($CANDIDATE/$BASELINE; fwd: forwarded/direct;" \
		"repl: replicas 1 sync/replicas 0): above 1 is better for ops/s; below 1 is better for latency, CPU and RSS."
	if ((${#NOTES[@]})); then
		echo
		printf -- '- %s\n' "${NOTES[@]}"
	fi
}

# ------------------------------------------------------------------ targets

# One target per line: load, column ("ratio" for the ratio row, else a
# result column), field, comparison (">=", "<=" or "=="), bound, and what to
# call it. A bound may use shell arithmetic.
target_lines() {
	local c=$CANDIDATE
	cat <<EOF
c16-d1   ratio  ops_s        >=  1.0  ops/s $c/$BASELINE, higher is better
c16-d1   ratio  cpu          <=  1.0  CPU time/op $c/$BASELINE, lower is better
c16-d1   ratio  p99          <=  1.0  p99 $c/$BASELINE, lower is better
c16-d16  ratio  ops_s        >=  1.0  ops/s $c/$BASELINE, higher is better
c16-d16  ratio  cpu          <=  1.0  CPU time/op $c/$BASELINE, lower is better
c16-d16  ratio  p99          <=  1.0  p99 $c/$BASELINE, lower is better
c256-d1  ratio  ops_s        >=  1.0  ops/s $c/$BASELINE, higher is better
c256-d1  $c     conn_errors  ==  0    connections of $c that failed
fill-1M  ratio  rss          <=  1.2  RSS $c/$BASELINE, lower is better
evict    $c     rss          <=  $(evict_bound)  RSS MiB of $c, limit $EVICT_MEMORY_MIB + overhead $(evict_overhead) MiB
gc-1M    ratio  p999         <=  2.0  p999 $c/$BASELINE, lower is better
fwd      ratio  ops_s        >=  0.5  ops/s forwarded/direct, higher is better
repl     ratio  cpu          <=  2.0  CPU time/op (3 nodes) replicated/unreplicated, lower is better
repl-d1  ratio  cpu          <=  2.0  CPU time/op (3 nodes) replicated/unreplicated, lower is better
EOF
}

# evict_overhead prints the node's documented memory overhead in MiB for the
# evict load (README, "Memory"): EVICT_OVERHEAD_MIB if set, else 32 MiB plus
# 40 bytes per item it holds after the load (plus one connection's 16 KiB).
evict_overhead() {
	if [[ -n $EVICT_OVERHEAD_MIB ]]; then
		echo "$EVICT_OVERHEAD_MIB"
		return
	fi
	local items=${RESULT[evict|$CANDIDATE|items]:-0}
	[[ $items =~ ^[0-9]+$ ]] || items=0
	echo $(((32 << 20 | 16 << 10) + 40 * items + (1 << 20) - 1 >> 20))
}

evict_bound() {
	echo $((EVICT_MEMORY_MIB + $(evict_overhead)))
}

# print_targets prints every target of the loads that ran with its figure
# and PASS or FAIL, and sets FAILED to the number that failed.
print_targets() {
	local load col field op bound what kind value shown bound_shown result passed=0
	FAILED=0
	echo
	echo "## Targets"
	echo
	printf '| %-72s | %9s | %-8s | %-6s |\n' target measured bound result
	printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 1 74))" "----------:" "----------" "--------"
	while read -r load col field op bound what; do
		kind=$(kind_of "$load")
		if [[ -z $kind ]] || ! runs "$load" "$kind"; then
			continue
		fi
		columns_of "$kind"
		if [[ $col == ratio ]]; then
			value=$(calc '(a + 0 > 0 && b + 0 > 0) ? sprintf("%.4f", a / b) : ""' \
				"a=${RESULT[$load|$COL_B|$field]:-}" "b=${RESULT[$load|$COL_A|$field]:-}")
			shown=$([[ -n $value ]] && calc 'sprintf("%.3fx", v)' "v=$value" || echo -)
			bound_shown="$op ${bound}x"
		else
			value=${RESULT[$load|$col|$field]:-}
			[[ $value =~ ^[0-9.]+$ ]] || value=
			shown=${value:--}
			bound_shown="$op $bound"
		fi
		if [[ -n $value ]] && [[ $(calc "v $op b ? \"y\" : \"n\"" "v=$value" "b=$bound") == y ]]; then
			result=PASS
			passed=$((passed + 1))
		else
			result=FAIL
			FAILED=$((FAILED + 1))
		fi
		printf '| %-72s | %9s | %-8s | %-6s |\n' "$load: $what" "$shown" "$bound_shown" "$result"
	done < <(target_lines)
	echo
	echo "targets: $passed passed, $FAILED failed"
}

# kind_of prints the kind of load $1, or nothing if there is no such load.
kind_of() {
	local line load kind
	for line in "${LOADS[@]}"; do
		read -r load kind _ <<<"$line"
		if [[ $load == "$1" ]]; then
			echo "$kind"
			return 0
		fi
	done
}

print_context() {
	local model procs
	model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	echo "## vbcache benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- machine: $(nproc) CPUs, ${model:-unknown CPU}, $(uname -sr)"
	echo "- memcached: $(memcached -V 2>/dev/null || echo unknown), -m $MEMORY_MIB -c 4096 ${MEMCACHED_ARGS:-(default threads)}"
	if [[ -n $NODE ]]; then
		# GOMAXPROCS as the nodes logged it (-procs; one less than the CPUs by default)
		procs=$(cat "${LOG_OF[@]}" 2>/dev/null | grep -o 'procs=[0-9]*' | cut -d= -f2 | sort -un | paste -sd/ -)
		echo "- node: $("$NODE" -version 2>/dev/null || echo unknown), -memory-limit ${MEMORY_MIB}MiB${NODE_ARGS:+ $NODE_ARGS}, GOMAXPROCS ${procs:-unknown}"
	else
		echo "- node: not run (BENCH_ONLY_MEMCACHED=1: second column is memcached again)"
	fi
	echo "- loads: binary protocol, ${VALUE_SIZE}-byte values; mixed loads: $KEYS keys prefilled (gc-1M: 1000000)," \
		"GET ratio $GET_RATIO, $WARMUP warmup then $DURATION measured"
	if selected evict; then
		echo "- evict: $EVICT_ITEMS items into both servers at -m $EVICT_MEMORY_MIB / -memory-limit ${EVICT_MEMORY_MIB}MiB;" \
			"node RSS bound: limit + ${EVICT_OVERHEAD_MIB:-32 MiB + 40 B per item held} (EVICT_OVERHEAD_MIB)"
	fi
	if [[ -n $NODE ]] && { selected fwd || selected repl; }; then
		echo "- fwd, repl: $CLUSTER_SIZE node processes on 127.0.0.1, -memory-limit ${MEMORY_MIB}MiB each, legacy client" \
			"(no HELLO, vbucket 0), $KEYS keys held active by one node; fwd: -replicas 0, repl: SETs only," \
			"-replicas 0 against -replicas 1 -replication sync; each column measured in $ROUNDS alternating" \
			"segments of $(segment) after $WARMUP warmup each (latencies: the worst segment's)"
	fi
	echo "- CPU: $CPU_NOTE; loadgen GOMAXPROCS=$LOADGEN_GOMAXPROCS"
	echo "- CPU µs/op: server utime+stime over the measured run / ops (cluster loads: all 3 nodes);" \
		"RSS: VmRSS after the run (cluster loads: summed); latency from batch write to response arrival"
}

# note_evictions adds the STAT figures of evict load $1 to NOTES.
note_evictions() {
	local load=$1 a=$BASELINE b=$CANDIDATE
	NOTES+=("$load: STAT after storing $EVICT_ITEMS items: $a ${RESULT[$load|$a|evictions]:-?} evictions, ${RESULT[$load|$a|items]:-?} items left; $b ${RESULT[$load|$b|evictions]:-?} evictions, ${RESULT[$load|$b|items]:-?} items left")
}

# selected succeeds if load $1 is to run.
selected() {
	[[ -z $BENCH_LOADS || " $BENCH_LOADS " == *" $1 "* ]]
}

# runs succeeds if load $1 of kind $2 is selected and can run: the cluster
# loads need the node.
runs() {
	selected "$1" || return 1
	case $2 in
	fwd | repl) [[ $BENCH_ONLY_MEMCACHED != 1 ]] ;;
	*) return 0 ;;
	esac
}

# check_loads dies if BENCH_LOADS names a load that does not exist, or if
# ROUNDS, or DURATION for the cluster loads, cannot be used.
check_loads() {
	local name
	for name in $BENCH_LOADS; do
		[[ -n $(kind_of "$name") ]] || die "BENCH_LOADS: no load named $name (loads: $(printf '%s\n' "${LOADS[@]}" | awk '{ print $1 }' | paste -sd' ' -))"
	done
	[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: give a whole number of segments, 1 or more"
	if selected fwd || selected repl || selected repl-d1; then
		segment >/dev/null # fails now, not after the memcached loads, if DURATION cannot be split
	fi
}

# ------------------------------------------------------------------- main

main() {
	local line load kind server
	local -a flags
	check_loads
	ulimit -n 8192 2>/dev/null || true # memcached -c 4096 needs the descriptors
	ensure_tools
	build
	choose_cpus
	for line in "${LOADS[@]}"; do
		read -r load kind _ <<<"$line"
		read -r -a flags <<<"$line"
		flags=("${flags[@]:2}")
		if ! selected "$load"; then
			continue
		fi
		if ! runs "$load" "$kind"; then
			log "$load: skipped (needs the node; BENCH_ONLY_MEMCACHED=1)"
			continue
		fi
		case $kind in
		fwd) run_fwd "$load" "${flags[@]}" ;;
		repl) run_repl "$load" "${flags[@]}" ;;
		*)
			for server in "$BASELINE" "$CANDIDATE"; do
				run_one "$load" "$kind" "$server" "${flags[@]}"
			done
			if [[ $kind == evict ]]; then
				note_evictions "$load"
			fi
			;;
		esac
	done
	print_context
	print_table
	print_targets
	if [[ $BENCH_STRICT == 1 ]] && ((FAILED > 0)); then
		exit 1
	fi
}

main "$@"
