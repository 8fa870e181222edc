"""Worker conformance scenarios against a real daemon: exactly once over
kill -9 of a worker process, a checkpoint surviving kill -9, cancel
reaching the function (sync and async), drain (SIGTERM to the worker, and
jobd's own drain), reconnection."""
from __future__ import annotations

import asyncio
import collections
import logging
import signal
import threading
import time

import pytest

import jobd
from conftest import BOUND, config, eventually, running, spawn_worker_proc

JOBS = 1000


def counts(client: jobd.Client, kind: str) -> jobd.KindStatus:
    return next(k for k in client.kinds() if k.kind == kind)


def wait_sessions(client: jobd.Client, kind: str, n: int, procs=()) -> None:
    def ready():
        for p in procs:
            assert p.poll() is None, f"worker process exited ({p.returncode})"
        return len(client.workers(kind)) >= n

    eventually(ready, f"{n} worker sessions for {kind}")


def test_exactly_once_kill9(start_daemon, tmp_path):
    d = start_daemon()
    client = d.client()
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    outs = [tmp_path / f"worker-{i}.out" for i in range(3)]
    modes = ["sync", "async", "sync"]
    procs = [
        spawn_worker_proc(
            d.addr, "--kind", "py_kill", "--max-in-flight", "16", "--mode", modes[i],
            "--sleep-ms", "20", "--log", str(logs[i]), out=outs[i],
        )
        for i in range(3)
    ]
    try:
        wait_sessions(client, "py_kill", 3, procs)
        results = client.submit_batch(jobd.Submit("py_kill", f"job-{i}") for i in range(JOBS))
        assert all(r.ok for r in results)
        ids = {r.job.id for r in results}

        # kill -9 worker 0 mid-run: once it has done some work, while it holds jobs.
        def busy():
            return logs[0].exists() and len(logs[0].read_text().splitlines()) >= 60

        eventually(busy, "worker 0 to run 60 jobs", every=0.005)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(BOUND)
        killed = procs[0].pid

        def finished():
            for p in procs[1:]:
                assert p.poll() is None, f"a surviving worker exited:\n{outs[procs.index(p)].read_text()}"
            k = counts(client, "py_kill")
            assert k.failed == 0
            return k.queued + k.running + k.retry_wait == 0

        eventually(finished, "every job to finish", every=0.05)
        jobs = {j.id: j for j in client.list(kind="py_kill", page_size=1000)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert set(jobs) == ids, "no job lost, none made up"
    executions = collections.defaultdict(list)  # job id -> [(attempt, pid)]
    for log in logs:
        for line in log.read_text().splitlines():
            job_id, attempt, pid = line.split()
            executions[job_id].append((int(attempt), int(pid)))
    retried = 0
    for job_id, job in jobs.items():
        assert job.state == "SUCCEEDED", job
        runs = sorted(executions[job_id])
        # The outcome is the final attempt's, from the process that ran it.
        r_id, r_attempt, r_pid = job.text().split()
        assert (r_id, int(r_attempt)) == (job_id, job.attempt)
        assert (job.attempt, int(r_pid)) in runs, (job, runs)
        assert int(r_pid) != killed or runs == [(job.attempt, killed)]
        # Each attempt ran at most once; a job ran more than once only when
        # an earlier attempt was on the killed worker.
        assert len(set(a for a, _ in runs)) == len(runs), runs
        assert all(a <= job.attempt for a, _ in runs), runs
        assert all(pid == killed for a, pid in runs if a < job.attempt), runs
        retried += len(runs) > 1
    print(f"{JOBS} jobs, 3 worker processes, one killed with {retried} jobs running: each SUCCEEDED once")
    assert retried >= 1, "the killed worker held no job when it died"
    for i in (1, 2):
        assert len(logs[i].read_text().splitlines()) > 0, f"worker {i} ran nothing"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_checkpoint_kill9(start_daemon, tmp_path, mode):
    """A task saves a checkpoint (and waits for jobd's ack: durable), then
    its worker process is killed with kill -9 mid-job. The next attempt,
    in another process, gets that checkpoint as ctx.checkpoint (and
    returns it as the result)."""
    d = start_daemon()
    client = d.client()
    logs = [tmp_path / f"ckpt-{i}.log" for i in range(2)]
    outs = [tmp_path / f"ckpt-{i}.out" for i in range(2)]

    def spawn(i):
        return spawn_worker_proc(
            d.addr, "--kind", "py_checkpoint", "--mode", mode, "--checkpoint", "--log", str(logs[i]), out=outs[i]
        )

    procs = [spawn(0)]
    try:
        wait_sessions(client, "py_checkpoint", 1, procs)
        job = client.submit("py_checkpoint", "resume-me")
        want = f"resume-me step 7 by {procs[0].pid}".encode()

        def saved():
            assert procs[0].poll() is None, f"worker 0 exited:\n{outs[0].read_text()}"
            return f"checkpointed {job.id} 1" in outs[0].read_text()

        eventually(saved, "the first attempt to save its checkpoint and get the ack")
        running_job = client.get(job.id)
        assert running_job.state == "RUNNING" and running_job.attempt == 1, running_job
        assert running_job.checkpoint_size == len(want), running_job

        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(BOUND)
        procs.append(spawn(1))
        done = client.wait(job.id, timeout=BOUND)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert done.state == "SUCCEEDED", (done, outs[1].read_text())
    assert done.attempt == 2, done
    assert done.result == want, "the second attempt resumed from the killed one's checkpoint"
    assert f"resumed {job.id} 2" in outs[1].read_text()
    assert [x.split()[:2] for x in logs[0].read_text().splitlines()] == [[job.id, "1"]]
    assert [x.split()[:2] for x in logs[1].read_text().splitlines()] == [[job.id, "2"]]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cancel_reaches_function(start_daemon, mode):
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=4)
    started = {}  # job id -> Event
    saw = {}  # job id -> how the function learnt of the cancel
    lock = threading.Lock()

    def begin(ctx):
        with lock:
            started.setdefault(ctx.job_id, threading.Event()).set()

    if mode == "sync":

        @worker.task("py_cancel")
        def slow(ctx: jobd.Context, payload: bytes):
            begin(ctx)
            if ctx.cancelled.wait(BOUND):
                saw[ctx.job_id] = "ctx.cancelled"
                return "stopped"
            return "finished"

    else:

        @worker.task("py_cancel")
        async def slow(ctx: jobd.Context, payload: bytes):
            begin(ctx)
            try:
                await asyncio.sleep(BOUND)
            except asyncio.CancelledError:
                saw[ctx.job_id] = "CancelledError" + (" + ctx.cancelled" if ctx.cancelled.is_set() else "")
                raise
            return "finished"

    def started_event(job_id):
        with lock:
            return started.setdefault(job_id, threading.Event())

    with running(worker):
        # A client's Cancel of a running job.
        job = client.submit("py_cancel")
        assert started_event(job.id).wait(BOUND)
        assert client.get(job.id).state == "RUNNING"
        t0 = time.monotonic()
        assert client.cancel(job.id).state == "CANCELLED"
        eventually(lambda: job.id in saw, "the function to see the cancel", timeout=10)
        print(f"{mode}: cancel reached the function in {time.monotonic() - t0:.3f} s ({saw[job.id]})")
        expected = "ctx.cancelled" if mode == "sync" else "CancelledError + ctx.cancelled"
        assert saw[job.id] == expected
        time.sleep(0.2)  # any report the function made is dropped, not applied
        after = client.get(job.id)
        assert after.state == "CANCELLED" and after.result == b""

        # The attempt's timeout: jobd pushes the cancel at the deadline.
        timed = client.submit("py_cancel", timeout=0.5, max_attempts=1)
        assert started_event(timed.id).wait(BOUND)
        eventually(lambda: timed.id in saw, "the timeout to reach the function", timeout=10)
        done = client.wait(timed.id, timeout=BOUND)
        assert done.state == "FAILED" and done.attempt == 1, done

        # The worker keeps its places: max_in_flight jobs run at once again.
        more = [client.submit("py_cancel") for _ in range(4)]
        for j in more:
            assert started_event(j.id).wait(BOUND)
        for j in more:
            client.cancel(j.id)
        eventually(lambda: all(j.id in saw for j in more), "the cancels to reach the functions")
    assert worker.stats["completed"] == 0


