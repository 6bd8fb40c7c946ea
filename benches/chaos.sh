#!/usr/bin/env bash
# The chaos benchmark: a job while a random node is SIGKILLed every interval (and
# replaced), against the same job without kills. Every result is checked; the
# figures are appended to the table file given (default: stdout).
#   bash benches/chaos.sh [tasks] [interval_ms] [report_file]
#     10,000 tasks of 5 ms on four 2-CPU nodes, a kill every 3 s by default;
#   bash benches/chaos.sh tiny [tasks] [interval_ms] [report_file]
#     100,000 no-op tasks of 0.01 CPU on three 1-CPU nodes, three kills 2 s apart.
set -euo pipefail
cd "$(dirname "$0")/.."
test_name=chaos_random_node_kills
default_tasks=10000
default_interval=3000
if [ "${1:-}" = tiny ]; then
  shift
  test_name=chaos_many_tiny_tasks
  default_tasks=100000
  default_interval=2000
fi
tasks=${1:-$default_tasks}
interval=${2:-$default_interval}
report=${3:-/dev/stdout}
MANTA_CHAOS_TASKS=$tasks MANTA_CHAOS_INTERVAL_MS=$interval MANTA_CHAOS_REPORT=$report \
  cargo test --release -q -p manta-integration --test t95_chaos "$test_name" -- --ignored --exact --nocapture
