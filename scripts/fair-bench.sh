#!/usr/bin/env bash
# Claim throughput with fairness = "round_robin" against plain, in the same
# run: `jobd bench fair` drains JOBS no-op echo jobs over KEYS fairness keys
# on a plain kind, then on a round_robin kind, on one daemon with a fresh
# store each run. Each figure is the median of RUNS runs; STORE is sqlite
# (default) or postgres.
#   RUNS=3 JOBS=100000 KEYS=10000 STORE=sqlite scripts/fair-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
JOBS=${JOBS:-100000}
KEYS=${KEYS:-10000}
STORE=${STORE:-sqlite}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet   # NO_BUILD=1: the binary as it is
JOBD=$PWD/target/release/jobd
WORK=$(mktemp -d)
RES=$PWD/target/bench-results; mkdir -p "$RES"
OUT=$RES/fair-bench.jsonl; : > "$OUT"
PID=
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

for run in $(seq "$RUNS"); do
  schema="fair_${run}_$$"
  case $STORE in
    sqlite) store="sqlite:$WORK/$run.db"; pg="" ;;
    postgres) store=$DB; pg=$(printf '[postgres]\nschema = "%s"\n' "$schema") ;;
  esac
  cfg=$WORK/fair.toml
  printf 'listen = "127.0.0.1:51102"\nstore = "%s"\nadmin_listen = "off"\n%s\n[queue]\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n[kinds.echo]\nhandler = "echo"\n[kinds.fair]\nhandler = "echo"\nfairness = "round_robin"\n' \
    "$store" "$pg" > "$cfg"
  "$JOBD" serve --config "$cfg" 2>"$WORK/serve.log" & PID=$!
  for _ in $(seq 100); do "$JOBD" health --addr 127.0.0.1:51102 >/dev/null 2>&1 && break; sleep 0.1; done
  echo "run $run/$RUNS" >&2
  row=$("$JOBD" bench fair --addr 127.0.0.1:51102 --jobs "$JOBS" --keys "$KEYS" --json 2>/dev/null)
  echo "{\"run\":$run,\"rows\":$row}" >> "$OUT"
  stop
  if [ "$STORE" = postgres ]; then psql "$DB" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null; fi
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    for row in json.loads(line)["rows"]:
        by.setdefault(row["scenario"], []).append(row["rate"])
plain = statistics.median(by["fair: plain"])
for mode in ["fair: plain", "fair: round_robin"]:
    m = statistics.median(by[mode])
    runs = " / ".join(f"{v:,.0f}" for v in by[mode])
    print(f"{mode:18}: median {m:,.0f} jobs/s ({runs}); {m / plain:.2f}x plain")
PY