def test_drain(start_daemon, tmp_path):
    """SIGTERM to a worker process: it takes nothing new, finishes what it
    runs, reports, hands back what it cannot finish, and exits 0."""
    d = start_daemon()
    client = d.client()
    log, out = tmp_path / "drain.log", tmp_path / "drain.out"
    proc = spawn_worker_proc(
        d.addr, "--kind", "py_drain", "--max-in-flight", "2", "--log", str(log), "--drain-timeout", "10", out=out
    )
    try:
        wait_sessions(client, "py_drain", 1, [proc])
        a, b = client.submit("py_drain", b"1500"), client.submit("py_drain", b"1500")
        eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 2, "both jobs to start")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        c = client.submit("py_drain", b"0")  # after the signal: must not be taken
        assert proc.wait(BOUND) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    for j in (a, b):
        done = client.get(j.id)
        assert done.state == "SUCCEEDED" and done.attempt == 1, done
    # C was never run by the stopping worker. (jobd may still claim it for
    # the session in the instant between the last report and the stream's
    # end: then that attempt counts, "worker lost", or the claimed job waits
    # RUNNING for the next worker; the protocol has no message that stops
    # assignments to a session. See the README, "Drain".)
    c_now = client.get(c.id)
    assert c_now.state in ("QUEUED", "RETRY_WAIT", "RUNNING") and c_now.attempt <= 1, c_now
    assert c.id not in log.read_text()
    assert "handed_back': 0" in out.read_text()

    # Past its drain timeout a worker hands back what it runs: the job is
    # retried elsewhere at once (here: by the next worker).
    proc = spawn_worker_proc(
        d.addr, "--kind", "py_drain", "--max-in-flight", "1", "--log", str(log), "--drain-timeout", "0.3",
        "--ignore-cancel", out=out,
    )
    try:
        wait_sessions(client, "py_drain", 1, [proc])
        eventually(lambda: client.get(c.id).state == "SUCCEEDED", "the queued job to run")
        slow = client.submit("py_drain", b"8000")
        eventually(lambda: slow.id in log.read_text(), "the slow job to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0, out.read_text()
        assert time.monotonic() - t0 < 6, "the drain timeout was not kept"
    finally:
        if proc.poll() is None:
            proc.kill()
    back = client.get(slow.id)
    assert back.state in ("QUEUED", "RETRY_WAIT") and back.attempt == 1, back
    assert "worker stopping" in back.last_error
    assert "handed_back': 1" in out.read_text()
    worker = d.worker(max_in_flight=1)

    @worker.task("py_drain")
    def quick(ctx, payload):
        return "done on attempt %d" % ctx.attempt

    with running(worker):
        assert client.wait(slow.id, timeout=BOUND).text() == "done on attempt 2"


def test_drain_of_the_daemon(start_daemon, tmp_path):
    """jobd drains (SIGTERM): the worker finishes what it holds and reports
    before jobd's deadline; the result is kept; the worker reconnects to the
    next daemon on the same address and goes on."""
    text = config(tmp_path, store=f"sqlite:{tmp_path}/jobd.db", grace="0s", drain_timeout="10s")
    d = start_daemon(text)
    client = d.client()
    worker = d.worker(max_in_flight=2, reconnect_min=0.05, reconnect_max=0.2)
    started = threading.Event()

    @worker.task("py")
    def work(ctx, payload):
        started.set()
        time.sleep(float(payload or b"0"))
        return b"ok %d" % ctx.attempt

    with running(worker):
        job = client.submit("py", b"1.0")
        assert started.wait(BOUND)
        d.signal(signal.SIGTERM)
        assert d.wait(BOUND) == 0
        eventually(lambda: not worker.connected, "the session to end")
        d2 = start_daemon(text, name="jobd2", listen=d.addr)
        c2 = d2.client()
        assert c2.get(job.id).state == "SUCCEEDED", "the report made during the drain was kept"
        eventually(worker.wait_connected, "the worker to reconnect")
        again = c2.wait(c2.submit("py", b"0").id, timeout=BOUND)
        assert again.state == "SUCCEEDED" and again.result == b"ok 1"
    assert worker.stats["sessions"] == 2 and worker.stats["completed"] == 2


def test_worker_refused_raises(start_daemon):
    d = start_daemon()
    worker = d.worker()

    @worker.task("echo")  # not a remote kind
    def nope(ctx, payload):
        return payload

    with pytest.raises(jobd.InvalidArgument) as e:
        worker.run()
    assert e.value.field == "hello.kinds[0]"


def test_stale_ack_logged_at_debug(start_daemon, caplog):
    """A report for an attempt jobd already gave up is acked stale: logged at
    debug, counted, and the job is not changed."""
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=1)
    release = threading.Event()

    @worker.task("py")
    def work(ctx, payload):
        release.wait(BOUND)  # ignores the cancel: reports after it
        return b"late"

    caplog.set_level(logging.DEBUG, logger="jobd.worker")
    with running(worker):
        job = client.submit("py", timeout=0.3, max_attempts=1)
        assert client.wait(job.id, timeout=BOUND).state == "FAILED"
        release.set()
        time.sleep(0.3)
    assert client.get(job.id).state == "FAILED"
    assert any("not reported" in r.message or "stale" in r.message for r in caplog.records if r.levelno == logging.DEBUG)


