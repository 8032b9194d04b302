#!/usr/bin/env bash
# Regenerates docs/performance.md: rsvp's workloads, the engine limits and
# the peer systems, measured in one run on this machine. Run it from
# anywhere, on a machine that is otherwise idle; it takes a few minutes.
#   D=10s bench/run.sh        # duration of each measurement (default 10s)
# Peers need the local PostgreSQL, Redis and RabbitMQ (bench/peers/README.md
# says how to start them); a peer whose server is down is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
D="${D:-10s}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out="$tmp/results.jsonl"
cmds="$tmp/commands.txt"

go build -o "$tmp/rsvp" ./cmd/rsvp
run() { # run COMMAND...: record the command line and its JSON results
	echo "$*" >>"$cmds"
	"$@" --json >>"$out" || echo "warning: $* reported failures" >&2
}

for sync in always interval; do
	for c in 1 64; do
		run "$tmp/rsvp" bench roundtrip --sync "$sync" -c "$c" -d "$D"
	done
done
run "$tmp/rsvp" bench enqueue --sync always -c 64 -d "$D"

# Open loop at half of the durable closed-loop maximum measured above.
max=$(grep '"engine":"embedded:fsync"' "$out" | grep '"concurrency":64' | grep '"workload":"roundtrip"' |
	sed -E 's/.*"throughput_per_s":([0-9.]+).*/\1/' | head -1)
rate=$(awk -v m="${max:-1000}" 'BEGIN { printf "%d", m / 2 }')
run "$tmp/rsvp" bench roundtrip --sync always --rate "$rate" -d "$D"

run "$tmp/rsvp" bench limits -d "$D"

(cd bench/peers && go build -o "$tmp/peerbench" ./cmd/peerbench)
for c in 1 64; do
	run "$tmp/peerbench" all -c "$c" -d "$D"
done

machine="$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), $(go version | cut -d' ' -f3)"
go run ./bench/cmd/perftable --machine "$machine" --commands "$(sed "s|$tmp/||" "$cmds")" <"$out" >docs/performance.md
echo "wrote docs/performance.md"
