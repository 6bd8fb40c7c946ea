#!/usr/bin/env bash
# Measures what issue "cluster spine" promises: time for `manta start --head` to
# return ready, time for a node to join (visible ALIVE), and idle RSS of a head
# and of a joined node. Uses the release binary; cleans up only what it started.
#
#   cargo build --release --bins && bash benches/startup.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
MANTA=${MANTA_BIN:-target/release/manta}
RUNS=${1:-10}
[ -x "$MANTA" ] || { echo "build first: cargo build --release --bins" >&2; exit 1; }

now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
node_pid() { awk '{print $1}' "$1"; }

head_ms=(); join_ms=(); head_rss=(); node_rss=()
for run in $(seq 1 "$RUNS"); do
  dir=$(mktemp -d /tmp/manta-bench-XXXXXX)
  t0=$(now_ms)
  "$MANTA" start --head --port 0 --temp-dir "$dir" >/dev/null
  t1=$(now_ms)
  address=$(cat "$dir/address")
  "$MANTA" start --address "$address" --temp-dir "$dir" >/dev/null
  # joined = visible ALIVE in the GCS table (the start command returns only then)
  until [ "$("$MANTA" status --temp-dir "$dir" --format json | grep -c '"ALIVE"')" = 2 ]; do :; done
  t2=$(now_ms)
  sleep 2 # let both processes settle into idle
  for pidfile in "$dir"/nodes/*/node.pid; do
    pid=$(node_pid "$pidfile")
    if grep -q '"is_head": true' "$(dirname "$pidfile")/node.json"; then head_rss+=("$(rss_kib "$pid")"); else node_rss+=("$(rss_kib "$pid")"); fi
  done
  "$MANTA" stop --temp-dir "$dir" >/dev/null
  rm -rf "$dir"
  head_ms+=($((t1 - t0))); join_ms+=($((t2 - t1)))
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1; s+=$1} END {printf "median %s, mean %.1f, max %s", a[int((NR+1)/2)], s/NR, a[NR]}'; }
echo "runs: $RUNS ($(nproc) cores, $("$MANTA" --version))"
echo "manta start --head ready (ms):      $(stats "${head_ms[@]}")"
echo "node join, start to ALIVE (ms):    $(stats "${join_ms[@]}")"
echo "idle head RSS (KiB):               $(stats "${head_rss[@]}")"
echo "idle joined node RSS (KiB):        $(stats "${node_rss[@]}")"
