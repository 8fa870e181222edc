#!/usr/bin/env python3
"""A jobd client written with the Python SDK (sdks/python): submits, waits,
submits a batch, follows a job's changes, and handles typed errors. It uses
the builtin kinds `echo` and `sleep` (a daemon with no config serves them).

    pip install ./sdks/python
    python3 examples/python/sdk_client.py [--addr HOST:PORT]   # or JOBD_ADDR / JOBD_TOKEN

Compare with client.py beside it: the same calls on generated stubs.
"""
import argparse
import sys

import jobd


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--addr", help="default: JOBD_ADDR, else 127.0.0.1:50051")
    args = p.parse_args()

    with jobd.Client(args.addr) as client:
        # One job, waited for.
        job = client.submit("echo", {"hello": "world"}, labels={"demo": "sdk_client.py"})
        job = client.wait(job.id, timeout=30)
        print(f"submit: {job.id} {job.state} result={job.json()}")

        # A batch: one result per entry, each accepted or refused on its own.
        results = client.submit_batch(
            [jobd.Submit("echo", f"hello {i}", labels={"demo": "sdk_client.py"}) for i in range(3)]
            + [jobd.Submit("echo", max_attempts=1000)]  # refused: max_attempts is 1..=100
        )
        for r in results:
            print(f"batch: accepted {r.job.id}" if r.ok else f"batch: refused {r.error.code} field={r.error.field}")

        # Every change of a job, in order, until it ends.
        slow = client.submit("sleep", "500")
        for event in client.watch(slow.id):
            print(f"watch: {event.job.state} attempt={event.job.attempt} sequence={event.sequence}")

        # Pages are fetched as the loop goes.
        n = sum(1 for _ in client.list(kind="echo", state="SUCCEEDED", labels={"demo": "sdk_client.py"}))
        print(f"list: {n} echo jobs of this demo succeeded")

        # Typed errors, with the details jobd sends.
        try:
            client.submit("no-such-kind")
        except jobd.InvalidArgument as e:
            print(f"error: {e.code} field={e.field}: {e.message}")
        try:
            client.cancel(job.id)
        except jobd.FailedPrecondition as e:
            print(f"error: {e.code}: {e.message}")
        try:
            client.wait(client.submit("sleep", "5000").id, timeout=0.5)
        except jobd.Timeout as e:
            print(f"error: still {e.job.state} after 0.5 s; cancelling it")
            client.cancel(e.job.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
