#!/usr/bin/env bash
# The quick-start demo: build manta, start a 3-node cluster on this machine,
# look at it, submit a job through the head's Jobs API, ask the dashboard's state
# API for the nodes, kill a node and watch
# the cluster declare it DEAD, stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building manta (release)"
cargo build --release --quiet --bins
manta=target/release/manta
session=$(mktemp -d /tmp/manta-demo-XXXXXX)
trap '"$manta" stop --force --temp-dir "$session" >/dev/null 2>&1 || true; rm -rf "$session"' EXIT

echo "==> manta start --head"
"$manta" start --head --port 0 --dashboard-port 0 --num-cpus 2 --temp-dir "$session"
address=$(cat "$session/address")

echo "==> two more nodes join, each with a custom resource"
"$manta" start --address "$address" --num-cpus 1 --resources '{"disk": 1}' --labels zone=a --temp-dir "$session"
"$manta" start --address "$address" --num-cpus 1 --resources '{"disk": 1}' --labels zone=b --temp-dir "$session"

echo "==> manta status"
"$manta" status --temp-dir "$session"

echo "==> manta job submit: a job that needs the 'disk' resource runs on a node that has it"
"$manta" job submit --temp-dir "$session" --entrypoint-resources '{"disk": 1}' \
  --runtime-env-json '{"env_vars": {"GREETING": "hello from a submitted job"}}' -- 'echo "$GREETING on $(hostname)"'
"$manta" job list --temp-dir "$session" | grep -E '"(submission_id|status|driver_node_id)"'

url=$(cat "$session/dashboard_url")
echo "==> the dashboard's state API (in a browser: $url, log in with the token in $session/token)"
curl -s -H "Authorization: Bearer $(cat "$session/token")" "$url/api/v0/nodes?filter=state%3DALIVE" \
  | grep -o '"num_filtered":[0-9]*' | sed 's/"num_filtered":/    alive nodes: /'
curl -s -o /dev/null -w "    /jobs without logging in: HTTP %{http_code} to %{redirect_url}\n" "$url/jobs"

victim_record=$(grep -l '"is_head": false' "$session"/nodes/*/node.json | head -n 1)
victim=$(grep '"pid"' "$victim_record" | tr -dc '0-9')
echo "==> kill -9 $victim (a joined node); the GCS health checks notice"
kill -9 "$victim"
started=$(date +%s%3N)
until "$manta" status --temp-dir "$session" --format json | grep -q '"DEAD"'; do sleep 0.1; done
echo "    declared DEAD after $(( $(date +%s%3N) - started )) ms"
"$manta" status --temp-dir "$session"

echo "==> manta stop"
"$manta" stop --temp-dir "$session"
