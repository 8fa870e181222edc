"""Workflow scenarios against a real daemon: fan-in (a batch of parents and
a callback depending on all of them), a child WAITING until its parent
finishes, the graph, the cascade of a parent's failure and its repair."""
from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Dict, List, Tuple

import pytest

import jobd
from conftest import BOUND, eventually, running

N = 5


def test_workflow_fan_in(start_daemon):
    """A batch of N parents and a callback depending on all of them ($N
    references, on_dependency_failure="run"): the callback's function
    receives every parent's result in ctx.parents, in depends_on order (a
    failed parent's state too), and runs once, after the last parent."""
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=8)
    last = threading.Event()  # holds the last parent until the test lets it go
    lock = threading.Lock()
    returned: List[str] = []  # parents whose function returned (or raised)
    calls: List[Tuple[str, List[jobd.ParentResult], List[str]]] = []  # the callback's runs

    @worker.task("py_parent", json=True)
    def parent(ctx: jobd.Context, payload):
        assert ctx.parents == []  # no parents of its own
        try:
            if payload["i"] == N - 1:
                assert last.wait(BOUND)
            if payload["i"] == 1:
                raise jobd.Permanent("parent 1 fails")
            return {"i": payload["i"], "square": payload["i"] ** 2}
        finally:
            with lock:
                returned.append(ctx.job_id)

    @worker.task("py_child")
    def callback(ctx: jobd.Context, payload: bytes):
        with lock:
            calls.append((ctx.job_id, list(ctx.parents), list(returned)))
        return {"sum": sum(p.json()["square"] for p in ctx.parents if p.succeeded), "n": len(ctx.parents)}

    # The callback names its parents in an order of its own: ctx.parents follows it.
    order = [3, 0, 4, 1, 2]
    entries = [jobd.Submit("py_parent", {"i": i}, labels={"batch": "b1"}) for i in range(N)]
    entries.append(
        jobd.Submit(
            "py_child", b"callback", labels={"batch": "b1", "role": "callback"},
            depends_on=[f"${i}" for i in order], on_dependency_failure="run",
        )
    )
    with running(worker):
        results = client.submit_batch(entries)
        assert all(r.ok for r in results), [r.error for r in results]
        ids = [r.job.id for r in results[:N]]
        cb = results[N].job
        assert cb.state == "WAITING" and cb.state is jobd.State.WAITING and not cb.done
        assert cb.parent_ids == [ids[i] for i in order] and cb.waiting_on == N
        assert cb.on_dependency_failure == "run"
        assert all(r.job.parent_ids == [] and r.job.on_dependency_failure is None for r in results[:N])

        # Every parent but the last finished: the callback still waits, on one.
        eventually(lambda: all(client.get(i).done for i in ids[: N - 1]), "the first parents to finish")
        held = client.get(cb.id)
        assert held.state == "WAITING" and held.waiting_on == 1, held
        assert calls == []
        last.set()

        done = client.wait(cb.id, timeout=BOUND)
        assert done.state == "SUCCEEDED", done
        assert done.json() == {"sum": 0 + 4 + 9 + 16, "n": N}
        assert done.attempt == 1 and [a.outcome for a in done.attempts] == ["succeeded"]
        assert done.waiting_on == 0
        parents = {i: client.get(i) for i in ids}
        assert done.started_at >= max(p.finished_at for p in parents.values())

    # Ran once, after every parent's function had returned, with every result.
    assert len(calls) == 1, calls
    job_id, got, before = calls[0]
    assert job_id == cb.id and sorted(before) == sorted(ids)
    assert [p.id for p in got] == [ids[i] for i in order]
    for p, i in zip(got, order):
        assert p.kind == "py_parent" and not p.result_omitted
        if i == 1:
            assert p.state is jobd.State.FAILED and p.result == b"" and p.json() is None
        else:
            assert p.state is jobd.State.SUCCEEDED and p.succeeded
            assert p.json() == {"i": i, "square": i * i} and p.result == parents[ids[i]].result
    # The batch is one label away: ListJobs filters by it.
    assert {j.id for j in client.list(labels={"batch": "b1"})} == set(ids) | {cb.id}


