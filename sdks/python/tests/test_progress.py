"""Long-running jobs against a real daemon: a task's ctx.progress() and
ctx.log() reach watchers, Job.progress and client.logs() (sync and async
tasks, sync and asyncio clients)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

import jobd
from conftest import BOUND, running

#: Longer than jobd's progress coalescing (200 ms): every value is stored.
STEP = 0.3
PERCENTS = (10, 50, 90)
LINES = ["starting", "two", "three", "done"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_progress_logs(start_daemon, mode):
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=2)
    go = threading.Event()  # the watchers are on: the task may start reporting

    def bad(ctx, payload):
        if payload == b"bad-percent":
            ctx.progress(101)  # ValueError: fails the attempt, as any exception
        if payload == b"long-message":
            ctx.progress(5, "x" * 257)
        if payload == b"many-lines":  # 1,200 lines in one call: two Log messages
            ctx.log(*[f"line {i}" for i in range(1200)])
            return "ok"
        return None

    if mode == "sync":

        @worker.task("py_progress")
        def work(ctx: jobd.Context, payload: bytes):
            if payload:
                return bad(ctx, payload)
            assert go.wait(BOUND)
            ctx.log("starting", "two\nthree\n")
            for p in PERCENTS:
                ctx.progress(p, f"step {p}", {"p": p})
                time.sleep(STEP)
            ctx.log("done")
            return "ok"

    else:

        @worker.task("py_progress")
        async def work(ctx: jobd.Context, payload: bytes):
            if payload:
                return bad(ctx, payload)
            while not go.is_set():
                await asyncio.sleep(0.01)
            ctx.log("starting", "two\nthree\n")
            for p in PERCENTS:
                ctx.progress(p, f"step {p}", {"p": p})
                await asyncio.sleep(STEP)
            ctx.log("done")
            return "ok"

    events, followed, errors = [], [], []
    ended = {}  # stream -> whether the job was terminal when it ended

    def collect(into, it, name):
        try:
            for x in it:
                into.append(x)
            ended[name] = client.get(job.id).done
        except BaseException as e:  # reported below
            errors.append(e)

    with running(worker):
        job = client.submit("py_progress", max_attempts=1)
        threads = [
            threading.Thread(target=collect, args=(events, client.watch(job.id, timeout=BOUND), "watch")),
            threading.Thread(target=collect, args=(followed, client.logs(job.id, follow=True, timeout=BOUND), "logs")),
        ]
        for t in threads:
            t.start()
        time.sleep(0.2)  # both streams open
        go.set()
        for t in threads:
            t.join(BOUND)
        assert not errors, errors
        done = client.get(job.id)
        assert done.state == "SUCCEEDED", done

        # Watchers see each progress value as an event of the RUNNING job,
        # increasing, between RUNNING and SUCCEEDED.
        states = [e.job.state for e in events]
        assert states[-1] == "SUCCEEDED" and states.count("SUCCEEDED") == 1 and "RUNNING" in states, states
        assert [e.sequence for e in events] == sorted(set(e.sequence for e in events))
        first_running = states.index("RUNNING")
        at = [i for i, e in enumerate(events) if e.job.progress is not None and i < len(events) - 1]
        assert at and all(first_running <= i and events[i].job.state == "RUNNING" for i in at), states
        with_progress = [events[i].job for i in at]
        seen = [j.progress.percent for j in with_progress]
        assert set(seen) == set(PERCENTS) and seen == sorted(seen) and len(seen) == len(set(seen)), seen
        last = with_progress[-1].progress
        assert (last.percent, last.message, last.json()) == (90, "step 90", {"p": 90})
        assert last.updated_at is not None and last.updated_at.tzinfo is not None
        assert done.progress is not None and done.progress.percent == 90, "progress is kept after the end"

        # client.logs: every line, with its attempt, in order.
        lines = list(client.logs(job.id))
        assert [x.text for x in lines] == LINES
        assert all(x.attempt == 1 and x.time is not None and x.time.tzinfo is not None for x in lines)
        assert [x.seq for x in lines] == sorted(set(x.seq for x in lines))
        assert [x.text for x in client.logs(job.id, after=lines[1].seq)] == LINES[2:]
        # follow=True gave the same lines and ended after the terminal state.
        assert [x.text for x in followed] == LINES and ended == {"watch": True, "logs": True}
        assert [x.text for x in client.logs(job.id, follow=True, timeout=BOUND)] == LINES

        async def aio():
            async with jobd.aio.Client(d.addr) as c:
                got = [x.text async for x in c.logs(job.id)]
                follow = [x.text async for x in c.logs(job.id, follow=True, timeout=BOUND)]
                return got, follow, (await c.get(job.id)).progress

        got, follow, progress = asyncio.run(aio())
        assert got == LINES and follow == LINES and progress == done.progress

        # Out of bounds: ValueError in the function; the job fails like on
        # any exception, and the session is not broken.
        for payload, why in [(b"bad-percent", "0 to 100"), (b"long-message", "at most 256")]:
            failed = client.wait(client.submit("py_progress", payload, max_attempts=1).id, timeout=BOUND)
            assert failed.state == "FAILED" and "ValueError" in failed.last_error and why in failed.last_error, failed
        many = client.wait(client.submit("py_progress", b"many-lines").id, timeout=BOUND)
        assert many.state == "SUCCEEDED" and many.attempt == 1, many
        kept = [x.text for x in client.logs(many.id)]
        assert kept == [f"line {i}" for i in range(200, 1200)], "jobd keeps a job's newest 1,000 lines"
        with pytest.raises(jobd.NotFound):
            list(client.logs("00000000-0000-4000-8000-000000000000"))
    assert worker.stats["sessions"] == 1, "a message out of bounds ended the session"


def test_touch_extends_deadline(start_daemon):
    """py_touch times out after 1 s; touching it (2 s from now, every
    0.5 s) keeps its one attempt alive for 2.5 s, to SUCCEEDED."""
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=1)
    seen = {}

    @worker.task("py_touch")
    def work(ctx: jobd.Context, payload: bytes):
        first = ctx.deadline
        with pytest.raises(ValueError):
            ctx.touch(-1.0)
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            ctx.touch(2.0)
            time.sleep(0.5)
            assert not ctx.cancelled.is_set(), "the attempt timed out"
        seen["deadlines"] = (first, ctx.deadline)
        return "ok"

    with running(worker):
        job = client.wait(client.submit("py_touch").id, timeout=BOUND)
    assert job.state == "SUCCEEDED" and job.attempt == 1, job
    first, last = seen["deadlines"]
    assert first is not None and last is not None and last > first, seen


def test_checkpoint_next_attempt(start_daemon):
    """ctx.touch(checkpoint=...) against jobd: 64 KiB is kept, one byte more
    raises ValueError before anything is sent (the session lives on), the
    ack resolves the touch's future, a touch with only a checkpoint leaves
    the deadline where it was, the job's checkpoint_size follows the last
    checkpoint saved, and the next attempt gets it as ctx.checkpoint."""
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=1)
    seen = {}
    text = "half way \u00e9"  # a str goes as UTF-8

    @worker.task("py")
    def work(ctx: jobd.Context, payload: bytes):
        if ctx.attempt == 1:
            seen["first"] = ctx.checkpoint
            with pytest.raises(ValueError, match="at most 65536"):
                ctx.touch(checkpoint=b"x" * (64 * 1024 + 1))
            before = ctx.deadline
            big = ctx.touch(checkpoint=b"x" * (64 * 1024)).result(BOUND)
            seen["big_size"] = client.get(ctx.job_id).checkpoint_size
            small = ctx.touch(checkpoint=text).result(BOUND)
            seen["small_size"] = client.get(ctx.job_id).checkpoint_size
            seen["deadlines"] = (before, big, small, ctx.deadline)
            seen["ctx"] = ctx
            raise jobd.RetryLater("resume from the checkpoint", after=0.1)
        seen["second"] = ctx.checkpoint
        return ctx.checkpoint

    with running(worker):
        job = client.wait(client.submit("py").id, timeout=BOUND)
        late = seen["ctx"].touch(checkpoint=b"late")  # the attempt ended: nothing sent
        assert late.done() and late.result() is None
    assert job.state == "SUCCEEDED" and job.attempt == 2, job
    assert seen["first"] is None and seen["second"] == text.encode() and job.result == text.encode()
    assert (seen["big_size"], seen["small_size"]) == (64 * 1024, len(text.encode()))
    before, big, small, kept = seen["deadlines"]
    assert before is not None and big is not None and small is not None, seen["deadlines"]
    assert small == kept, "ctx.deadline follows the ack"
    assert abs((small - before).total_seconds()) < 1.0, "a checkpoint alone does not move the deadline"
    assert worker.stats["sessions"] == 1, "the oversized checkpoint never reached jobd"
