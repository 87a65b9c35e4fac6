#!/usr/bin/env bash
# bench.sh: run the same binary-protocol loads against memcached and against
# the vbcache node, one server at a time, and print a markdown table.
#
# Usage (from anywhere):
#   scripts/bench.sh
#   DURATION=30s scripts/bench.sh
#   BENCH_LOADS="c16-d1 c16-d16" scripts/bench.sh
#   BENCH_ONLY_MEMCACHED=1 scripts/bench.sh    # memcached in both columns
#   NODE_BIN=/path/to/node scripts/bench.sh    # use a prebuilt node
#
# Settings, all from the environment:
#   DURATION              measured time per load and server       (10s)
#   WARMUP                unmeasured load before each measurement (1s)
#   KEYS                  key space of the mixed loads            (100000)
#   VALUE_SIZE            value size in bytes                     (100)
#   GET_RATIO             fraction of GETs in the mixed loads     (0.9)
#   BENCH_LOADS           names of the loads to run, space-separated (all)
#   NODE_BIN              node binary to use instead of building ./cmd/node
#   NODE_ARGS             extra node flags, word-split            (none)
#   MEMCACHED_ARGS        extra memcached flags, word-split       (none)
#   BENCH_ONLY_MEMCACHED  1: run memcached in the node's column too (0)
#   LOADGEN_GOMAXPROCS    GOMAXPROCS of the load generator        (1)
#   PIN_CPUS              1: pin the server to CPUs 0..n-2 and loadgen to
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
# Every server gets a fresh process and port for every load, so RSS and CPU
# belong to that load alone. Only 127.0.0.1 is used. Every process the script
# starts is stopped on exit.
set -euo pipefail

# ---------------------------------------------------------------- settings

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
GET_RATIO=${GET_RATIO:-0.9}
BENCH_LOADS=${BENCH_LOADS:-}
NODE_BIN=${NODE_BIN:-}
NODE_ARGS=${NODE_ARGS:-}
BENCH_ONLY_MEMCACHED=${BENCH_ONLY_MEMCACHED:-0}
LOADGEN_GOMAXPROCS=${LOADGEN_GOMAXPROCS:-1}
MEMCACHED_ARGS=${MEMCACHED_ARGS:-}
PIN_CPUS=${PIN_CPUS:-0}

# ------------------------------------------------------------------- loads
#
# One load per line: name, kind, then loadgen flags.
#   mixed: store KEYS items, run WARMUP of the load unmeasured, then measure
#          DURATION of the GET/SET mix (GET_RATIO, uniform over KEYS keys).
#   fill:  measure storing -items items with pipelined SETQ (memory test:
#          look at RSS; "ops" are items stored).
# To add a load, add a line.
LOADS=(
	"c16-d1     mixed  -conns 16 -depth 1"
	"c16-d16    mixed  -conns 16 -depth 16"
	"c256-d1    mixed  -conns 256 -depth 1"
	"fill-1M    fill   -conns 16 -items 1000000"
)

# The two columns of the comparison. The second is "node" unless
# BENCH_ONLY_MEMCACHED=1, when memcached runs in both.
BASELINE=memcached
CANDIDATE=node
if [[ $BENCH_ONLY_MEMCACHED == 1 ]]; then
	CANDIDATE=memcached2
fi

# ---------------------------------------------------------------- helpers

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/vbcache-bench.XXXXXX")
STARTED_PIDS=()
CLK_TCK=$(getconf CLK_TCK)

