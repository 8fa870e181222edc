"""Turns scripts/bench.sh results into BENCHMARKS.md (Markdown on stdout).
Usage: bench_report.py JOBD_JSONL PEER_JSONL PG_PEER_JSONL NPROC DISK COMMAND [PREVIOUS_MD]
Sections of PREVIOUS_MD that this script does not write (hand-written
measurements: remote workers, ordering keys, ...) are carried over."""
import datetime, json, statistics, sys

jobd_path, peer_path, pg_peer_path, nproc, disk, command = sys.argv[1:7]
GENERATED = ("Against the peers", "Headline", "Every scenario", "Peer raw results")
kept = []
if len(sys.argv) > 7:
    try:
        text = open(sys.argv[7]).read()
    except FileNotFoundError:
        text = ""
    for part in text.split("\n## ")[1:]:
        if not part.startswith(GENERATED):
            kept.append("## " + part.rstrip("\n"))
rows, idle, preload_rss = {}, [], []
for line in open(jobd_path):
    d = json.loads(line)
    for r in d.get("rows", []):
        r["_run"] = d["run"]
    if "idle_rss_mb" in d: idle.append(d["idle_rss_mb"])
    if "preload_rss_mb" in d: preload_rss.append(d["preload_rss_mb"])
    for r in d.get("rows", []):
        if d.get("store") == "postgres":
            r["scenario"] += " (postgres)"
        rows.setdefault((r["scenario"], r["param"]), []).append(r)
peer = [json.loads(l) for l in open(peer_path) if l.strip()]
pg_peer = [json.loads(l) for l in open(pg_peer_path) if l.strip()]

def med(xs): return statistics.median(xs) if xs else float("nan")
def m(key, field="rate"): return med([r[field] for r in rows.get(key, []) if r.get(field) is not None])
def note(key): return (rows.get(key) or [{}])[-1].get("note", "")

peer_enq = med([p["headline"]["enqueue_jobs_per_s"] for p in peer])
peer_proc = med([p["headline"]["process_jobs_per_s"] for p in peer])
peer_p50 = med([p["headline"]["latency_p50_ms"] for p in peer])
peer_p99 = med([p["headline"]["latency_p99_ms"] for p in peer])
p0 = peer[0] if peer else {}

out = []
w = out.append
w("# Benchmarks\n")
w(f"Measured {datetime.date.today()} on {nproc} cores, disk {disk}; client, daemon and peer on one machine.")
w(f"Command: `{command}`. jobd figures are medians of {len(idle)} runs; the peer's are medians of {len(peer)} runs of "
  f"`../shared/peers/bullmq/run.sh` (BullMQ {p0.get('bullmq','?')}, Redis {p0.get('redis',{}).get('version','?')}, "
  f"{p0.get('redis',{}).get('durable_note','?')}). jobd runs with its shipped durable settings "
  "(SQLite WAL, synchronous=FULL: every acknowledged job is on disk).\n")
w("## Against the peers (issue #34)\n")
w("Each jobd figure and each peer figure is the median of the runs above; the ratio is of the medians.\n")
w("| measure | jobd | peer | jobd / peer | target |")
w("|---|---:|---:|---:|---:|")
def ratio(a, b): return f"{a/b:.2f}" if b == b and b else "–"
def fig(x, fmt="{:,.0f}"): return "–" if x != x else fmt.format(x)
dkey = next((k for k in rows if k[0] == "drain"), None)
d_rate = m(dkey) if dkey else float("nan")
w(f"| burn-down, {dkey[1] if dkey else '?'} no-op jobs (jobs/s), vs BullMQ | {fig(d_rate)} | {fig(peer_proc)} | {ratio(d_rate, peer_proc)}× | ≥ 2× |")
b100_ = m(("batch", "b=100 c=4"))
w(f"| SubmitBatch(100), 4 callers (jobs/s), vs BullMQ addBulk | {fig(b100_)} | {fig(peer_enq)} | {ratio(b100_, peer_enq)}× | ≥ 5× |")
e2e_ = ("e2e submit->finished", "rate=50")
w(f"| submit→finished p50 at idle (ms), vs BullMQ | {fig(m(e2e_, 'p50_ms'), '{:.3f}')} | {fig(peer_p50, '{:.3f}')} | {ratio(m(e2e_, 'p50_ms'), peer_p50)} | ≤ 0.5 ms |")
s64 = ("submit", "c=64")
base64 = m(("baseline", "c=64"))
w(f"| unary Submit c=64 vs Health/Check c=64, same daemon (rpc/s) | {fig(m(s64))} | {fig(base64)} | {fig(m(s64, 'ratio_to_baseline'), '{:.2f}')} (median of each run's ratio) | ≥ 0.6 |")
pkey = next((k for k in rows if k[0] == "drain (postgres)"), None)
p_rate = m(pkey) if pkey else float("nan")
gw = med([p["headline"]["process_jobs_per_s"] for p in pg_peer])
w(f"| PostgreSQL burn-down, {pkey[1] if pkey else '?'} jobs, 16 workers, vs graphile-worker (jobs/s) | {fig(p_rate)} | {fig(gw)} | {ratio(p_rate, gw)}× | ≥ 2× |")
w("")
w("Per run (jobd / peer):\n")
runs = sorted({json.loads(l)["run"] for l in open(jobd_path)})
def per_run(key, field="rate"):
    return [next((r[field] for r in rows.get(key, []) if r.get("_run") == n), float("nan")) for n in runs]
