#!/usr/bin/env bash
# Counts the CPU instructions one op of a Go benchmark executes, under
# valgrind (Debian's valgrind package): a figure that, unlike time, does
# not move with a shared machine's noise, for comparing two versions of a
# hot path. It runs the benchmark twice, with N1 and N2 ops, and divides
# the difference, so set-up does not count.
#   bench/instructions.sh PACKAGE BENCH [N1 N2]
#   bench/instructions.sh . 'TelemetryCalls$'                      # 10000 30000
#   bench/instructions.sh . 'TelemetryOverhead/on$' 1000 4000       # a whole round trip
# Counts of benchmarks with many goroutines vary by a few percent between
# runs (scheduling); repeat them and compare ranges.
set -euo pipefail
pkg=${1:?package}
bench=${2:?benchmark regexp}
n1=${3:-10000}
n2=${4:-30000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/bench.test" "$pkg"
count() {
	# Go's preemption signals are turned off: valgrind's tools trip on them.
	GODEBUG=asyncpreemptoff=1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
		"$tmp/bench.test" -test.run '^$' -test.bench "$bench" -test.benchtime "${1}x" -test.cpu 1 2>&1 |
		awk '/I *refs/ { gsub(",", "", $4); print $4 }'
}
a=$(count "$n1")
b=$(count "$n2")
echo "$bench: $(((b - a) / (n2 - n1))) instructions/op"
