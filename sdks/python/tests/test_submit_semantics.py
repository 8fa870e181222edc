"""Start deadlines and dedup modes through the SDK, against a real daemon.

The remote kind `py_full` has no worker in this module: its jobs stay
QUEUED at attempt 0, so they hold their dedup key and never start."""
from __future__ import annotations

import asyncio
import datetime
import time

import pytest

import jobd
from conftest import BOUND

IDLE = "py_full"


def test_dedup_and_deadlines(shared_daemon):
    client = shared_daemon.client()

    # KEEP (the default): the job holding the key, unchanged.
    first = client.submit(IDLE, b"one", dedup=jobd.Dedup("keep-1"))
    assert first.dedup_outcome == "created" and not first.deduplicated and first.dedup_key == "keep-1"
    kept = client.submit(IDLE, b"other", dedup=jobd.Dedup("keep-1", mode="keep"))
    assert kept.id == first.id and kept.dedup_outcome == "kept" and kept.deduplicated
    assert kept.payload_size == 3, "KEEP leaves the payload as it was"
    other = client.submit(IDLE, b"one", dedup=jobd.Dedup("keep-2"))
    assert other.id != first.id and other.dedup_outcome == "created"
    plain = client.submit(IDLE, b"one")
    assert plain.dedup_outcome is None and plain.dedup_key == ""

    # REPLACE: same id, the new payload and labels.
    r1 = client.submit(IDLE, b"a", labels={"v": "1"}, dedup=jobd.Dedup("rep", "replace"))
    r2 = client.submit(IDLE, b"bbbb", labels={"v": "2"}, dedup=jobd.Dedup("rep", "replace"))
    assert r2.id == r1.id and r2.dedup_outcome == "replaced" and not r2.deduplicated
    assert r2.payload_size == 4 and r2.labels == {"v": "2"}

    # DEBOUNCE: merges, its start moves to the last submit + window, never
    # past the first submit + max_wait.
    t0 = time.time()
    d1 = client.submit(IDLE, b"1", dedup=jobd.Dedup("deb", "debounce", window=30, max_wait=40))
    assert d1.dedup_outcome == "created" and d1.next_attempt_at is not None
    assert t0 + 29 <= d1.next_attempt_at.timestamp() <= time.time() + 31
    time.sleep(0.3)
    d2 = client.submit(IDLE, b"22", dedup=jobd.Dedup("deb", "debounce", window=30, max_wait=40))
    assert d2.id == d1.id and d2.dedup_outcome == "debounced" and d2.payload_size == 2
    assert d2.next_attempt_at is not None and d2.next_attempt_at > d1.next_attempt_at
    d3 = client.submit(IDLE, b"3", dedup=jobd.Dedup("deb", "debounce", window=120, max_wait=40))
    assert d3.id == d1.id and d3.dedup_outcome == "debounced"
    assert d3.created_at is not None and d3.next_attempt_at is not None
    assert d3.next_attempt_at <= d3.created_at + datetime.timedelta(seconds=40, milliseconds=1), "max_wait caps it"

    # Bad dedups: refused by jobd, naming the field.
    with pytest.raises(jobd.InvalidArgument) as e:
        client.submit(IDLE, dedup=jobd.Dedup(""))
    assert e.value.field == "dedup.key"
    with pytest.raises(jobd.InvalidArgument) as e:
        client.submit(IDLE, dedup=jobd.Dedup("k", "debounce"))
    assert e.value.field == "dedup.window"
    with pytest.raises(jobd.InvalidArgument) as e:
        client.submit(IDLE, dedup=jobd.Dedup("k", "keep", window=1))
    assert e.value.field == "dedup.window"
    with pytest.raises(ValueError):
        jobd.Dedup("k", "merge")
    with pytest.raises(TypeError):
        client.submit(IDLE, dedup="k")  # type: ignore[arg-type]

    # start_within sets start_before on the job; start_before is echoed.
    t0 = time.time()
    w = client.submit(IDLE, start_within=60)
    assert w.start_before is not None and t0 + 59 <= w.start_before.timestamp() <= time.time() + 61
    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(minutes=5)
    b = client.submit(IDLE, start_before=when)
    assert b.start_before == when and client.get(b.id).start_before == when
    assert client.submit(IDLE).start_before is None
    with pytest.raises(jobd.InvalidArgument) as e:
        client.submit(IDLE, start_before=time.time() - 10)
    assert e.value.field == "start_before"
    with pytest.raises(ValueError):
        client.submit(IDLE, start_within=5, start_before=when)

    # A job not started by its deadline ends FAILED, expired.
    expiring = client.submit(IDLE, start_within=0.3)
    done = client.wait(expiring.id, timeout=BOUND)
    assert done.state == "FAILED" and done.attempt == 0 and done.last_error.startswith("expired"), done


def test_dedup_and_deadlines_in_a_batch(shared_daemon):
    client = shared_daemon.client()
    results = client.submit_batch([
        jobd.Submit(IDLE, b"a", dedup=jobd.Dedup("batch-k")),
        jobd.Submit(IDLE, b"b", dedup=jobd.Dedup("batch-k")),
        jobd.Submit(IDLE, b"c", dedup=jobd.Dedup("")),
        jobd.Submit(IDLE, b"d", start_within=60),
    ])
    first, merged, bad, deadline = results
    assert first.ok and first.dedup_outcome == "created" and first.job is not None
    assert merged.ok and merged.dedup_outcome == "kept" and merged.deduplicated
    assert merged.job is not None and merged.job.id == first.job.id
    assert not bad.ok and isinstance(bad.error, jobd.InvalidArgument) and bad.dedup_outcome is None
    assert bad.error.field == "requests[2].dedup.key"
    assert deadline.ok and deadline.job is not None and deadline.job.start_before is not None
    assert deadline.dedup_outcome is None


def test_dedup_and_deadlines_asyncio(shared_daemon):
    async def main() -> None:
        async with jobd.aio.Client(shared_daemon.addr) as client:
            a = await client.submit(IDLE, b"x", dedup=jobd.Dedup("aio", "replace"), start_within=60)
            b = await client.submit(IDLE, b"yy", dedup=jobd.Dedup("aio", "replace"), start_within=60)
            assert a.dedup_outcome == "created" and b.dedup_outcome == "replaced" and b.id == a.id
            assert b.start_before is not None and b.dedup_key == "aio"
            with pytest.raises(jobd.InvalidArgument) as e:
                await client.submit(IDLE, dedup=jobd.Dedup(""))
            assert e.value.field == "dedup.key"

    asyncio.run(main())
