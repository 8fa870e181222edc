#!/usr/bin/env bash
# Builds release, runs jobd's standard benchmark scenarios against a daemon
# on a fresh data directory (SQLite, durable settings as shipped), runs the
# BullMQ peer (../shared/peers/bullmq) on the same machine, and writes
# BENCHMARKS.md. Each jobd figure is the median of RUNS runs (default 3).
#   RUNS=3 DURATION=5s DRAIN_JOBS=200000 WATCHERS=10000 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
DRAIN_JOBS=${DRAIN_JOBS:-200000}
WATCHERS=${WATCHERS:-10000}
PRELOAD=${PRELOAD:-1000000}
PEER=${PEER:-../shared/peers/bullmq/run.sh}

cargo build --release --quiet
JOBD=$PWD/target/release/jobd
WORK=$(mktemp -d)
# Results outlive the run (data dirs do not): target/bench-results/.
RES=$PWD/target/bench-results; mkdir -p "$RES"
OUT=$RES/jobd.jsonl; : > "$OUT"
PID=""
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

# start NAME [extra config]: a daemon on a fresh data dir; sets PID.
start() {
  local dir=$WORK/$1; mkdir -p "$dir"
  printf 'store = "sqlite:%s/jobd.db"\nadmin_listen = "off"\n[drain]\ngrace = "0s"\n%s\n' "$dir" "${2:-}" > "$dir/jobd.toml"
  "$JOBD" serve --config "$dir/jobd.toml" 2>"$dir/log" & PID=$!
  for _ in $(seq 100); do "$JOBD" health >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon did not start" >&2; cat "$dir/log" >&2; exit 1
}
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
bench() { "$JOBD" bench "$@" --json --duration "$DURATION" --server-pid "$PID" 2>/dev/null; }

for run in $(seq "$RUNS"); do
  echo "run $run/$RUNS" >&2
  # Submit paths alone: jobs due in an hour, so workers do not compete, and
  # a backlog bound large enough for what a 5 s run stores.
  start "submit$run" "[queue]
max_backlog = 10000000"
  sleep 1; echo "{\"run\":$run,\"idle_rss_mb\":$(rss "$PID")}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench submit --delay 1h)}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench batch --delay 1h)}" >> "$OUT"
  stop
  # Processing paths on a fresh, idle daemon.
  # The watch scenario is one client holding WATCHERS streams: above the
  # per-client bound (a tenth of queue.max_watchers), so it is raised here.
  start "process$run" "[queue]
max_backlog = 10000000
max_watchers = $((WATCHERS > 10000 ? WATCHERS : 10000))
[limits]
max_watchers_per_client = $WATCHERS"
  echo "{\"run\":$run,\"rows\":$(bench e2e --rate 50)}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench drain --jobs "$DRAIN_JOBS")}" >> "$OUT"
  echo "{\"run\":$run,\"rows\":$(bench watch --watchers "$WATCHERS")}" >> "$OUT"
  stop
done
echo "preload $PRELOAD queued jobs" >&2
start preload "[queue]
max_backlog = 10000000"
echo "{\"run\":1,\"rows\":$(bench preload --jobs "$PRELOAD")}" >> "$OUT"
sleep 2; echo "{\"run\":1,\"preload_rss_mb\":$(rss "$PID")}" >> "$OUT"
stop

PEER_OUT=$RES/peer.jsonl; : > "$PEER_OUT"
if [ ! -f "$PEER" ]; then
  # No peer beside this checkout: jobd's figures alone.
  echo "peer: $PEER not found; jobd figures only" >&2
  RUNS_PEER=0
else
  echo "peer: $PEER" >&2
  RUNS_PEER=$RUNS
fi
for run in $(seq "$RUNS_PEER"); do
  # run.sh can exit 1 after printing its result (its EXIT trap ends on a
  # failed test when Redis was already running), so judge it by its output.
  line=$(bash "$PEER" 2>"$RES/peer.log" | tail -n 1) || true
  case "$line" in
    *'"headline"'*) echo "$line" >> "$PEER_OUT" ;;
    *) echo "peer run $run produced no result:" >&2; tail -20 "$RES/peer.log" >&2; exit 1 ;;
  esac
done

python3 scripts/bench_report.py "$OUT" "$PEER_OUT" "$(nproc)" "$(df -h . | awk 'NR==2 {print $1" ("$2")"}')" "scripts/bench.sh (RUNS=$RUNS DURATION=$DURATION DRAIN_JOBS=$DRAIN_JOBS WATCHERS=$WATCHERS PRELOAD=$PRELOAD)" BENCHMARKS.md > "$RES/BENCHMARKS.md"
# Written whole, then moved: the report reads the old file's hand-written sections.
mv "$RES/BENCHMARKS.md" BENCHMARKS.md
cat BENCHMARKS.md
