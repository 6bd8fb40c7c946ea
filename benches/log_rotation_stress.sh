#!/usr/bin/env bash
# The rotated-log stress loop: runs the test that floods 5,000 lines through a
# file rotated every 20 kB, N times in a row, while both cores are kept busy by
# two spinning processes (started here, stopped by pid at the end). Any line
# missing or printed twice fails the run.
#   bash benches/log_rotation_stress.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
cargo test -q -p manta-integration --test t80_logs --no-run
spinners=()
cleanup() { for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in 1 2; do
  (while :; do :; done) &
  spinners+=($!)
done
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs"
  cargo test -q -p manta-integration --test t80_logs cluster_rotated_log_files_lose_no_line
done
echo "all $runs runs: every line exactly once"
