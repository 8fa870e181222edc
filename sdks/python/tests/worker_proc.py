"""A worker process for the tests: `jobd.Worker` serving one kind.

Each execution appends "job_id attempt pid" to --log before it works (one
write per line, so several processes can share nothing but still not
tear lines), then sleeps the payload's milliseconds (or --sleep-ms) and
returns "job_id attempt pid" as the result.
"""
import argparse
import asyncio
import logging
import os
import sys
import time

import jobd

p = argparse.ArgumentParser()
p.add_argument("--addr", required=True)
p.add_argument("--kind", required=True)
p.add_argument("--max-in-flight", type=int, default=8)
p.add_argument("--mode", choices=["sync", "async"], default="sync")
p.add_argument("--log")
p.add_argument("--sleep-ms", type=int)
p.add_argument("--drain-timeout", type=float, default=30.0)
p.add_argument("--token")
p.add_argument("--ignore-cancel", action="store_true", help="sleep through a cancel")
args = p.parse_args()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

worker = jobd.Worker(
    args.addr,
    token=args.token,
    max_in_flight=args.max_in_flight,
    drain_timeout=args.drain_timeout,
    reconnect_min=0.1,
    reconnect_max=1.0,
)
pid = os.getpid()


def record(ctx):
    if args.log:
        fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {ctx.attempt} {pid}\n".encode())
        finally:
            os.close(fd)


def millis(payload: bytes) -> int:
    return args.sleep_ms if args.sleep_ms is not None else int(payload or b"0")


if args.mode == "sync":

    @worker.task(args.kind)
    def work(ctx: jobd.Context, payload: bytes):
        record(ctx)
        if args.ignore_cancel:
            time.sleep(millis(payload) / 1000)
        else:
            ctx.cancelled.wait(millis(payload) / 1000)
        return f"{ctx.job_id} {ctx.attempt} {pid}"

else:

    @worker.task(args.kind)
    async def work(ctx: jobd.Context, payload: bytes):
        record(ctx)
        await asyncio.sleep(millis(payload) / 1000)
        return f"{ctx.job_id} {ctx.attempt} {pid}"


worker.run()
print(f"worker_proc: run() returned; stats {worker.stats}", flush=True)
sys.exit(0)
