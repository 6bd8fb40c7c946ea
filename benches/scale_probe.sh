#!/usr/bin/env bash
# Issue 20's scale probes (worker/examples/scale_probe.rs) as a driver of its own
# against a separate local head with 2 CPUs, so the driver's RSS is its own:
# bytes per queued task (100,000 tasks waiting on one slow task; then 100,000 on
# plain values, queued for workers), and MiB/s of 200 tasks × 1 MiB results
# gathered with get_all.
#   bash benches/scale_probe.sh [QUEUED=100000] [RESULTS=200]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p manta --bin manta --example scale_probe
dir=$(mktemp -d)
target/release/manta start --head --block --port 0 --dashboard-port 0 --num-cpus 2 --temp-dir "$dir" >"$dir/head.log" 2>&1 &
head=$!
trap 'kill "$head" 2>/dev/null; wait "$head" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 500); do [ -s "$dir/address" ] && break; sleep 0.02; done
MANTA_TEMP_DIR="$dir" target/release/examples/scale_probe "${1:-100000}" "${2:-200}"
MANTA_TEMP_DIR="$dir" target/release/examples/scale_probe "${1:-100000}" 0 plain