def test_serve_in_asyncio_and_retry_later(start_daemon):
    """`await worker.serve()` runs async tasks on the caller's loop;
    RetryLater sets when the next attempt starts."""
    d = start_daemon()

    async def main():
        worker = d.worker(max_in_flight=2)
        loops = set()

        @worker.task("py")
        async def flaky(ctx: jobd.Context, payload: bytes):
            loops.add(asyncio.get_running_loop())
            if ctx.attempt == 1:
                raise jobd.RetryLater("not yet", after=0.5)
            return {"attempt": ctx.attempt}

        serving = asyncio.ensure_future(worker.serve())
        async with jobd.aio.Client(d.addr) as client:
            job = await client.submit("py", b"")
            done = await client.wait(job.id, timeout=BOUND)
        worker.stop()
        await asyncio.wait_for(serving, BOUND)
        assert loops == {asyncio.get_running_loop()}
        return done

    done = asyncio.run(main())
    assert done.state == "SUCCEEDED" and done.json() == {"attempt": 2}
    # A success clears last_error; the retried attempt's error stays in the history.
    assert done.last_error == ""
    assert [(a.attempt, a.outcome, a.error) for a in done.attempts] == [(1, "retried", "not yet"), (2, "succeeded", "")]
    assert all(a.worker and a.started_at and a.finished_at for a in done.attempts), done.attempts
    assert (done.started_at - done.created_at).total_seconds() >= 0.5, "the second attempt started early"
