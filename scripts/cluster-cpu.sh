#!/usr/bin/env bash
# cluster-cpu.sh: the CPU each node of a local cluster spends per
# request, for A/B comparisons of builds on the cluster paths (BENCHMARKS.md,
# "Parking"). bench.sh gives the issue's verdict; this gives the per-node
# split and the system calls and context switches behind it.
#
#   scripts/cluster-cpu.sh [loadgen flags...]
#
# It starts NODES nodes (3) on 127.0.0.1, node i on ports 1620i, gossip 1710i
# and HTTP 1810i, stores 100,000 keys through the owner with loadgen's load
# mode, runs loadgen for 10 s against ADDR, and prints ops/s and, for
# each node, CPU µs per request (utime + stime from /proc/PID/stat over the
# 6 s in the middle of the run), then reads, writes and voluntary context
# switches per 1,000 requests. Examples:
#
#   REPLICAS=0 OWNER=127.0.0.1:16201 scripts/cluster-cpu.sh -conns 16 -depth 1   # forwarded, A to B
#   scripts/cluster-cpu.sh -conns 16 -depth 16 -get-ratio 0                      # sync-replicated SETs
#   PIN=1 scripts/cluster-cpu.sh -conns 16 -depth 16 -get-ratio 0                # nodes on CPU 0, loadgen on CPU 1
#   OWNER=all scripts/cluster-cpu.sh -conns 5 -depth 1 -get-ratio 0              # every node's keys, 5 connections each
#
# Needs curl and jq, and installs them with apt-get if missing, as bench.sh
# does.
#
# Environment:
#   NODE_BIN   node binary (default: built from ./cmd/node)
#   NODES      nodes in the cluster, 2 to 10 (3)
#   REPLICAS   -replicas of every node (1)
#   ADDR       node loadgen talks to (127.0.0.1:16200)
#   OWNER      node whose keys loadgen uses (127.0.0.1:16200); "all": one
#              loadgen per node, each with the flags given, on that node's
#              keys and talking to it (ADDR unused), as vbucket-aware
#              clients spread over the cluster; ops/s is their sum
#   PIN        1: pin the nodes to CPU 0 and loadgen to CPU 1 (0)
#   NODE_ENV   extra environment for the nodes, e.g. GOMAXPROCS=1
#   SYSCALLS   1: also count each node's system calls by kind over the same
#              6 s with perf's syscall tracepoints, per 1,000 requests; needs
#              root (or kernel.perf_event_paranoid -1) and installs Debian's
#              linux-perf if perf is missing (0)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NODES=${NODES:-3}
REPLICAS=${REPLICAS:-1}
ADDR=${ADDR:-127.0.0.1:16200}
OWNER=${OWNER:-127.0.0.1:16200}
PIN=${PIN:-0}
SYSCALLS=${SYSCALLS:-0}
if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 2 || NODES > 10)); then
	echo "cluster-cpu: NODES must be 2 to 10 (ports 1620N, 1710N and 1810N), not '$NODES'" >&2
	exit 2
fi
nodes=$(seq 0 $((NODES - 1)))
owners=("$OWNER") addrs=("$ADDR")
if [[ $OWNER == all ]]; then
	owners=() addrs=()
	for i in $nodes; do owners+=("127.0.0.1:1620$i"); done
	addrs=("${owners[@]}")
