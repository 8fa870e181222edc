#!/usr/bin/env bash
# Runs jobd's standard benchmark scenarios against daemons on fresh data
# (SQLite and PostgreSQL, durable settings as shipped), and the peers on the
# same machine, interleaved run by run: BullMQ (../shared/peers/bullmq, Redis)
# and graphile-worker (../shared/peers/graphile-worker, the same PostgreSQL
# as jobd's PostgreSQL store). Writes BENCHMARKS.md and prints the table of
# issue #34 (every jobd / peer ratio of one run). Each figure is the median
# of RUNS runs (default 3).
#   RUNS=3 DURATION=5s DRAIN_JOBS=100000 WATCHERS=10000 PRELOAD=1000000 scripts/bench.sh
# Sizes and parts (0 skips a part):
#   SUBMIT_C=1,16,64,256   unary Submit callers (Health/Check at each, same daemon)
#   BATCHES=10,100,1000    SubmitBatch sizes (4 callers)
#   DRAIN_JOBS=100000      SQLite burn-down (BullMQ's N is set to the same)
#   PG_JOBS=20000          PostgreSQL burn-down and graphile-worker's JOBS (16 workers each)
#   WATCHERS=10000, PRELOAD=1000000
#   DATABASE_URL           PostgreSQL (default postgres://postgres@127.0.0.1:5432/test)
#   JOBD=path              run that binary instead of building this checkout
# The issue table alone, in about 6 minutes on 2 cores:
#   SUBMIT_C=64 BATCHES=100 WATCHERS=0 PRELOAD=0 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
DRAIN_JOBS=${DRAIN_JOBS:-100000}
PG_JOBS=${PG_JOBS:-20000}
WATCHERS=${WATCHERS:-10000}
PRELOAD=${PRELOAD:-1000000}
SUBMIT_C=${SUBMIT_C:-1,16,64,256}
BATCHES=${BATCHES:-10,100,1000}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
PEER=${PEER:-../shared/peers/bullmq/run.sh}
PG_PEER=${PG_PEER:-../shared/peers/graphile-worker/run.sh}

if [ -z "${JOBD:-}" ]; then
  cargo build --release --quiet
  JOBD=$PWD/target/release/jobd
fi
WORK=$(mktemp -d)
# Results outlive the run (data dirs do not): target/bench-results/.
RES=$PWD/target/bench-results; mkdir -p "$RES"
OUT=$RES/jobd.jsonl; : > "$OUT"
PEER_OUT=$RES/peer.jsonl; : > "$PEER_OUT"
PG_PEER_OUT=$RES/pg-peer.jsonl; : > "$PG_PEER_OUT"
PID=""
SCHEMA=""
stop() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
  if [ -n "$SCHEMA" ]; then psql "$DB" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; SCHEMA=""; fi
}
trap 'stop; rm -rf "$WORK"' EXIT

# start NAME [store] [extra config]: a daemon on a fresh data dir (or the
# given store); sets PID.
start() {
  local dir=$WORK/$1; mkdir -p "$dir"
  printf 'store = "%s"\nadmin_listen = "off"\n[drain]\ngrace = "0s"\n%s\n' "${2:-sqlite:$dir/jobd.db}" "${3:-}" > "$dir/jobd.toml"
  "$JOBD" serve --config "$dir/jobd.toml" 2>"$dir/log" & PID=$!
  for _ in $(seq 100); do "$JOBD" health >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon did not start" >&2; cat "$dir/log" >&2; exit 1
}
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
bench() { "$JOBD" bench "$@" --json --duration "$DURATION" --server-pid "$PID" 2>/dev/null; }
# peer SCRIPT OUT [env...]: one run; the last line of its stdout is its
# result. run.sh can exit 1 after printing it (its EXIT trap ends on a
# failed test when Redis was already running), so judge it by its output.
peer() {
  local script=$1 out=$2; shift 2
  [ -f "$script" ] || { echo "peer: $script not found; skipped" >&2; return 0; }
  local line
  line=$(env "$@" bash "$script" 2>"$RES/$(basename "$out" .jsonl).log" | tail -n 1) || true
  case "$line" in
    *'"headline"'*) echo "$line" >> "$out" ;;
    *) echo "peer $script produced no result:" >&2; tail -20 "$RES/$(basename "$out" .jsonl).log" >&2; exit 1 ;;
  esac
}