def test_workflow_waiting_and_graph(start_daemon):
    """A child is WAITING (not finished: wait() goes on) until its parent
    finishes, then runs with the parent's result; graph() returns the jobs
    and edges; a parent's failure cancels its children down the graph, and
    retrying repairs it."""
    d = start_daemon()
    client = d.client()
    worker = d.worker(max_in_flight=8)
    gates: Dict[str, threading.Event] = {"hold": threading.Event(), "fail": threading.Event()}
    failed_once = threading.Event()
    seen: Dict[str, List[jobd.ParentResult]] = {}

    @worker.task("py_parent")
    def parent(ctx: jobd.Context, payload: bytes):
        assert gates[payload.decode()].wait(BOUND)
        if payload == b"fail" and not failed_once.is_set():
            failed_once.set()
            raise jobd.Permanent("parent failed")
        return {"from": ctx.job_id}

    @worker.task("py_child")
    def child(ctx: jobd.Context, payload: bytes):
        seen[ctx.job_id] = list(ctx.parents)
        return payload

    with running(worker):
        p = client.submit("py_parent", b"hold")
        c = client.submit("py_child", b"child", depends_on=[p])  # a Job, or its id
        g = client.submit("py_child", b"grandchild", depends_on=[c.id], on_dependency_failure="run")
        assert c.state == "WAITING" and c.waiting_on == 1 and c.parent_ids == [p.id]
        assert c.on_dependency_failure == "cancel"  # the default
        assert g.state == "WAITING" and g.parent_ids == [c.id] and g.on_dependency_failure == "run"
        eventually(lambda: client.get(p.id).state == "RUNNING", "the parent to run")

        # WAITING is not terminal: wait() goes on until its timeout.
        with pytest.raises(jobd.Timeout) as e:
            client.wait(c.id, timeout=0.5)
        assert e.value.job is not None and e.value.job.state == "WAITING"
        assert {j.id for j in client.list(state="WAITING")} == {c.id, g.id}
        assert {j.id for j in client.list(state=jobd.State.WAITING, kind="py_child")} == {c.id, g.id}

        # The graph around the child: its parent and its child.
        graph = client.graph(c.id)
        assert graph.job.id == c.id and {j.id for j in graph.jobs} == {p.id, c.id, g.id}
        assert sorted((e.parent, e.child) for e in graph.edges) == sorted([(p.id, c.id), (c.id, g.id)])
        assert all(isinstance(e, jobd.JobEdge) for e in graph.edges) and not graph.truncated
        assert graph.parents_of(c.id) == [p.id] and graph.children_of(c.id) == [g.id]
        assert graph.get(g.id).state == "WAITING" and graph.get(p.id).state == "RUNNING"
        # One step down from the parent: the grandchild is left out.
        shallow = client.graph(p.id, depth=1)
        assert [j.id for j in shallow.jobs] == [p.id, c.id] and shallow.truncated
        assert shallow.edges == [jobd.JobEdge(parent=p.id, child=c.id)]

        async def aio_graph():
            async with jobd.aio.Client(d.addr) as ac:
                return await ac.graph(g.id, depth=2)

        up = asyncio.run(aio_graph())
        assert up.job.id == g.id and {j.id for j in up.jobs} == {p.id, c.id, g.id} and len(up.edges) == 2
        with pytest.raises(jobd.NotFound):
            client.graph(str(uuid.uuid4()))

        # The parent finishes: the child runs, with its result; then the grandchild.
        gates["hold"].set()
        assert client.wait(g.id, timeout=BOUND).state == "SUCCEEDED"
        assert client.get(c.id).state == "SUCCEEDED"
        [pr] = seen[c.id]
        assert (pr.id, pr.kind, pr.state, pr.json()) == (p.id, "py_parent", "SUCCEEDED", {"from": p.id})
        [cr] = seen[g.id]
        assert (cr.id, cr.text()) == (c.id, "child")

        # A parent's failure cancels its children (CANCEL), and theirs.
        f = client.submit("py_parent", b"fail")
        x = client.submit("py_child", b"x", depends_on=[f.id])
        y = client.submit("py_child", b"y", depends_on=[x.id])
        gates["fail"].set()
        x_done = client.wait(x.id, timeout=BOUND)
        assert x_done.state == "CANCELLED" and f.id in x_done.last_error, x_done
        assert client.wait(y.id, timeout=BOUND).state == "CANCELLED"
        assert client.get(f.id).state == "FAILED" and x.id not in seen and y.id not in seen

        # Retry the failed step, then what it cancelled: the pipeline is repaired.
        for job in (f, x, y):
            assert client.retry([job.id]).retried == 1
        assert client.wait(y.id, timeout=BOUND).state == "SUCCEEDED"
        assert client.get(x.id).state == "SUCCEEDED" and seen[x.id][0].id == f.id

        # depends_on errors: an unknown parent, a "$N" that is not an earlier entry.
        with pytest.raises(jobd.InvalidArgument):
            client.submit("py_child", depends_on=[str(uuid.uuid4())])
        bad = client.submit_batch([jobd.Submit("py_child", depends_on=["$0"])])
        assert not bad[0].ok and isinstance(bad[0].error, jobd.InvalidArgument)
        with pytest.raises(TypeError):
            client.submit("py_child", depends_on=p.id)  # a str, not a list of them
        with pytest.raises(ValueError):
            client.submit("py_child", depends_on=[p.id], on_dependency_failure="ignore")
