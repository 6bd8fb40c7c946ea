#!/usr/bin/env bash
# One head against many simulated nodes (integration/src/bin/gcs_load.rs): each
# registers, subscribes as a raylet does, answers health checks and reports its
# resources every 100 ms. Prints the head's CPU (cores) and RSS over the run.
#   bash benches/gcs_load.sh [NODES=1000] [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-1000}
seconds=${2:-30}
cargo build --release -q -p manta --bin manta
cargo build --release -q -p manta-integration --bin gcs_load
dir=$(mktemp -d)
# A simulated node's link counts as an open file on the head: make room for them.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
target/release/manta start --head --block --port 0 --dashboard-port 0 --num-cpus 0 --temp-dir "$dir" >"$dir/head.log" 2>&1 &
head=$!
trap 'kill "$head" 2>/dev/null; wait "$head" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 500); do [ -s "$dir/address" ] && break; sleep 0.02; done
target/release/gcs_load "$(cat "$dir/address")" "$dir/token" "$nodes" "$seconds" "$head"