log() {
	echo "bench: $*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# cleanup stops every process this script started and removes WORKDIR.
cleanup() {
	local pid
	for pid in "${STARTED_PIDS[@]}"; do
		stop_process "$pid"
	done
	rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_process sends SIGTERM, waits up to 10 s, then sends SIGKILL.
stop_process() {
	local pid=$1
	if ! kill -0 "$pid" 2>/dev/null; then
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			break
		fi
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid ignored SIGTERM for 10s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

as_root() {
	if [[ $(id -u) == 0 ]]; then
		"$@"
	else
		sudo "$@"
	fi
}

ensure_memcached() {
	if command -v memcached >/dev/null; then
		return 0
	fi
	log "memcached not found; installing it with apt-get"
	as_root apt-get update
	as_root apt-get install -y memcached
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

# free_port prints a port nothing listens on, below the ephemeral range.
free_port() {
	local port
	for _ in $(seq 1 100); do
		port=$((20000 + RANDOM % 12000))
		if ! port_open "$port"; then
			echo "$port"
			return 0
		fi
	done
	die "found no free port"
}

# start_server starts server $1 ("memcached", "memcached2" or "node") on
# 127.0.0.1:$2, logging to $3, and sets SERVER_PID. It returns once the server
# accepts connections.
start_server() {
	local name=$1 port=$2 logfile=$3
	local -a cmd extra
	case $name in
	memcached | memcached2)
		read -r -a extra <<<"$MEMCACHED_ARGS"
		cmd=(memcached -l 127.0.0.1 -p "$port" -U 0 -m 1024 -c 4096 "${extra[@]}")
		if [[ $(id -u) == 0 ]]; then
			cmd+=(-u root) # memcached refuses to run as root without -u
		fi
		;;
	node)
		read -r -a extra <<<"$NODE_ARGS"
		cmd=("$NODE" -listen "127.0.0.1:$port" -memory-limit 1GiB "${extra[@]}")
		;;
	*)
		die "unknown server $name"
		;;
	esac
	"${SERVER_PIN[@]}" "${cmd[@]}" >"$logfile" 2>&1 &
	SERVER_PID=$!
	STARTED_PIDS+=("$SERVER_PID")
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

# cpu_ticks prints utime+stime of pid $1 in clock ticks: fields 14 and 15 of
# /proc/PID/stat. Fields are counted after the command name, which is in
# parentheses and may contain spaces.
cpu_ticks() {
	local stat rest
	local -a fields
	stat=$(</proc/"$1"/stat)
	rest=${stat##*) }
	read -r -a fields <<<"$rest"
	# fields[0] is field 3 (state), so field 14 is fields[11].
	echo $((fields[11] + fields[12]))
}

# rss_mib prints VmRSS of pid $1 in MiB.
rss_mib() {
	awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' /proc/"$1"/status
}

# loadgen runs the load generator pinned and limited as chosen.
loadgen() {
	GOMAXPROCS=$LOADGEN_GOMAXPROCS "${LOADGEN_PIN[@]}" "$LOADGEN" "$@"
}

# json_number prints the number field $2 of loadgen's one-line JSON in file
# $1, or nothing if it is absent.
json_number() {
	grep -o "\"$2\":[-0-9.eE+]*" "$1" | head -n 1 | cut -d: -f2 || true
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

# ------------------------------------------------------- running one load

# Results, keyed "load|server|field".
declare -A RESULT

# run_one runs load $1 of kind $2 against a fresh server $3, passing the
# remaining arguments to loadgen, and records the results.
run_one() {
	local load=$1 kind=$2 server=$3
	shift 3
	local -a flags=("$@")
	local port addr logfile json errlog before after status=0

	port=$(free_port)
	addr=127.0.0.1:$port
	logfile=$WORKDIR/$load-$server.log
	json=$WORKDIR/$load-$server.json
	errlog=$WORKDIR/$load-$server.loadgen.log
	log "$load on $server (port $port)"
	start_server "$server" "$port" "$logfile"

	local -a common=(-addr "$addr" -value-size "$VALUE_SIZE")
	if [[ $kind == mixed ]]; then
		# Store every key, then warm up, outside the CPU measurement.
		if ! loadgen "${common[@]}" -mode load -items "$KEYS" -conns 16 >"$errlog" 2>&1; then
			log "$load on $server: prefill had errors:"
			cat "$errlog" >&2
		fi
		loadgen "${common[@]}" "${flags[@]}" -keys "$KEYS" -get-ratio "$GET_RATIO" \
			-prefill=false -warmup 0 -duration "$WARMUP" -allow-errors >>"$errlog" 2>&1 || true
		before=$(cpu_ticks "$SERVER_PID")
		loadgen "${common[@]}" "${flags[@]}" -keys "$KEYS" -get-ratio "$GET_RATIO" \
			-prefill=false -warmup 0 -duration "$DURATION" -json >"$json" 2>>"$errlog" || status=$?
		after=$(cpu_ticks "$SERVER_PID")
	else
		before=$(cpu_ticks "$SERVER_PID")
		loadgen "${common[@]}" "${flags[@]}" -mode load -json >"$json" 2>>"$errlog" || status=$?
		after=$(cpu_ticks "$SERVER_PID")
	fi
	RESULT["$load|$server|rss"]=$(rss_mib "$SERVER_PID")
	stop_server "$SERVER_PID"
	SERVER_PID=

	if [[ $status != 0 ]]; then
		log "$load on $server: loadgen exited $status:"
		cat "$errlog" >&2
	fi
	record "$load" "$server" "$kind" "$json" $((after - before))
}

# stop_server stops server pid $1 and forgets it.
stop_server() {
	local pid=$1 p
	local -a still=()
	stop_process "$pid"
	for p in "${STARTED_PIDS[@]}"; do
		if [[ $p != "$pid" ]]; then
			still+=("$p")
		fi
	done
	STARTED_PIDS=("${still[@]}")
}

# record stores the metrics of one run in RESULT.
record() {
	local load=$1 server=$2 kind=$3 json=$4 ticks=$5
	local key="$load|$server"
	local ops
	ops=$(json_number "$json" ops)
	if [[ -z $ops ]]; then
		RESULT[$key|ops_s]=failed
		return 0
	fi
	RESULT[$key|ops_s]=$(calc 'sprintf("%.0f", x)' "x=$(json_number "$json" ops_per_sec)")
	if [[ $kind == mixed ]]; then
		RESULT[$key|p50]=$(calc 'sprintf("%.1f", x)' "x=$(json_number "$json" p50_us)")
		RESULT[$key|p99]=$(calc 'sprintf("%.1f", x)' "x=$(json_number "$json" p99_us)")
		RESULT[$key|p999]=$(calc 'sprintf("%.1f", x)' "x=$(json_number "$json" p999_us)")
	fi
	RESULT[$key|cpu]=$(calc 'ops > 0 ? sprintf("%.2f", t * 1e6 / hz / ops) : "-"' \
		"t=$ticks" "hz=$CLK_TCK" "ops=$ops")
	RESULT[$key|errors]=$(json_number "$json" errors)
}

# ----------------------------------------------------------------- report

FIELDS=(ops_s p50 p99 p999 cpu rss errors)

# row prints one markdown table row.
row() {
	printf '| %-9s | %-20s | %9s | %8s | %8s | %8s | %9s | %7s | %6s |\n' "$@"
}

# ratio prints a/b as "1.23x", or "-" if either is not a positive number.
ratio() {
	calc '(a + 0 > 0 && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-"' "a=$1" "b=$2"
}

print_table() {
	local line load kind field server
	local -a values ratios
	echo
	echo "| load      | server               |     ops/s |   p50 µs |   p99 µs |  p999 µs | CPU µs/op | RSS MiB | errors |"
	echo "|-----------|----------------------|----------:|---------:|---------:|---------:|----------:|--------:|-------:|"
	for line in "${LOADS[@]}"; do
		read -r load kind _ <<<"$line"
		if ! selected "$load"; then
			continue
		fi
		for server in "$BASELINE" "$CANDIDATE"; do
			values=()
			for field in "${FIELDS[@]}"; do
				values+=("${RESULT[$load|$server|$field]:--}")
			done
			row "$load" "$server" "${values[@]}"
		done
		ratios=()
		for field in "${FIELDS[@]}"; do
			if [[ $field == errors ]]; then
				ratios+=(-)
			else
				ratios+=("$(ratio "${RESULT[$load|$CANDIDATE|$field]:-}" "${RESULT[$load|$BASELINE|$field]:-}")")
			fi
		done
		row "$load" "$CANDIDATE/$BASELINE" "${ratios[@]}"
	done
	echo
	echo "Ratio rows are $CANDIDATE / $BASELINE: above 1 is better for ops/s; below 1 is better for latency, CPU and RSS."
}

print_context() {
	local model
	model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	echo "## vbcache benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- machine: $(nproc) CPUs, ${model:-unknown CPU}, $(uname -sr)"
	echo "- memcached: $(memcached -V 2>/dev/null || echo unknown), -m 1024 -c 4096 ${MEMCACHED_ARGS:-(default threads)}"
	if [[ -n $NODE ]]; then
		echo "- node: $("$NODE" -version 2>/dev/null || echo unknown), -memory-limit 1GiB ${NODE_ARGS}"
	else
		echo "- node: not run (BENCH_ONLY_MEMCACHED=1: second column is memcached again)"
	fi
	echo "- loads: binary protocol, ${VALUE_SIZE}-byte values; mixed loads: $KEYS keys prefilled," \
		"GET ratio $GET_RATIO, $WARMUP warmup then $DURATION measured"
	echo "- CPU: $CPU_NOTE; loadgen GOMAXPROCS=$LOADGEN_GOMAXPROCS"
	echo "- CPU µs/op: server utime+stime over the measured run / ops; RSS: VmRSS after the run;" \
		"latency from batch write to response arrival"
}

# selected succeeds if load $1 is to run.
selected() {
	[[ -z $BENCH_LOADS || " $BENCH_LOADS " == *" $1 "* ]]
}

# ------------------------------------------------------------------- main

main() {
	local line load kind server
	local -a flags
	ulimit -n 8192 2>/dev/null || true # memcached -c 4096 needs the descriptors
	ensure_memcached
	build
	choose_cpus
	for line in "${LOADS[@]}"; do
		read -r load kind _ <<<"$line"
		read -r -a flags <<<"$line"
		flags=("${flags[@]:2}")
		if ! selected "$load"; then
			continue
		fi
		for server in "$BASELINE" "$CANDIDATE"; do
			run_one "$load" "$kind" "$server" "${flags[@]}"
		done
	done
	print_context
	print_table
}

main "$@"