for run in $(seq "$RUNS"); do
  echo "run $run/$RUNS: jobd SQLite submit" >&2
  # Submit paths alone: jobs due in an hour, so workers do not compete, and
  # a backlog bound large enough for what a 5 s run stores.
  start "submit$run" "" "[queue]
max_backlog = 10000000"
  sleep 1; echo "{\"run\":$run,\"idle_rss_mb\":$(rss "$PID")}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench submit --delay 1h --concurrency "$SUBMIT_C")}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench batch --delay 1h --batch "$BATCHES")}" >> "$OUT"
  stop
  echo "run $run/$RUNS: jobd SQLite processing" >&2
  # Processing paths on a fresh, idle daemon.
  # The watch scenario is one client holding WATCHERS streams: above the
  # per-client bound (a tenth of queue.max_watchers), so it is raised here.
  start "process$run" "" "[queue]
max_backlog = 10000000
max_watchers = $((WATCHERS > 10000 ? WATCHERS : 10000))
[limits]
max_watchers_per_client = $((WATCHERS > 0 ? WATCHERS : 1))"
  echo "{\"run\":$run,\"rows\":$(bench e2e --rate 50)}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench drain --jobs "$DRAIN_JOBS")}" >> "$OUT"
  if [ "$WATCHERS" -gt 0 ]; then
    echo "{\"run\":$run,\"rows\":$(bench watch --watchers "$WATCHERS")}" >> "$OUT"
  fi
  stop
  if [ "$PG_JOBS" -gt 0 ]; then
    echo "run $run/$RUNS: jobd PostgreSQL burn-down" >&2
    # Shipped defaults (16 workers, synchronous_commit as the server has it:
    # on), a schema of its own, dropped after.
    SCHEMA="jobd_bench_$$_$run"
    start "pg$run" "$DB" "[postgres]
schema = \"$SCHEMA\"
[queue]
max_backlog = 10000000"
    echo "{\"run\":$run,\"store\":\"postgres\",\"rows\":$(bench drain --jobs "$PG_JOBS")}" >> "$OUT"
    stop
  fi
  echo "run $run/$RUNS: peers" >&2
  peer "$PEER" "$PEER_OUT" "N=$DRAIN_JOBS"
  if [ "$PG_JOBS" -gt 0 ]; then
    peer "$PG_PEER" "$PG_PEER_OUT" "DATABASE_URL=$DB" "JOBS=$PG_JOBS" "CONCURRENCY=16"
  fi
done
if [ "$PRELOAD" -gt 0 ]; then
  echo "preload $PRELOAD queued jobs" >&2
  start preload "" "[queue]
max_backlog = 10000000"
  echo "{\"run\":1,\"rows\":$(bench preload --jobs "$PRELOAD")}" >> "$OUT"
  sleep 2; echo "{\"run\":1,\"preload_rss_mb\":$(rss "$PID")}" >> "$OUT"
  stop
fi

python3 scripts/bench_report.py "$OUT" "$PEER_OUT" "$PG_PEER_OUT" "$(nproc)" "$(df -h . | awk 'NR==2 {print $1" ("$2")"}')" "scripts/bench.sh (RUNS=$RUNS DURATION=$DURATION DRAIN_JOBS=$DRAIN_JOBS PG_JOBS=$PG_JOBS SUBMIT_C=$SUBMIT_C BATCHES=$BATCHES WATCHERS=$WATCHERS PRELOAD=$PRELOAD)" BENCHMARKS.md > "$RES/BENCHMARKS.md"
# Written whole, then moved: the report reads the old file's hand-written sections.
mv "$RES/BENCHMARKS.md" BENCHMARKS.md
# The issue table, every ratio of this run.
sed -n '/^## Against the peers/,/^## Headline/p' BENCHMARKS.md | sed '$d'
