"""Client conformance scenarios against a real daemon: submit/wait, batch,
watch order, each typed error, RetryInfo honoured (sync and asyncio)."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid

import pytest

import jobd
from conftest import config, eventually, running


def test_submit_wait(shared_daemon):
    client = shared_daemon.client()
    # bytes, str and JSON payloads; the builtin echo returns them.
    for payload, raw in [(b"\x00bytes", b"\x00bytes"), ("h\u00e9llo", "h\u00e9llo".encode()), ({"w": 100}, b'{"w":100}')]:
        job = client.submit("echo", payload, labels={"test": "submit_wait"})
        assert job.kind == "echo" and job.state in ("QUEUED", "RUNNING")
        assert isinstance(job.state, jobd.State)
        done = client.wait(job.id, timeout=30)
        assert done.state == "SUCCEEDED" and done.state is jobd.State.SUCCEEDED
        assert done.result == raw and done.attempt == 1 and done.labels == {"test": "submit_wait"}
        assert done.finished_at is not None and done.done
    assert done.json() == {"w": 100}
    assert client.get(done.id) == done

    # Every option reaches the daemon.
    when = time.time() + 0.2
    job = client.submit(
        "echo", b"x", key="k-" + uuid.uuid4().hex, priority=5, run_at=when, labels={"a": "b"},
        ordering_key="user-7", max_attempts=3, timeout=30.0,
    )
    assert (job.priority, job.max_attempts, job.timeout, job.ordering_key) == (5, 3, 30.0, "user-7")
    assert job.next_attempt_at is not None and job.state == "QUEUED"
    again = client.submit(
        "echo", b"x", key=job.idempotency_key, priority=5, run_at=when, labels={"a": "b"},
        ordering_key="user-7", max_attempts=3, timeout=30.0,
    )
    assert again.id == job.id and again.deduplicated
    assert client.wait(job.id, timeout=30).state == "SUCCEEDED"
    delayed = client.submit("echo", b"later", delay=0.3)
    assert delayed.state == "QUEUED" and delayed.next_attempt_at > delayed.created_at
    done = client.wait(delayed.id, timeout=30)
    assert (done.started_at - delayed.created_at).total_seconds() >= 0.25

    # A remote kind done by an SDK worker: JSON in, JSON out, FAILED on Permanent.
    worker = shared_daemon.worker(max_in_flight=4)

    @worker.task("py", json=True)
    def double(ctx: jobd.Context, payload):
        if payload.get("bad"):
            raise jobd.Permanent("bad input")
        return {"twice": payload["n"] * 2, "attempt": ctx.attempt, "id": ctx.job_id}

    with running(worker):
        ok = client.wait(client.submit("py", {"n": 21}).id, timeout=30)
        assert ok.state == "SUCCEEDED" and ok.json() == {"twice": 42, "attempt": 1, "id": ok.id}
        bad = client.wait(client.submit("py", {"bad": True}).id, timeout=30)
        assert bad.state == "FAILED" and bad.attempt == 1 and "bad input" in bad.last_error

    # list() iterates every page, filters by kind, state and label.
    listed = list(client.list(kind="echo", labels={"test": "submit_wait"}, page_size=1))
    assert len(listed) == 3 and all(j.state == "SUCCEEDED" for j in listed)
    assert [j.id for j in client.list(kind="py", state="FAILED")] == [bad.id]
    assert len(list(client.list(kind="echo", limit=2))) == 2
    newest = next(client.list(kind="echo", newest_first=True))
    assert newest.created_at >= listed[-1].created_at


def test_submit_wait_asyncio(shared_daemon):
    async def main():
        async with jobd.aio.Client(shared_daemon.addr) as client:
            job = await client.submit("echo", {"aio": True}, labels={"test": "aio"})
            done = await client.wait(job.id, timeout=30)
            assert done.state == "SUCCEEDED" and done.json() == {"aio": True}
            assert (await client.get(job.id)).id == job.id
            events = [e async for e in client.watch(job.id)]
            assert events[-1].job.state == "SUCCEEDED"
            assert [j.id async for j in client.list(labels={"test": "aio"})] == [job.id]
            results = await client.submit_batch([jobd.Submit("echo", b"1"), jobd.Submit("nope")])
            assert results[0].ok and isinstance(results[1].error, jobd.InvalidArgument)
            with pytest.raises(jobd.NotFound):
                await client.cancel(str(uuid.uuid4()))
            slow = await client.submit("sleep", b"5000")
            with pytest.raises(jobd.Timeout):
                await client.wait(slow.id, timeout=0.3)
            await client.cancel(slow.id)

    asyncio.run(main())


def test_batch(shared_daemon):
    client = shared_daemon.client()
    entries = [jobd.Submit("echo", f"job {i}", labels={"test": "batch"}) for i in range(5)]
    entries.insert(2, jobd.Submit("echo", b"", max_attempts=1000))  # refused alone
    entries.append(jobd.Submit("no-such-kind"))
    results = client.submit_batch(entries)
    assert len(results) == len(entries)
    assert [r.ok for r in results] == [True, True, False, True, True, True, False]
    bad = results[2].error
    assert isinstance(bad, jobd.InvalidArgument) and bad.field == "requests[2].max_attempts"
    assert isinstance(results[6].error, jobd.InvalidArgument) and results[6].error.field == "requests[6].kind"
    accepted = [r.job for r in results if r.ok]
    assert len({j.id for j in accepted}) == 5
    for i, j in enumerate(accepted):
        assert client.wait(j.id, timeout=30).result == f"job {i}".encode()
    # A batch of 1,000 in one call.
    results = client.submit_batch(jobd.Submit("echo", str(i)) for i in range(1000))
    assert len(results) == 1000 and all(r.ok for r in results)


def test_watch_order(shared_daemon):
    client = shared_daemon.client()
    job = client.submit("sleep", b"1000")
    events = list(client.watch(job.id))
    states = [e.job.state for e in events]
    seqs = [e.sequence for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert states[-1] == "SUCCEEDED" and states.count("SUCCEEDED") == 1
    order = ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states), states
    assert "RUNNING" in states  # the watch started while it ran (1 s)

    # Resuming after the last sequence: nothing more (the job is finished).
    assert list(client.watch(job.id, after_sequence=seqs[-1])) == []
    # Resuming from an earlier one: the current snapshot stands for the rest.
    resumed = list(client.watch(job.id, after_sequence=seqs[0]))
    assert [e.sequence for e in resumed] == [seqs[-1]] and resumed[0].job.state == "SUCCEEDED"

    # A retried job: every attempt's transitions, in order, ending FAILED.
    failing = client.submit("fail", b"boom")
    events = list(client.watch(failing.id))
    seqs = [e.sequence for e in events]
    seen = [(e.sequence, e.job.state, e.job.attempt) for e in events]
    assert seqs == sorted(seqs) and events[-1].job.state == "FAILED" and events[-1].job.attempt == 2, seen
    assert any(e.job.state == "RETRY_WAIT" for e in events)

    # watch_jobs sees changes of every job, in position order.
    seen = []
    ready = threading.Event()

    def follow():
        for change in client.watch_jobs(kind="echo"):
            seen.append(change)
            # The target may finish before its id is known here (an idle
            # daemon runs it in the submit's own commit): look back.
            if target[0] and any(c.job.id == target[0] and c.job.state == "SUCCEEDED" for c in seen):
                return

    target = [""]
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.3)  # the stream is open
    target[0] = client.submit("echo", b"w").id
    client.submit("echo", b"nudge")  # one more change after the id is known
    t.join(30)
    assert not t.is_alive()
    positions = [c.position for c in seen]
    assert positions == sorted(positions)
    assert [c.job.state for c in seen if c.job.id == target[0]][-1] == "SUCCEEDED"


def test_typed_errors(start_daemon, tmp_path):
    d = start_daemon(
        config(
            tmp_path,
            queue="max_backlog = 1",
            grace="0s",
            drain_timeout="10s",
        )
        + """
