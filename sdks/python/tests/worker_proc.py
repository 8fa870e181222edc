"""A worker process for the tests: `jobd.Worker` serving one kind.

Each execution appends "job_id attempt pid" to --log before it works (one
write per line, so several processes can share nothing but still not
tear lines), then sleeps the payload's milliseconds (or --sleep-ms) and
returns "job_id attempt pid" as the result.

With --checkpoint (scenario checkpoint_kill9) an attempt that gets no
checkpoint saves one, "<payload> step 7 by <pid>", waits for jobd's ack
(durable), prints "checkpointed <job_id> <attempt>" and then waits to be
killed; an attempt that gets one prints "resumed <job_id> <attempt>" and
returns the checkpoint as the result.
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
p.add_argument("--checkpoint", action="store_true", help="save a checkpoint and hang, or resume from one")
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


def checkpoint_of(ctx: jobd.Context, payload: bytes) -> bytes:
    return payload + f" step 7 by {pid}".encode()


if args.checkpoint and args.mode == "sync":

    @worker.task(args.kind)
    def work(ctx: jobd.Context, payload: bytes):
        record(ctx)
        if ctx.checkpoint is not None:
            print(f"resumed {ctx.job_id} {ctx.attempt}", flush=True)
            return ctx.checkpoint
        deadline = ctx.touch(checkpoint=checkpoint_of(ctx, payload)).result(60)
        assert deadline is not None, "the checkpoint was not kept"
        print(f"checkpointed {ctx.job_id} {ctx.attempt}", flush=True)
        ctx.cancelled.wait(3600)  # until kill -9
        return "not killed"

elif args.checkpoint:

    @worker.task(args.kind)
    async def work(ctx: jobd.Context, payload: bytes):
        record(ctx)
        if ctx.checkpoint is not None:
            print(f"resumed {ctx.job_id} {ctx.attempt}", flush=True)
            return ctx.checkpoint
        deadline = await asyncio.wait_for(asyncio.wrap_future(ctx.touch(checkpoint=checkpoint_of(ctx, payload))), 60)
        assert deadline is not None, "the checkpoint was not kept"
        print(f"checkpointed {ctx.job_id} {ctx.attempt}", flush=True)
        await asyncio.sleep(3600)  # until kill -9
        return "not killed"

elif args.mode == "sync":

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
