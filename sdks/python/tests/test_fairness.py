"""Fair claiming's key through the SDK, against a real daemon: a
`fairness = "round_robin"` kind claims key by key, so one key's flood does
not hold back another key's job."""
from __future__ import annotations

import asyncio
import threading

import pytest

import jobd
from conftest import config, running

# One start at a time, so the claim order is the run order.
FAIR = """
[kinds.py_fair]
handler = "remote"
concurrency = 1
timeout = "60s"
max_attempts = 1
fairness = "round_robin"
"""

IDLE = "py_full"


def test_fairness_key(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, extra=FAIR))
    client = d.client()

    # Stored and read back; without one, the ordering key; else "".
    flood = [client.submit("py_fair", f"flood-{i}", fairness_key="tenant-a") for i in range(4)]
    late = client.submit("py_fair", "late", fairness_key="tenant-b")
    assert [j.fairness_key for j in flood] == ["tenant-a"] * 4 and late.fairness_key == "tenant-b"
    assert client.get(late.id).fairness_key == "tenant-b"
    by_order = client.submit(IDLE, ordering_key="tenant-c")
    assert by_order.fairness_key == "tenant-c" and by_order.ordering_key == "tenant-c"
    both = client.submit(IDLE, ordering_key="stream-1", fairness_key="tenant-d")
    assert both.fairness_key == "tenant-d" and both.ordering_key == "stream-1"
    assert client.submit(IDLE).fairness_key == ""

    # Bad keys: refused by jobd, naming the field.
    for bad in ["a\x00b", "k" * 257]:
        with pytest.raises(jobd.InvalidArgument) as e:
            client.submit(IDLE, fairness_key=bad)
        assert e.value.field == "fairness_key", e.value
    assert len(client.submit(IDLE, fairness_key="k" * 256).fairness_key) == 256

    # The claims rotate over the keys: tenant-b's job, submitted after
    # tenant-a's four, is among the first two to run (in submit order it
    # would be the last).
    order = []
    lock = threading.Lock()
    worker = d.worker(max_in_flight=1)

    @worker.task("py_fair")
    def run(ctx: jobd.Context, payload: bytes):
        with lock:
            order.append(ctx.job_id)
        return payload

    with running(worker):
        for j in flood + [late]:
            assert client.wait(j.id).state == "SUCCEEDED"
    assert len(order) == 5 and order.index(late.id) <= 1, order


def test_fairness_key_in_a_batch(shared_daemon):
    client = shared_daemon.client()
    ok, bad, default = client.submit_batch([
        jobd.Submit(IDLE, b"a", fairness_key="tenant-1"),
        jobd.Submit(IDLE, b"b", fairness_key="nul\x00"),
        jobd.Submit(IDLE, b"c", ordering_key="tenant-2"),
    ])
    assert ok.ok and ok.job is not None and ok.job.fairness_key == "tenant-1"
    assert not bad.ok and isinstance(bad.error, jobd.InvalidArgument)
    assert bad.error.field == "requests[1].fairness_key"
    assert default.ok and default.job is not None and default.job.fairness_key == "tenant-2"


def test_fairness_key_asyncio(shared_daemon):
    async def main() -> None:
        async with jobd.aio.Client(shared_daemon.addr) as client:
            j = await client.submit(IDLE, b"x", fairness_key="tenant-aio")
            assert j.fairness_key == "tenant-aio" and (await client.get(j.id)).fairness_key == "tenant-aio"
            with pytest.raises(jobd.InvalidArgument) as e:
                await client.submit(IDLE, fairness_key="\x00")
            assert e.value.field == "fairness_key"

    asyncio.run(main())
