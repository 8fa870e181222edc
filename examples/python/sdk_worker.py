#!/usr/bin/env python3
"""A jobd worker written with the Python SDK (sdks/python): it does the work
of a kind declared `handler = "remote"` in jobd's config, e.g.

    [kinds.resize]
    handler = "remote"
    timeout = "60s"

    pip install ./sdks/python
    python3 examples/python/sdk_worker.py --kind resize [--addr HOST:PORT] [--max-in-flight 8]

The payload is JSON like {"w": 100, "h": 80}; the result is JSON too. A
width of 0 or less fails without a retry (jobd.Permanent); {"slow": N}
takes N seconds and stops early when jobd cancels the job. SIGTERM or
Ctrl-C drains: the jobs being run finish and are reported, then it exits.
Compare with worker.py beside it: the same protocol by hand.
"""
import argparse
import logging
import time

import jobd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", help="default: JOBD_ADDR, else 127.0.0.1:50051 (a token: JOBD_TOKEN)")
    p.add_argument("--kind", default="resize")
    p.add_argument("--max-in-flight", type=int, default=8)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    worker = jobd.Worker(args.addr, max_in_flight=args.max_in_flight)

    @worker.task(args.kind, json=True)
    def resize(ctx: jobd.Context, image: dict):
        w, h = image.get("w", 100), image.get("h", 100)
        if w <= 0 or h <= 0:
            raise jobd.Permanent(f"bad size {w}x{h}")  # FAILED at once, no retry
        if ctx.cancelled.wait(image.get("slow", 0)):  # jobd cancelled it (or its timeout passed)
            return None  # this report would be stale: jobd drops it
        logging.info("job %s attempt %d: %dx%d", ctx.job_id, ctx.attempt, w, h)
        return {"w": w // 2, "h": h // 2, "at": time.time()}

    worker.run()  # until SIGTERM / Ctrl-C


if __name__ == "__main__":
    main()
