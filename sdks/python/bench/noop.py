#!/usr/bin/env python3
"""No-op jobs through one Python worker process: the SDK's `jobd.Worker`
against the raw-protocol example (examples/python/worker.py), in the same
run, against the same daemon, with the same max_in_flight.

    JOBD_BIN=target/release/jobd PYTHONPATH=sdks/python \\
        python3 sdks/python/bench/noop.py [--jobs 5000] [--rounds 3] [--max-in-flight 64]

Each round starts a fresh daemon (store memory:), one worker process, waits
until it is connected, submits the jobs in batches of 1000, and measures
from the first submit to the last job's finished_at, and the worker
process's CPU time (user + system) over the same span. Prints both per
round and their medians per worker: jobs/s depends on what else the
machine runs; CPU per job much less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
SDK = HERE.parent
REPO = SDK.parent.parent
sys.path.insert(0, str(SDK))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # see the SDK README, "Processes and fork"

import jobd  # noqa: E402

CONFIG = """
store = "memory:"
admin_listen = "off"
[queue]
workers = 256
[drain]
grace = "0s"
timeout = "2s"
[kinds.noop]
handler = "remote"
concurrency = 256
"""

SDK_WORKER = """
import sys, jobd
w = jobd.Worker(sys.argv[1], max_in_flight=int(sys.argv[2]))
@w.task("noop")
def noop(ctx, payload):
    return payload
w.run()
"""


def start_daemon(binary: str, tmp: str):
    cfg = Path(tmp) / "jobd.toml"
    cfg.write_text(CONFIG)
    p = subprocess.Popen(
        [binary, "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    for line in p.stderr:  # type: ignore[union-attr]
        if "jobd serving" in line:
            addr = line.split("listen=")[1].split()[0]
            # Keep reading its log, or a full pipe would block the daemon.
            threading.Thread(target=p.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return p, addr
    raise SystemExit("daemon did not start")


def worker_cmd(which: str, addr: str, mif: int):
    if which == "sdk":
        return [sys.executable, "-c", SDK_WORKER, addr, str(mif)]
    if which.endswith(".py"):
        return [sys.executable, which, addr, str(mif)]
    return [
        sys.executable,
        str(REPO / "examples/python/worker.py"),
        "--addr", addr, "--kind", "noop", "--max-in-flight", str(mif),
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_(binary: str, which: str, jobs: int, mif: int) -> Tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon, addr = start_daemon(binary, tmp)
        env = {**os.environ, "PYTHONPATH": str(SDK)}
        worker = subprocess.Popen(worker_cmd(which, addr, mif), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = jobd.Client(addr)
            deadline = time.monotonic() + 20
            while not client.workers("noop"):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"{which} worker did not connect")
                time.sleep(0.02)
            cpu0 = cpu_seconds(worker.pid)
            t0 = time.time()
            for start in range(0, jobs, 1000):
                n = min(1000, jobs - start)
                results = client.submit_batch([jobd.Submit("noop", b"x") for _ in range(n)])
                assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
            while True:
                k = next(k for k in client.kinds() if k.kind == "noop")
                if k.queued + k.running + k.retry_wait == 0:
                    break
                if time.time() - t0 > 300:
                    raise SystemExit("jobs did not finish")
                time.sleep(0.05)
            done = list(client.list(kind="noop", page_size=1000))
            assert len(done) == jobs and all(j.state == "SUCCEEDED" for j in done), "not all succeeded"
            last = max(j.finished_at for j in done if j.finished_at)
            cpu = cpu_seconds(worker.pid) - cpu0
            client.close()
            return jobs / (last.timestamp() - t0), cpu / jobs * 1e6
        finally:
            worker.kill()
            worker.wait()
            daemon.terminate()
            daemon.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--extra", action="append", default=[], help="another worker script (ADDR MAX_IN_FLIGHT args) to compare")
    p.add_argument("--bin", default=os.environ.get("JOBD_BIN", str(REPO / "target/release/jobd")))
    a = p.parse_args()
    figures: Dict[str, List[Tuple[float, float]]] = {w: [] for w in ["raw", "sdk", *a.extra]}
    for r in range(a.rounds):
        for which in figures:  # interleaved: both see the same machine
            rate, cpu = round_(a.bin, which, a.jobs, a.max_in_flight)
            figures[which].append((rate, cpu))
            print(f"round {r + 1}: {which:3} {rate:8.0f} jobs/s  {cpu:6.0f} us CPU/job in the worker", flush=True)
    for which, runs in figures.items():
        print(f"median {which}: {statistics.median(r for r, _ in runs):.0f} jobs/s, "
              f"{statistics.median(c for _, c in runs):.0f} us of worker CPU per job, over {len(runs)} rounds "
              f"({a.jobs} no-op jobs, max_in_flight {a.max_in_flight})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