[auth]
tokens = [
  { token = "submit-token-0123456789", role = "submit" },
  { token = "viewer-token-0123456789", role = "viewer" },
  { token = "admin-token-0123456789", role = "admin" },
]
"""
    )
    admin = d.client(token="admin-token-0123456789", retries=0)

    # NotFound
    with pytest.raises(jobd.NotFound) as e:
        admin.get(str(uuid.uuid4()))
    assert e.value.code == "NOT_FOUND" and isinstance(e.value, jobd.JobdError)

    # InvalidArgument, with the BadRequest field
    with pytest.raises(jobd.InvalidArgument) as e:
        admin.submit("no-such-kind")
    assert e.value.field == "kind" and "unknown kind" in e.value.violations[0][1]
    with pytest.raises(jobd.InvalidArgument) as e:
        admin.submit("echo", max_attempts=101)
    assert e.value.field == "max_attempts"

    # AlreadyExists, naming the job that holds the key
    first = admin.submit("echo", b"one", key="the-key")
    with pytest.raises(jobd.AlreadyExists) as e:
        admin.submit("echo", b"two", key="the-key")
    assert e.value.existing_id == first.id and e.value.reason == "IDEMPOTENCY_KEY_REUSED"
    admin.wait(first.id, timeout=30)

    # ResourceExhausted, with RetryInfo: a remote kind with no worker keeps
    # its job QUEUED, which fills a backlog of 1.
    held = admin.submit("py_full", b"")
    with pytest.raises(jobd.ResourceExhausted) as e:
        admin.submit("py_full", b"")
    assert e.value.retry_after == pytest.approx(1.0)
    admin.cancel(held.id)

    # FailedPrecondition: cancelling a finished job
    with pytest.raises(jobd.FailedPrecondition):
        admin.cancel(first.id)
    assert admin.cancel(held.id).state == "CANCELLED"  # idempotent

    # Unauthenticated: no token, a wrong token
    for token in (None, "wrong-token-0123456789"):
        with pytest.raises(jobd.Unauthenticated):
            d.client(token=token).submit("echo")
    # PermissionDenied: a viewer submitting, a submit token cancelling
    with pytest.raises(jobd.PermissionDenied):
        d.client(token="viewer-token-0123456789").submit("echo")
    with pytest.raises(jobd.PermissionDenied):
        d.client(token="submit-token-0123456789").cancel(first.id)

    # Unavailable: the daemon draining (a running job holds it in drain).
    running_job = admin.submit("sleep", b"3000")
    eventually(lambda: admin.get(running_job.id).state == "RUNNING", "the sleep job to run")
    d.signal(signal.SIGTERM)

    def refused():
        try:
            admin.submit("echo", retries=0)
        except jobd.Unavailable:
            return True
        return False

    eventually(refused, "Submit to be UNAVAILABLE while draining", timeout=10)
    d.wait(30)
    # ... and no daemon at all.
    with pytest.raises(jobd.Unavailable):
        jobd.Client(d.addr, rpc_timeout=5).get(first.id)


def test_retry_info(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, queue="max_backlog = 2"))
    client = d.client()
    calls = []  # when each Submit call was made
    submit = client._jobs.Submit

    def counting(request, **kw):
        calls.append(time.monotonic())
        return submit(request, **kw)

    client._jobs.Submit = counting
    held = [client.submit("py_full", b"") for _ in range(2)]  # no worker: they stay QUEUED

    # retries=0: refused at once, with jobd's delay.
    calls.clear()
    with pytest.raises(jobd.ResourceExhausted) as e:
        client.submit("py_full", b"", retries=0)
    delay = e.value.retry_after
    assert delay == pytest.approx(1.0) and len(calls) == 1

    # retries=2 with the backlog staying full: 3 calls, each after jobd's
    # delay (plus at most 10% jitter), then the error.
    calls.clear()
    with pytest.raises(jobd.ResourceExhausted):
        client.submit("py_full", b"", retries=2)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 3 and all(delay <= g for g in gaps), gaps

    # The default, 3 retries: room frees during the first wait, and the
    # call after RetryInfo's delay succeeds.
    assert client.retries == 3
    calls.clear()
    timer = threading.Timer(0.3, client.cancel, args=(held[0].id,))
    timer.start()
    job = client.submit("py_full", b"")
    assert job.state == "QUEUED"
    assert len(calls) == 2 and calls[1] - calls[0] >= delay, calls
    calls.clear()
    with pytest.raises(jobd.ResourceExhausted):
        client.submit("py_full", b"")
    assert len(calls) == 4, "1 call + 3 retries"

    # A full backlog refuses a batch entry by entry, each with its RetryInfo.
    client.cancel(held[1].id)
    results = client.submit_batch([jobd.Submit("py_full"), jobd.Submit("py_full")])
    assert results[0].ok and isinstance(results[1].error, jobd.ResourceExhausted)
    assert results[1].error.retry_after == pytest.approx(1.0)

    async def aio():
        async with jobd.aio.Client(d.addr) as ac:
            t0 = time.monotonic()
            with pytest.raises(jobd.ResourceExhausted):
                await ac.submit("py_full", b"", retries=1)
            assert time.monotonic() - t0 >= delay

    asyncio.run(aio())
