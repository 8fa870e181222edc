"""Turns scripts/bench.sh results into BENCHMARKS.md (Markdown on stdout).
Usage: bench_report.py JOBD_JSONL PEER_JSONL NPROC DISK COMMAND [PREVIOUS_MD]
Sections of PREVIOUS_MD that this script does not write (hand-written
measurements: remote workers, ordering keys, ...) are carried over."""
import datetime, json, statistics, sys

jobd_path, peer_path, nproc, disk, command = sys.argv[1:6]
GENERATED = ("Headline", "Every scenario", "Peer raw results")
kept = []
if len(sys.argv) > 6:
    try:
        text = open(sys.argv[6]).read()
    except FileNotFoundError:
        text = ""
    for part in text.split("\n## ")[1:]:
        if not part.startswith(GENERATED):
            kept.append("## " + part.rstrip("\n"))
rows, idle, preload_rss = {}, [], []
for line in open(jobd_path):
    d = json.loads(line)
    if "idle_rss_mb" in d: idle.append(d["idle_rss_mb"])
    if "preload_rss_mb" in d: preload_rss.append(d["preload_rss_mb"])
    for r in d.get("rows", []):
        rows.setdefault((r["scenario"], r["param"]), []).append(r)
peer = [json.loads(l) for l in open(peer_path) if l.strip()]

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
w("## Headline\n")
w("| measure | jobd | peer (BullMQ) | jobd / peer | target |")
w("|---|---:|---:|---:|---|")
sub = {c: (m(("submit", f"c={c}")), m(("submit", f"c={c}"), "ratio_to_baseline")) for c in (1, 16, 64, 256)}
for c, (rate, ratio) in sub.items():
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
for p in peer:
    w("```json\n" + json.dumps(p.get("headline", p)) + "\n```")
print("\n".join(out))
