#!/usr/bin/env bash
# A/B of two jobd release binaries on the shipped defaults (SQLite WAL,
# synchronous=FULL, 16 workers), runs interleaved, a fresh daemon and data
# directory per run; prints each run and the medians.
#   RUNS=3 scripts/ab-binaries.sh /tmp/jobd-before target/release/jobd
# Measures: idle submit->finished p50/p99 (e2e, 50/s for 5 s), burn-down of
# 100,000 no-op jobs, SubmitBatch(100) with 4 callers, unary Submit at c=64
# and c=256 (jobs delayed 1 h, as scripts/bench.sh does) with its ratio to
# Health/Check in the same run. With DATABASE_URL set, also a burn-down of
# PG_JOBS (20,000) no-op jobs on the PostgreSQL store (16 workers, a fresh
# schema per run, dropped after).
set -euo pipefail
A=$1 B=$2 RUNS=${RUNS:-3}
PG_JOBS=${PG_JOBS:-20000}
PHASES="process submit"
[ -n "${DATABASE_URL:-}" ] && PHASES="$PHASES pg"
W=$(mktemp -d); OUT=$W/rows; : > "$OUT"
PID=""
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'rc=$?; stop; [ $rc = 0 ] || { echo "failed; the daemon log:" >&2; tail -20 "$W/log" >&2; }; rm -rf "$W"' EXIT
for run in $(seq "$RUNS"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    for phase in $PHASES; do
      rm -rf "$W/d"; mkdir -p "$W/d"
      store="sqlite:$W/d/j.db" pgcfg=""
      if [ $phase = pg ]; then
        store=$DATABASE_URL pgcfg="[postgres]
schema = \"ab_${side,,}_${run}_$$\""
      fi
      printf 'listen = "127.0.0.1:51301"\nstore = "%s"\nadmin_listen = "off"\n[queue]\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n%s\n' "$store" "$pgcfg" > "$W/cfg.toml"
      "$bin" serve --config "$W/cfg.toml" 2>"$W/log" & PID=$!
      for _ in $(seq 300); do "$bin" health --addr 127.0.0.1:51301 >/dev/null 2>&1 && break; sleep 0.1; done
      b() { "$bin" bench "$@" --addr 127.0.0.1:51301 --json --server-pid "$PID" 2>/dev/null; }
      if [ $phase = process ]; then
        b e2e --rate 50 --duration 5s | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["scenario"].endswith("finished")][0]; print("e2e_p50_ms", r["p50_ms"]); print("e2e_p99_ms", r["p99_ms"])' | sed "s/^/$side /" >> "$OUT"
        b drain --jobs 100000 | python3 -c 'import json,sys; print("drain", json.load(sys.stdin)[0]["rate"])' | sed "s/^/$side /" >> "$OUT"
      elif [ $phase = pg ]; then
        b drain --jobs "$PG_JOBS" | python3 -c 'import json,sys; print("pg_drain", json.load(sys.stdin)[0]["rate"])' | sed "s/^/$side /" >> "$OUT"
      else
        b batch --batch 100 --delay 1h --duration 5s | python3 -c 'import json,sys; print("batch100", json.load(sys.stdin)[0]["rate"])' | sed "s/^/$side /" >> "$OUT"
        b submit --concurrency 64,256 --delay 1h --duration 5s | python3 -c '
import json,sys
for r in json.load(sys.stdin):
    if r["scenario"] == "submit":
        c = r["param"].split("=")[1]
        print("submit_c" + c, r["rate"]); print("submit_c" + c + "_vs_health", r["ratio_to_baseline"])' | sed "s/^/$side /" >> "$OUT"
      fi
      stop
      if [ $phase = pg ]; then psql "$DATABASE_URL" -qc "DROP SCHEMA ab_${side,,}_${run}_$$ CASCADE" >/dev/null 2>&1 || true; fi
    done
    echo "run $run $side done" >&2
  done
done
python3 - "$OUT" <<'PY'
import statistics, sys, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, k, x = line.split()
    v[(k, side)].append(float(x))
keys = list(dict.fromkeys(k for k, _ in v))
print("| measure | A runs | A median | B runs | B median | B / A |")
print("|---|---|---:|---|---:|---:|")
f = lambda x: f"{x:,.3f}" if x < 10 else f"{x:,.0f}"
for k in keys:
    a, b = v[(k, "A")], v[(k, "B")]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {k} | {' / '.join(f(x) for x in a)} | {f(ma)} | {' / '.join(f(x) for x in b)} | {f(mb)} | {mb/ma:.2f} |")
PY