fi
work=$(mktemp -d)
pids=()
cleanup() {
	((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

missing=()
tools=(curl jq)
[[ $SYSCALLS == 1 ]] && tools+=(perf)
for tool in "${tools[@]}"; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
	sudo=()
	((EUID == 0)) || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	missing=("${missing[@]/#perf/linux-perf}") # Debian's package for perf
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -z ${NODE_BIN:-} ]]; then
	go build -o "$work/node" ./cmd/node
	NODE_BIN=$work/node
fi
go build -o "$work/loadgen" ./cmd/loadgen
node_pin=() lg_pin=()
if [[ $PIN == 1 ]]; then
	node_pin=(taskset -c 0) lg_pin=(taskset -c 1)
fi

for i in $nodes; do
	join=()
	((i > 0)) && join=(-join 127.0.0.1:17100)
	env ${NODE_ENV:-} "${node_pin[@]}" "$NODE_BIN" -listen 127.0.0.1:1620$i -gossip 127.0.0.1:1710$i \
		-http 127.0.0.1:1810$i -name n$i -replicas "$REPLICAS" "${join[@]}" -log-level warn >"$work/n$i.log" 2>&1 &
	pids+=($!)
done
# Wait until every node sees the same map of all of them, with nothing moving.
settled() {
	local i views=()
	for i in $nodes; do
		views+=("$(curl -fsS --max-time 2 "http://127.0.0.1:1810$i/cluster" 2>/dev/null | jq -r \
			'[.rev, ((.map.servers // []) | length), ((.map.forward // []) | length),
			  (.progress.vbuckets_moving // 0)] | map(tostring) | join(" ")' 2>/dev/null)")
	done
	[[ ${views[0]} == *" $NODES 0 0" ]] || return 1
	for i in $nodes; do
		[[ ${views[i]} == "${views[0]}" ]] || return 1
	done
}
for _ in $(seq 120); do
	settled && break
	sleep 0.5
done
settled || { echo "cluster-cpu: the cluster did not settle in 60 s" >&2; exit 1; }
for owner in "${owners[@]}"; do
	"$work/loadgen" -mode load -items 100000 -addr "$owner" -owner "$owner" >"$work/prefill.txt" 2>&1 ||
		{ cat "$work/prefill.txt" >&2; exit 1; }
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
io() {
	awk '/^syscr/{r=$2} /^syscw/{w=$2} END{printf "%s %s ", r, w}' "/proc/$1/io"
	cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/{v+=$2} END{print v}'
}
lgs=()
for j in "${!owners[@]}"; do
	GOMAXPROCS=1 "${lg_pin[@]}" "$work/loadgen" -addr "${addrs[j]}" -owner "${owners[j]}" -duration 10s -warmup 1s \
		-keys 100000 -prefill=false "$@" >"$work/run$j.txt" 2>&1 &
	lgs+=($!)
done
sleep 4
c0=() s0=()
for i in $nodes; do c0[i]=$(cpu "${pids[i]}") s0[i]=$(io "${pids[i]}"); done
if [[ $SYSCALLS == 1 ]]; then
	events=
	for call in read write epoll_pwait epoll_wait epoll_ctl futex nanosleep sched_yield; do
		events+=${events:+,}syscalls:sys_enter_$call
	done
	perfs=()
	for i in $nodes; do
		perf stat -x, -e "$events" -p "${pids[i]}" -- sleep 6 2>"$work/syscalls$i.csv" &
		perfs+=($!)
	done
fi
sleep 6
c1=() s1=()
for i in $nodes; do c1[i]=$(cpu "${pids[i]}") s1[i]=$(io "${pids[i]}"); done
rate=0
for j in "${!lgs[@]}"; do
	wait "${lgs[j]}" || { cat "$work/run$j.txt"; exit 1; }
	rate=$(awk -v sum="$rate" '/^measured/{print sum + $(NF-1)}' "$work/run$j.txt")
done
hz=$(getconf CLK_TCK)
if [[ $OWNER == all ]]; then
	echo "loadgen $* against each of the $NODES nodes (its own keys), replicas $REPLICAS, pinned $PIN: $rate ops/s in all"
else
	echo "loadgen $* against $ADDR (keys of $OWNER), replicas $REPLICAS, pinned $PIN: $rate ops/s"
fi
total=0
for i in $nodes; do
	ticks=$((c1[i] - c0[i]))
	total=$((total + ticks))
	read -r r0 w0 v0 <<<"${s0[i]}"
	read -r r1 w1 v1 <<<"${s1[i]}"
	awk -v n="n$i" -v t="$ticks" -v hz="$hz" -v r="$rate" -v dr=$((r1 - r0)) -v dw=$((w1 - w0)) -v dv=$((v1 - v0)) \
		'BEGIN{printf "  %s: %.2f µs/op; per 1k ops: %.0f reads, %.0f writes, %.0f context switches\n",
			n, t * 1e6 / hz / (r * 6), dr * 1000 / (r * 6), dw * 1000 / (r * 6), dv * 1000 / (r * 6)}'
done
awk -v t="$total" -v hz="$hz" -v r="$rate" 'BEGIN{printf "  total: %.2f µs/op\n", t * 1e6 / hz / (r * 6)}'
if [[ $SYSCALLS == 1 ]]; then
	wait "${perfs[@]}"
	for i in $nodes; do
		awk -F, -v n="n$i" -v r="$rate" '$3 ~ /sys_enter_/ {sub(/.*sys_enter_/, "", $3); line = line sprintf(" %s %.0f,", $3, $1 * 1000 / (r * 6))}
			END {sub(/,$/, "", line); print "  " n " system calls per 1k ops:" line}' "$work/syscalls$i.csv"
	done
fi
