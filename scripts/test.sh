#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (.ci/run calls this script).
#
# Installs what the tests need if it is missing (Debian packages through
# apt-get, Go modules through the module proxy), then runs gofmt and go vet,
# `go test -race` over every package (unit tests, fuzz seed corpora, the
# end-to-end runs of real clients against a freshly built node), and a short
# fuzzing pass over the frame decoder, a live connection and the store.
# The dashboard tests drive headless Chromium (Debian's chromium) and leave
# their screenshots in $VBCACHE_SCREENSHOT_DIR, by default
# ${TMPDIR:-/tmp}/vbcache-screenshots.
#
#   FUZZTIME=30s scripts/test.sh   # fuzz longer (default 10s per target; 0 skips)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZTIME=${FUZZTIME:-10s}
PACKAGES=(memcached libmemcached-tools python3 python3-binary-memcached python3-pylibmc ruby ruby-dalli chromium)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "== installing ${missing[*]}"
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== go mod download"
go mod download

echo "== gofmt, go vet"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...

echo "== go test -race ./..."
go test -race -count=1 -timeout 10m ./...

if [[ $FUZZTIME != 0 ]]; then
	for target in ./protocol:FuzzParse ./server:FuzzConn ./store:FuzzStore ./store:FuzzEviction; do
		echo "== fuzz ${target#*:} for $FUZZTIME"
		# -fuzzminimizetime: the default (60 s per input) had both workers
		# minimizing the first new inputs for most of a 10 s run; 100 runs
		# each leaves the time to fuzzing (FuzzStore: about 6,000 inputs
		# in 10 s before, 200,000 after).
		go test -run='^$' -fuzz="^${target#*:}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime=100x "${target%%:*}"
	done
fi
echo "== all tests passed"
