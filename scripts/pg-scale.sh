#!/usr/bin/env bash
# Jobs/s for 1 and for 3 jobd instances on one PostgreSQL queue: the same
# workload each time (`jobd bench drain`: JOBS echo jobs loaded through the
# first instance, all due at once, run by every instance), each figure the
# median of RUNS runs. Everything runs on this machine (2 cores here), so
# the instances, PostgreSQL and the load generator share its CPUs.
# KIND=rated runs a kind with a rate far above what it reaches: the cost of
# one token bucket shared by every instance (a locked row per claim).
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test RUNS=3 JOBS=20000 scripts/pg-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
JOBS=${JOBS:-20000}
WORKERS=${WORKERS:-16}
KIND=${KIND:-echo}
DB=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

# JOBD=path runs that binary instead of building this checkout.
if [ -z "${JOBD:-}" ]; then
  cargo build --release --quiet
  JOBD=$PWD/target/release/jobd
fi
WORK=$(mktemp -d)
RES=$PWD/target/bench-results; mkdir -p "$RES"
OUT=$RES/pg-scale-$KIND.jsonl; : > "$OUT"
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop; rm -rf "$WORK"' EXIT

for run in $(seq "$RUNS"); do
  for n in 1 3; do
    schema="bench_${n}_${run}_$$"
    for i in $(seq "$n"); do
      port=$((51000 + i))
      cfg=$WORK/$n-$i.toml
      printf 'listen = "127.0.0.1:%s"\nstore = "%s"\nadmin_listen = "off"\n[postgres]\nschema = "%s"\n[queue]\nworkers = %s\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n[kinds.echo]\nhandler = "echo"\n[kinds.rated]\nhandler = "echo"\nrate = "1000000/s"\n' \
        "$port" "$DB" "$schema" "$WORKERS" > "$cfg"
      "$JOBD" serve --config "$cfg" 2>"$WORK/$n-$i.log" & PIDS+=($!)
      for _ in $(seq 100); do "$JOBD" health --addr "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
    done
    echo "run $run/$RUNS: $n instance(s)" >&2
    row=$("$JOBD" bench drain --addr 127.0.0.1:51001 --jobs "$JOBS" --kind "$KIND" --json 2>/dev/null)
    echo "{\"run\":$run,\"instances\":$n,\"rows\":$row}" >> "$OUT"
    stop
    psql "$DB" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    for row in r["rows"]:
        by.setdefault(r["instances"], []).append(row["rate"])
one = statistics.median(by[1])
for n in sorted(by):
    m = statistics.median(by[n])
    runs = ", ".join(f"{v:,.0f}" for v in by[n])
    print(f"{n} instance(s): median {m:,.0f} jobs/s (runs: {runs}); {m / one:.2f}x one instance")
PY
