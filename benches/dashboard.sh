#!/usr/bin/env bash
# Issue 17's promise: with 100,000 finished tasks, 10,000 dead actors and 10,000
# finished jobs of history on the head, every dashboard page and state API call
# answers in p99 < 500 ms, and the head's memory for that history stays under
# 300 MiB. Fills a fresh head's history through the GCS's own messages, then
# times 40 requests per route; prints a Markdown table and the head's RSS.
#
#   bash benches/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p manta-integration --test t59_dashboard_history -- --ignored --nocapture 2>&1 \
  | grep -E '^\||history filled|^--- phase|test result'
