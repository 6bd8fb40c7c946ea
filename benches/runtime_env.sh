#!/usr/bin/env bash
# What shipping a program and a working dir costs: a head and a joined node on this
# machine, then two jobs of the `scenarios` driver with the same working dir. Prints
# the upload (job start → "stored package" on the head), the node's download, and
# each job's wall time (the second job finds everything in place). Cleans up only
# the nodes it started (by `manta stop` on its own temp dir).
#
#   cargo build [--release] -p manta --bin manta && cargo build [--release] -p manta-integration --bin scenarios
#   bash benches/runtime_env.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
manta=target/$profile/manta
driver=target/$profile/scenarios
[ -x "$manta" ] && [ -x "$driver" ] || { echo "build $manta and $driver first" >&2; exit 1; }
dir=$(mktemp -d /tmp/manta-runtime-env-XXXXXX)
trap '"$manta" stop --temp-dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$manta" start --head --port 0 --num-cpus 0 --temp-dir "$dir" >/dev/null
"$manta" start --address "$(cat "$dir/address")" --num-cpus 2 --temp-dir "$dir" >/dev/null
mkdir -p "$dir/wd" && printf 'bench data' >"$dir/wd/data.txt"
echo "program: $driver ($(($(stat -c %s "$driver") >> 20)) MiB)"
for job in 1 2; do
  start=$(date +%s%N)
  MANTA_TEMP_DIR="$dir" "$driver" runtime-env-working-dir "$dir/wd" 'bench data' >/dev/null
  echo "job $job end to end: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
stamp() { date -d "$(echo "$1" | awk '{print $1}')" +%s%N; }
head_log=""; node_log=""
for node in "$dir"/nodes/*/; do
  if grep -q '"is_head": true' "$node/node.json"; then head_log="$node/node.log"; else node_log="$node/node.log"; fi
done
logs=$(cat "$dir"/nodes/*/node.log)
started=$(grep -m1 "job started" "$head_log")
stored=$(grep -m1 "stored package name=_manta_exe_" "$head_log")
linked=$(grep -m1 "fetched executable" "$head_log")
fetched=$(grep -m1 "fetched executable" "$node_log")
echo "upload (job 1 start → program stored on the head): $(( ($(stamp "$stored") - $(stamp "$started")) / 1000000 )) ms"
echo "the head's own copy (a link to the stored file): $(( ($(stamp "$linked") - $(stamp "$stored")) / 1000000 )) ms"
echo "download on the joined node (stored → fetched and checked): $(( ($(stamp "$fetched") - $(stamp "$stored")) / 1000000 )) ms"
echo "working dir packages stored: $(echo "$logs" | grep -c 'stored package name=_manta_pkg_'), unpacked: $(echo "$logs" | grep -c 'unpacked package')"
