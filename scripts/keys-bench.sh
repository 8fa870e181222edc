#!/usr/bin/env bash
# What ordering keys cost the claim: `jobd bench drain` of JOBS echo jobs
# (all due at once) on a fresh store each run, three ways:
#   plain  - no ordering keys;
#   stored - KEYS keys round robin on a kind without key_concurrency (stored, ignored);
#   keyed  - the same keys on a kind with key_concurrency = 1 (the claim checks each);
#   rated  - no keys, on a kind with a rate far above what it reaches: the cost
#            of the token bucket alone (on PostgreSQL, a locked row per claim).
# Each figure is the median of RUNS runs; STORE is sqlite (default) or postgres.
#   RUNS=3 JOBS=100000 KEYS=10000 STORE=sqlite scripts/keys-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
JOBS=${JOBS:-100000}
KEYS=${KEYS:-10000}
STORE=${STORE:-sqlite}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

cargo build --release --quiet
JOBD=$PWD/target/release/jobd
WORK=$(mktemp -d)
RES=$PWD/target/bench-results; mkdir -p "$RES"
OUT=$RES/keys-bench.jsonl; : > "$OUT"
PID=
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

for run in $(seq "$RUNS"); do
  for mode in plain stored keyed rated; do
    schema="keys_${mode}_${run}_$$"
    case $STORE in
      sqlite) store="sqlite:$WORK/$mode-$run.db"; pg="" ;;
      postgres) store=$DB; pg=$(printf '[postgres]\nschema = "%s"\n' "$schema") ;;
    esac
    cfg=$WORK/$mode.toml
    printf 'listen = "127.0.0.1:51101"\nstore = "%s"\nadmin_listen = "off"\n%s\n[queue]\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n[kinds.echo]\nhandler = "echo"\n[kinds.keyed]\nhandler = "echo"\nkey_concurrency = 1\n[kinds.rated]\nhandler = "echo"\nrate = "1000000/s"\n' \
      "$store" "$pg" > "$cfg"
    "$JOBD" serve --config "$cfg" 2>"$WORK/$mode.log" & PID=$!
    for _ in $(seq 100); do "$JOBD" health --addr 127.0.0.1:51101 >/dev/null 2>&1 && break; sleep 0.1; done
    case $mode in
      plain) args=(--kind echo) ;;
      stored) args=(--kind echo --keys "$KEYS") ;;
      keyed) args=(--kind keyed --keys "$KEYS") ;;
      rated) args=(--kind rated) ;;
    esac
    echo "run $run/$RUNS: $mode" >&2
    row=$("$JOBD" bench drain --addr 127.0.0.1:51101 --jobs "$JOBS" "${args[@]}" --json 2>/dev/null)
    echo "{\"run\":$run,\"mode\":\"$mode\",\"rows\":$row}" >> "$OUT"
    stop
    if [ "$STORE" = postgres ]; then psql "$DB" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null; fi
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    for row in r["rows"]:
        by.setdefault(r["mode"], []).append(row["rate"])
plain = statistics.median(by["plain"])
for mode in ["plain", "stored", "keyed", "rated"]:
    m = statistics.median(by[mode])
    runs = ", ".join(f"{v:,.0f}" for v in by[mode])
    print(f"{mode:6}: median {m:,.0f} jobs/s (runs: {runs}); {m / plain:.2f}x plain")
PY
