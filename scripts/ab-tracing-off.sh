#!/usr/bin/env bash
# A/B of two jobd binaries, /tmp/jobd-pre-otel and /tmp/jobd-otel (copy them there), e.g.
# before and after span export, tracing off:
# SQLite (shipped defaults) and memory: drain, and
# unary Submit at c=64.
set -u
W=$(mktemp -d)
for run in 1 2 3; do
  for store in sqlite memory; do
    for v in pre-otel otel; do
      rm -rf $W; mkdir -p $W
      B=/tmp/jobd-$v
      case $store in sqlite) url="sqlite:$W/j.db" ;; memory) url="memory:" ;; esac
      printf 'listen = "127.0.0.1:51201"\nstore = "%s"\nadmin_listen = "off"\n[queue]\nmax_backlog = 10000000\n[drain]\ngrace = "0s"\n' "$url" > $W/cfg.toml
      $B serve --config $W/cfg.toml 2>$W/log & PID=$!
      for _ in $(seq 100); do $B health --addr 127.0.0.1:51201 >/dev/null 2>&1 && break; sleep 0.1; done
      d=$(timeout 120 $B bench drain --addr 127.0.0.1:51201 --jobs 100000 --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["rate"]))')
      s=$(timeout 60 $B bench submit --addr 127.0.0.1:51201 --concurrency 64 --duration 5s --json 2>/dev/null | python3 -c 'import json,sys; print([round(r["rate"]) for r in json.load(sys.stdin) if r["scenario"]=="submit"][0])')
      echo "$run $store $v drain=$d submit64=$s"
      kill -TERM $PID; wait $PID 2>/dev/null
    done
  done
done
