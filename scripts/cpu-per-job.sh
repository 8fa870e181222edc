#!/usr/bin/env bash
# CPU per job of two jobd release binaries, interleaved, a fresh store per
# run: a burn-down (`jobd bench drain`, its SubmitBatch load included) on
# SQLite (shipped defaults) and, with DATABASE_URL, on PostgreSQL. CPU is
# utime + stime from /proc: the daemon's, its SQLite writer thread's, and
# that of the PostgreSQL backends of a database only these runs use
# (jobd_cpu_bench, created on the server of DATABASE_URL). On a shared
# machine this moves far less than jobs/s does.
#   RUNS=3 JOBS=50000 PG_JOBS=10000 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
#     scripts/cpu-per-job.sh /tmp/jobd-before target/release/jobd
set -euo pipefail
A=$1 B=$2 RUNS=${RUNS:-3} JOBS=${JOBS:-50000} PG_JOBS=${PG_JOBS:-10000}
ADDR=127.0.0.1:51302
W=$(mktemp -d)
PID=""
stop() { if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'stop; rm -rf "$W"' EXIT
ticks() { for p in "$@"; do awk '{print $14+$15}' "$p" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
writer() { for t in /proc/$PID/task/*; do grep -qs sqlite-wri "$t/comm" && echo "$t/stat"; done; }
DB=""
if [ -n "${DATABASE_URL:-}" ]; then
  psql "$DATABASE_URL" -qc "CREATE DATABASE jobd_cpu_bench" 2>/dev/null || true
  DB=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/jobd_cpu_bench")))' "$DATABASE_URL")
fi
backends() { psql "$DATABASE_URL" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = 'jobd_cpu_bench'" | sed 's|.*|/proc/&/stat|'; }
run() { # run SIDE BIN STORE N EXTRA
  printf 'listen = "%s"\nstore = "%s"\nadmin_listen = "off"\n[queue]\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n%s\n' "$ADDR" "$3" "$5" > "$W/cfg.toml"
  "$2" serve --config "$W/cfg.toml" 2>"$W/log" & PID=$!
  for _ in $(seq 300); do "$2" health --addr "$ADDR" >/dev/null 2>&1 && break; sleep 0.1; done
  local pg0=0 pg1=0 d0 d1 w0 w1 rate label=sqlite
  [ -n "$5" ] && label=pg
  d0=$(ticks /proc/$PID/stat); w0=$(ticks $(writer))
  [ -n "$5" ] && pg0=$(ticks $(backends))
  rate=$("$2" bench drain --addr "$ADDR" --jobs "$4" --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["rate"]))')
  d1=$(ticks /proc/$PID/stat); w1=$(ticks $(writer))
  [ -n "$5" ] && pg1=$(ticks $(backends))
  stop
  python3 -c "
t=$(getconf CLK_TCK); n=$4
print('$1', '$label', $rate, round(($d1-$d0)*1e6/t/n,1), round(($w1-$w0)*1e6/t/n,1), round(($pg1-$pg0)*1e6/t/n,1))"
}
{
  for r in $(seq "$RUNS"); do
    for side in A B; do
      bin=$A; [ $side = B ] && bin=$B
      rm -rf "$W/d"; mkdir -p "$W/d"
      run $side "$bin" "sqlite:$W/d/j.db" "$JOBS" ""
      if [ -n "$DB" ]; then
        run $side "$bin" "$DB" "$PG_JOBS" "[postgres]
schema = \"cpu_${side,,}_$r\""
        psql "$DB" -qc "DROP SCHEMA cpu_${side,,}_$r CASCADE" >/dev/null 2>&1 || true
      fi
      echo "run $r $side done" >&2
    done
  done
} > "$W/rows"
python3 - "$W/rows" <<'PY'
import collections, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, store, rate, daemon, writer, pg = line.split()
    for k, x in (("jobs/s", rate), ("daemon µs/job", daemon), ("writer µs/job", writer), ("postgres µs/job", pg)):
        if float(x) > 0: v[(store, k, side)].append(float(x))
print("| store | measure | A runs | A median | B runs | B median | B / A |")
print("|---|---|---|---:|---|---:|---:|")
for (store, k, side) in list(v):
    if side != "A": continue
    a, b = v[(store, k, "A")], v[(store, k, "B")]
    ma, mb = statistics.median(a), statistics.median(b)
    f = lambda x: f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"
    print(f"| {store} | {k} | {' / '.join(map(f, a))} | {f(ma)} | {' / '.join(map(f, b))} | {f(mb)} | {mb/ma:.2f} |")
PY
