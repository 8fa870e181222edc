#!/usr/bin/env bash
# Crash safety at full load: 50 rounds of concurrent submits, each ended by
# `kill -9` at a random moment, then a restart on the same SQLite data.
# Prints `kills=… acknowledged=… stored=… lost=… unexpected=…`; lost must be 0.
#   JOBD_CRASH_KILLS=N scripts/crash-test.sh   (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
export JOBD_CRASH_KILLS=${JOBD_CRASH_KILLS:-50}
cargo test --release --test it binary::kill_9_loses_no_acknowledged_job -- --exact --nocapture 2>&1 \
  | grep -E '^kills=|test result|panicked|lost'
