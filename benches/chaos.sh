#!/usr/bin/env bash
# The chaos benchmark: a 10,000-task job while a random node is SIGKILLed every
# 3 s (and replaced), against the same job without kills. Every result is
# checked; the figures are appended to the table file given (default: stdout).
#   bash benches/chaos.sh [tasks] [interval_ms] [report_file]
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=${1:-10000}
interval=${2:-3000}
report=${3:-/dev/stdout}
MANTA_CHAOS_TASKS=$tasks MANTA_CHAOS_INTERVAL_MS=$interval MANTA_CHAOS_REPORT=$report \
  cargo test --release -q -p manta-integration --test t95_chaos -- --ignored --nocapture