w("| run | burn-down | batch(100) | e2e p50 ms | Submit c=64 / Health c=64 | PG burn-down |")
w("|---|---|---|---|---|---|")
for i, n in enumerate(runs):
    pp = peer[i]["headline"] if i < len(peer) else {}
    gp = pg_peer[i]["headline"] if i < len(pg_peer) else {}
    def one(key, field="rate"):
        v = per_run(key, field)[i] if key else float("nan")
        return v
    w(f"| {n} | {fig(one(dkey))} / {fig(pp.get('process_jobs_per_s', float('nan')))} "
      f"| {fig(one(('batch', 'b=100 c=4')))} / {fig(pp.get('enqueue_jobs_per_s', float('nan')))} "
      f"| {fig(one(e2e_, 'p50_ms'), '{:.3f}')} / {fig(pp.get('latency_p50_ms', float('nan')), '{:.3f}')} "
      f"| {fig(one(s64))} / {fig(one(('baseline', 'c=64')))} "
      f"| {fig(one(pkey))} / {fig(gp.get('process_jobs_per_s', float('nan')))} |")
w("")
w("## Headline\n")
w("| measure | jobd | peer (BullMQ) | jobd / peer | target |")
w("|---|---:|---:|---:|---|")
sub = {c: (m(("submit", f"c={c}")), m(("submit", f"c={c}"), "ratio_to_baseline")) for c in (1, 16, 64, 256)}
for c, (rate, ratio) in sub.items():
    if rate != rate: continue
    w(f"| durable unary Submit, c={c} (jobs/s) | {rate:,.0f} ({ratio*100:.0f}% of Health/Check) | – | – | ≥ 60% of Health/Check |")
b100 = m(("batch", "b=100 c=4"))
w(f"| durable SubmitBatch b=100 (jobs/s) vs addBulk enqueue | {b100:,.0f} | {peer_enq:,.0f} | {b100/peer_enq:.2f}× | ≥ 5× |")
dr = m(("drain", next((k[1] for k in rows if k[0] == "drain"), "")))
w(f"| burn-down of no-op jobs (jobs/s) vs worker throughput | {dr:,.0f} | {peer_proc:,.0f} | {dr/peer_proc:.2f}× | ≥ 2× |")
e2e = ("e2e submit->finished", "rate=50")
w(f"| submit→finished at idle, p50 / p99 (ms) | {m(e2e,'p50_ms'):.3f} / {m(e2e,'p99_ms'):.3f} | {peer_p50:.3f} / {peer_p99:.3f} | – | p50 ≤ the peer's, p99 ≤ 2 ms |")
w(f"| idle RSS (MB) | {med(idle):.1f} | – | – | ≤ 20 MB |")
wk = next((k for k in rows if k[0] == "watch"), None)
w(f"| watchers: {wk[1] if wk else '?'} | {note(wk) if wk else '?'} | – | – | ≤ 200 MB |")
w(f"| RSS with the preload queued (MB) | {med(preload_rss):.1f} | – | – | ≤ 100 MB at 1,000,000 |")
w("\n## Every scenario (medians)\n")
w("| scenario | param | rate | unit | p50 ms | p90 ms | p99 ms | max ms | vs Health/Check | note (last run) |")
w("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
for key, rs in rows.items():
    ratio = m(key, "ratio_to_baseline")
    w(f"| {key[0]} | {key[1]} | {m(key):,.0f} | {rs[0]['unit']} | {m(key,'p50_ms'):.3f} | {m(key,'p90_ms'):.3f} | {m(key,'p99_ms'):.3f} | {m(key,'max_ms'):.3f} | "
      + ("–" if ratio != ratio else f"{ratio*100:.0f}%") + f" | {note(key)} |")
for section in kept:
    w("\n" + section)
w("\n## Peer raw results\n")
for p in peer + pg_peer:
    w("```json\n" + json.dumps({"peer": p.get("peer", "bullmq"), **p.get("headline", p)}) + "\n```")
print("\n".join(out))
