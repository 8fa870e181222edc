"""No daemon needed: value types, error decoding, connection options, and
the worker's handling of stale acks."""
from __future__ import annotations

import dataclasses
import datetime
import logging
import pickle
import time

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import jobd
from jobd._conn import Connection
from jobd.errors import error_from_rpc, error_from_status
from jobd.types import encode_payload
from jobd.v1 import jobd_pb2 as pb


def test_state_is_a_str_enum():
    assert jobd.State.SUCCEEDED == "SUCCEEDED" and f"{jobd.State.FAILED}" == "FAILED" and str(jobd.State.QUEUED) == "QUEUED"
    assert jobd.State.parse("failed") is jobd.State.FAILED and jobd.State.parse("JOB_STATE_RUNNING") is jobd.State.RUNNING
    assert jobd.State.from_proto(pb.JOB_STATE_CANCELLED) is jobd.State.CANCELLED
    assert jobd.State.from_proto(99) is jobd.State.UNSPECIFIED  # a state added later
    assert {s for s in jobd.State if s.terminal} == {"SUCCEEDED", "FAILED", "CANCELLED"}
    with pytest.raises(ValueError):
        jobd.State.parse("DONE")
    # WAITING (parents not finished): known, not terminal, both ways.
    assert jobd.State.from_proto(pb.JOB_STATE_WAITING) is jobd.State.WAITING and not jobd.State.WAITING.terminal
    assert jobd.State.parse("waiting").to_proto() == pb.JOB_STATE_WAITING
    # Every state of the proto has its name here (none is mapped to UNSPECIFIED).
    assert {jobd.State.from_proto(v).to_proto() for v in pb.JobState.values()} == set(pb.JobState.values())


def test_payloads():
    assert encode_payload(b"x") == b"x" and encode_payload(bytearray(b"y")) == b"y"
    assert encode_payload("\u00e9") == "\u00e9".encode() and encode_payload(None) == b""
    assert encode_payload({"a": [1, 2]}) == b'{"a":[1,2]}' and encode_payload([1]) == b"[1]"
    r = jobd.Submit("k", {"n": 1}, key="x", delay=5, labels={"a": "b"}, timeout=1.5).to_proto()
    assert r.payload == b'{"n":1}' and r.idempotency_key == "x" and r.timeout.ToMilliseconds() == 1500
    assert r.HasField("run_at") and r.labels == {"a": "b"}
    with pytest.raises(ValueError):
        jobd.Submit("k", delay=1, run_at=1.0).to_proto()
    with pytest.raises(ValueError):
        jobd.Submit("k", run_at=datetime.datetime(2030, 1, 1)).to_proto()  # naive


def test_job_from_proto():
    j = pb.Job(id="i", kind="k", state=pb.JOB_STATE_SUCCEEDED, attempt=2, result=b'{"ok":true}', labels={"a": "b"})
    j.finished_at.FromSeconds(1_700_000_000)
    job = jobd.Job.from_proto(j)
    assert job.state == "SUCCEEDED" and job.done and job.json() == {"ok": True} and job.labels == {"a": "b"}
    assert job.finished_at == datetime.datetime.fromtimestamp(1_700_000_000, datetime.timezone.utc)
    assert job.started_at is None and job.timeout is None


def test_workflow_values():
    """depends_on / on_dependency_failure on the wire; the Job's parents,
    waiting count and attempt history; the graph; a parent's result."""
    r = jobd.Submit("k", depends_on=["$0", "0190"], on_dependency_failure="run").to_proto()
    assert list(r.depends_on) == ["$0", "0190"] and r.on_dependency_failure == pb.DEPENDENCY_FAILURE_RUN
    r = jobd.Submit("k", depends_on=(j for j in [jobd.Job("a", "k", jobd.State.QUEUED)]), on_dependency_failure="CANCEL")
    assert list(r.to_proto().depends_on) == ["a"] and r.to_proto().on_dependency_failure == pb.DEPENDENCY_FAILURE_CANCEL
    plain = jobd.Submit("k").to_proto()
    assert list(plain.depends_on) == [] and plain.on_dependency_failure == pb.DEPENDENCY_FAILURE_UNSPECIFIED
    with pytest.raises(TypeError):
        jobd.Submit("k", depends_on="a").to_proto()
    with pytest.raises(TypeError):
        jobd.Submit("k", depends_on=[1]).to_proto()
    with pytest.raises(ValueError):
        jobd.Submit("k", on_dependency_failure="skip").to_proto()

    j = pb.Job(
        id="c", kind="k", state=pb.JOB_STATE_WAITING, parent_ids=["a", "b"], waiting_on=1,
        on_dependency_failure=pb.DEPENDENCY_FAILURE_RUN,
        attempts=[pb.JobAttempt(attempt=1, outcome="retried", error="boom", worker="w-1")],
    )
    j.attempts[0].finished_at.FromSeconds(1_700_000_000)
    job = jobd.Job.from_proto(j)
    assert job.state is jobd.State.WAITING and not job.done
    assert (job.parent_ids, job.waiting_on, job.on_dependency_failure) == (["a", "b"], 1, "run")
    [a] = job.attempts
    assert a == jobd.JobAttempt(1, None, datetime.datetime.fromtimestamp(1_700_000_000, datetime.timezone.utc), "retried", "boom", "w-1")
    # Unset: None for a job without parents, the default for one with.
    assert jobd.Job.from_proto(pb.Job(id="x")).on_dependency_failure is None
    assert jobd.Job.from_proto(pb.Job(id="x", parent_ids=["a"])).on_dependency_failure == "cancel"

    g = jobd.JobGraph.from_proto(
        pb.GetJobGraphResponse(
            jobs=[pb.Job(id="b"), pb.Job(id="a"), pb.Job(id="c")],
            edges=[pb.JobEdge(parent="a", child="b"), pb.JobEdge(parent="b", child="c")],
            truncated=True,
        )
    )
    assert g.job.id == "b" and g.truncated and g.edges[0] == jobd.JobEdge("a", "b")
    assert g.parents_of("b") == ["a"] and g.children_of("b") == ["c"] and g.get("c").id == "c" and g.get("z") is None

    ok = jobd.ParentResult.from_proto(pb.ParentResult(id="p", kind="k", state=pb.JOB_STATE_SUCCEEDED, result=b'{"n":1}'))
    assert ok.succeeded and ok.state is jobd.State.SUCCEEDED and ok.json() == {"n": 1} and ok.text() == '{"n":1}'
    failed = jobd.ParentResult.from_proto(pb.ParentResult(id="p", state=pb.JOB_STATE_FAILED))
    assert not failed.succeeded and failed.json() is None and failed.result == b""
    omitted = jobd.ParentResult.from_proto(pb.ParentResult(id="p", state=pb.JOB_STATE_SUCCEEDED, result_omitted=True))
    with pytest.raises(ValueError, match="client.get"):
        omitted.json()


def test_worker_context_parents():
    """Assign.parents reaches the task as ctx.parents, in order; empty
    without parents."""
    from jobd.worker import _Pool, _Session

    w = jobd.Worker("127.0.0.1:1")
    got = {}
    w.register("k", lambda ctx: got.setdefault(ctx.job_id, ctx.parents))
    s = _Session()
    w._pool = _Pool(2)
    try:
        a = pb.Assign(
            job=pb.Job(id="c", kind="k", attempt=1, parent_ids=["p2", "p1"]),
            parents=[
                pb.ParentResult(id="p2", kind="k", state=pb.JOB_STATE_FAILED),
                pb.ParentResult(id="p1", kind="k", state=pb.JOB_STATE_SUCCEEDED, result=b"[1]"),
            ],
        )
        w._assign(s, a)
        w._assign(s, pb.Assign(job=pb.Job(id="lone", kind="k", attempt=1)))
        deadline = time.monotonic() + 10
        while len(got) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        w._pool.shutdown()
    assert [(p.id, p.state, p.json()) for p in got["c"]] == [("p2", "FAILED", None), ("p1", "SUCCEEDED", [1])]
    assert got["lone"] == []


def _any(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def test_error_details_decoded():
    br = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="kind", description="unknown kind")]
    )
    e = error_from_status(status_pb2.Status(code=3, message="invalid request", details=[_any(br)]))
    assert type(e) is jobd.InvalidArgument and e.field == "kind" and e.violations == [("kind", "unknown kind")]
    ri = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    e = error_from_status(status_pb2.Status(code=8, message="full", details=[_any(ri)]))
    assert type(e) is jobd.ResourceExhausted and e.retry_after == 1.5
    info = error_details_pb2.ErrorInfo(reason="IDEMPOTENCY_KEY_REUSED", domain="jobd", metadata={"job_id": "J"})
    e = error_from_status(status_pb2.Status(code=6, message="used", details=[_any(info)]))
    assert type(e) is jobd.AlreadyExists and e.existing_id == "J"
    assert pickle.loads(pickle.dumps(e)).existing_id == "J"
    codes = {
        5: jobd.NotFound, 9: jobd.FailedPrecondition, 14: jobd.Unavailable, 16: jobd.Unauthenticated,
        7: jobd.PermissionDenied, 11: jobd.OutOfRange, 4: jobd.DeadlineExceeded, 13: jobd.Internal,
    }
    for code, cls in codes.items():
        e = error_from_status(status_pb2.Status(code=code, message="m"))
        assert type(e) is cls and isinstance(e, jobd.JobdError) and str(e).endswith(": m")
    assert issubclass(jobd.Timeout, TimeoutError) and issubclass(jobd.Timeout, jobd.JobdError)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers):
        self._c, self._d, self._t = code, details, trailers

    def code(self):
        return self._c

    def details(self):
        return self._d

    def trailing_metadata(self):
        return self._t


def test_error_from_rpc_reads_the_status_trailer():
    ri = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
    st = status_pb2.Status(code=8, message="backlog is full", details=[_any(ri)])
    e = error_from_rpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "backlog is full",
                                    (("grpc-status-details-bin", st.SerializeToString()),)))
    assert isinstance(e, jobd.ResourceExhausted) and e.retry_after == 1.0 and e.message == "backlog is full"
    e = error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", None))
    assert isinstance(e, jobd.Unavailable) and e.details == []


def test_connection_options(monkeypatch, tmp_path):
    for k in ("JOBD_ADDR", "JOBD_TOKEN", "JOBD_CA", "JOBD_CERT", "JOBD_CERT_KEY"):
        monkeypatch.delenv(k, raising=False)
    c = Connection()
    assert c.target == "127.0.0.1:50051" and c.tls is None and c.metadata == ()
    monkeypatch.setenv("JOBD_ADDR", "http://jobd:1234/")
    monkeypatch.setenv("JOBD_TOKEN", "t0k")
    c = Connection()
    assert c.target == "jobd:1234" and c.tls is None and c.metadata == (("authorization", "Bearer t0k"),)
    assert Connection("https://h:1").tls == jobd.TLS()
    assert Connection("h:1", token="other").metadata == (("authorization", "Bearer other"),)
    monkeypatch.setenv("JOBD_CA", str(tmp_path / "ca.pem"))
    assert Connection("h:1").tls == jobd.TLS(str(tmp_path / "ca.pem"))
    assert Connection("h:1", tls=False).tls is None
    assert Connection("h:1", tls=("a", "b", "c"), server_name="n").tls == jobd.TLS("a", "b", "c", "n")
    with pytest.raises(TypeError):
        Connection("h:1", tls="ca.pem")  # type: ignore[arg-type]


def test_worker_logs_stale_acks_at_debug(caplog):
    """A ReportAck{stale} (the attempt was given up as the report crossed
    it) is counted and logged at debug level, nothing else."""
    from jobd.worker import _Session

    w = jobd.Worker("127.0.0.1:1")
    w.register("k", lambda ctx, payload: payload)
    s = _Session()
    acks = [
        pb.ServerMessage(ack=pb.ReportAck(job_id="j1", attempt=1, stale=True)),
        pb.ServerMessage(ack=pb.ReportAck(job_id="j2", attempt=1, stale=False)),
    ]
    caplog.set_level(logging.DEBUG, logger="jobd.worker")
    w._read(s, iter(acks))
    assert w.stats["stale"] == 1
    stale = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(stale) == 1 and stale[0].levelno == logging.DEBUG and "j1" in stale[0].getMessage()


def test_worker_task_signatures():
    w = jobd.Worker("127.0.0.1:1")

    @w.task("a")
    def a(ctx):
        return None

    @w.task("b", json=True)
    async def b(ctx, payload):
        return payload

    assert not w.tasks["a"].with_payload and not w.tasks["a"].is_async
    assert w.tasks["b"].with_payload and w.tasks["b"].is_async and w.tasks["b"].json
    with pytest.raises(ValueError):
        w.register("a", a)
    with pytest.raises(ValueError):
        jobd.Worker("127.0.0.1:1", max_in_flight=0)


def _ctx(sent):
    from jobd.worker import Context

    return Context("j", "k", 2, 3, b"", None, {}, sent.append)


def test_context_progress_checks_and_paces(monkeypatch):
    monkeypatch.setattr("jobd.worker.SEND_EVERY", 0.5)  # slow enough for a loaded machine
    sent = []
    ctx = _ctx(sent)
    for bad in (-1, 101, 100.5, float("nan")):
        with pytest.raises(ValueError, match="0 to 100"):
            ctx.progress(bad)
    with pytest.raises(TypeError):
        ctx.progress("50")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 256"):
        ctx.progress(1, "\u00e9" * 129)  # 258 bytes
    with pytest.raises(ValueError, match="at most 4096"):
        ctx.progress(1, details=b"x" * 4097)
    with pytest.raises(ValueError, match="UTF-8"):
        ctx.progress(1, "\ud800")
    assert sent == []

    ctx.progress(0, "start", {"a": 1})
    assert len(sent) == 1  # the first goes at once
    p = sent[0].progress
    assert (p.job_id, p.attempt, p.percent, p.message, p.details) == ("j", 2, 0, "start", b'{"a":1}')
    for i in range(1, 51):  # a burst: the latest wins, after SEND_EVERY
        ctx.progress(i * 1.5)
    assert len(sent) == 1
    deadline = time.monotonic() + 5
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [m.progress.percent for m in sent] == [0, 75]
    ctx.progress(80, details="s")
    ctx.progress(90)
    ctx._out.end(send=True)  # the report is next: what waits goes first
    assert [m.progress.percent for m in sent] in ([0, 75, 90], [0, 75, 80, 90])  # 80 replaced unless it was due
    n = len(sent)
    ctx.progress(100)
    ctx.log("late")
    time.sleep(0.6)
    assert len(sent) == n, "a no-op once the attempt ended"


def test_context_log_splits_and_batches(monkeypatch):
    monkeypatch.setattr("jobd.worker.SEND_EVERY", 5.0)
    sent = []
    ctx = _ctx(sent)
    with pytest.raises(TypeError):
        ctx.log(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log line 1 is 4097 bytes"):
        ctx.log("ok", "x" * 4097)
    ctx.log("a\nb\r\n", "c")
    assert [list(m.log.lines) for m in sent] == [["a", "b", "c"]] and sent[0].log.attempt == 2
    ctx.log("d")
    ctx.log("", "e\n\nf")
    assert len(sent) == 1  # held back: the last went less than SEND_EVERY ago
    ctx.log(*[str(i) for i in range(2500)])  # full messages go at once
    assert [len(m.log.lines) for m in sent] == [3, 1000, 1000]
    assert list(sent[1].log.lines[:5]) == ["d", "", "e", "", "f"]
    ctx._out.end(send=True)
    assert [len(m.log.lines) for m in sent] == [3, 1000, 1000, 505]
    assert sent[-1].log.lines[-1] == "2499"
    lines = [x for m in sent for x in m.log.lines]
    assert lines == ["a", "b", "c", "d", "", "e", "", "f"] + [str(i) for i in range(2500)]
    dropped = []
    ctx2 = _ctx(dropped)
    ctx2.log("1")
    ctx2.log("2")
    ctx2._out.end(send=False)  # cancelled: what waits is dropped
    time.sleep(0.2)
    assert [list(m.log.lines) for m in dropped] == [["1"]]


def test_job_progress_and_log_line_from_proto():
    j = pb.Job(id="i", kind="k", state=pb.JOB_STATE_RUNNING)
    assert jobd.Job.from_proto(j).progress is None
    j.progress.percent = 40
    j.progress.message = "m"
    j.progress.details = b'{"x":1}'
    j.progress.updated_at.FromSeconds(1_700_000_000)
    p = jobd.Job.from_proto(j).progress
    assert p == jobd.Progress(40, "m", b'{"x":1}', datetime.datetime.fromtimestamp(1_700_000_000, datetime.timezone.utc))
    assert p.json() == {"x": 1} and jobd.Progress(1).json() is None
    line = pb.LogLine(seq=7, attempt=2, text="t")
    assert jobd.LogLine.from_proto(line) == jobd.LogLine(7, 2, None, "t")


def test_context_touch_checkpoint_and_acks():
    """touch(extend_by=None, checkpoint=None): the message sent, the 64 KiB
    bound checked before sending, and the future resolved by jobd's answers
    in order (None when stale, when the attempt ends, or after it ended)."""
    from jobd.worker import MAX_CHECKPOINT_BYTES, Context

    sent = []
    ctx = Context("j", "k", 2, 3, b"", None, {}, sent.append, b"saved")
    assert ctx.checkpoint == b"saved" and _ctx([]).checkpoint is None
    assert Context("j", "k", 1, 3, b"", None, {}, sent.append, b"").checkpoint is None

    f1 = ctx.touch(1.5)  # positional extend_by, as before
    t = sent[-1].touch
    assert (t.job_id, t.attempt, t.extend_by.ToMilliseconds()) == ("j", 2, 1500) and not t.HasField("checkpoint")
    f2 = ctx.touch(checkpoint="\u00e9")
    t = sent[-1].touch
    assert not t.HasField("extend_by") and t.HasField("checkpoint") and t.checkpoint == "\u00e9".encode()
    f3 = ctx.touch(2, checkpoint=bytearray(b"b"))
    assert sent[-1].touch.checkpoint == b"b" and sent[-1].touch.extend_by.seconds == 2
    f4 = ctx.touch(checkpoint=b"x" * MAX_CHECKPOINT_BYTES)  # exactly 64 KiB is fine
    assert len(sent[-1].touch.checkpoint) == 64 * 1024
    f5 = ctx.touch(checkpoint=b"")  # an empty checkpoint is still sent
    assert sent[-1].touch.HasField("checkpoint")
    n = len(sent)
    with pytest.raises(ValueError, match="65537 bytes: at most 65536"):
        ctx.touch(5, checkpoint=b"x" * (MAX_CHECKPOINT_BYTES + 1))
    with pytest.raises(ValueError, match="at most 65536"):
        ctx.touch(checkpoint="\u00e9" * (MAX_CHECKPOINT_BYTES // 2 + 1))  # 2 bytes each in UTF-8
    with pytest.raises(ValueError, match="UTF-8"):
        ctx.touch(checkpoint="\ud800")
    with pytest.raises(TypeError):
        ctx.touch(checkpoint={"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ctx.touch(-1)
    assert len(sent) == n, "nothing of a refused touch is sent"

    assert not f1.done()
    at = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    ctx._out.touched(at)  # the answers come in order
    ctx._out.touched(None)  # stale: not kept
    assert f1.result(0) == at and f2.result(0) is None and not f3.done()
    ctx._out.end(send=True)  # the attempt ended: what still waits is not known to be kept
    assert f3.result(0) is None and f4.result(0) is None and f5.result(0) is None
    late = ctx.touch(checkpoint=b"late")
    assert late.result(0) is None and len(sent) == n, "a no-op once the attempt ended"


def test_worker_touch_acks_resolve_the_attempts_touches():
    """The session reader hands each TouchAck to its attempt: the deadline
    (kept in ctx.deadline) or None for a stale one; an ack for an attempt
    no longer held changes nothing."""
    from jobd.worker import _Attempt, _Session

    w = jobd.Worker("127.0.0.1:1")
    w.register("k", lambda ctx, payload: payload)
    s = _Session()
    ctx = _ctx([])
    s.held[("j", 2)] = _Attempt(("j", 2), ctx, w.tasks["k"])
    futures = [ctx.touch(1), ctx.touch(checkpoint=b"c"), ctx.touch(checkpoint=b"d")]
    ok = pb.TouchAck(job_id="j", attempt=2)
    ok.deadline.FromSeconds(1_900_000_000)
    w._read(
        s,
        iter(
            [
                pb.ServerMessage(touch_ack=ok),
                pb.ServerMessage(touch_ack=pb.TouchAck(job_id="j", attempt=2, stale=True)),
                pb.ServerMessage(touch_ack=pb.TouchAck(job_id="other", attempt=1, stale=True)),
            ]
        ),
    )
    when = datetime.datetime.fromtimestamp(1_900_000_000, datetime.timezone.utc)
    assert futures[0].result(0) == when and ctx.deadline == when
    assert futures[1].result(0) is None and not futures[2].done()


def test_job_checkpoint_size_from_proto():
    assert jobd.Job.from_proto(pb.Job(id="i", kind="k", checkpoint_size=65536)).checkpoint_size == 65536
    assert jobd.Job.from_proto(pb.Job(id="i", kind="k")).checkpoint_size == 0


def test_dedup_and_start_deadline_values():
    """Dedup and the start deadline on the wire; Job's fields back."""
    r = jobd.Submit("k", dedup=jobd.Dedup("a", "Debounce", window=1.5, max_wait=60), start_within=30).to_proto()
    assert r.dedup.key == "a" and r.dedup.mode == pb.DEDUP_MODE_DEBOUNCE
    assert r.dedup.window.ToMilliseconds() == 1500 and r.dedup.max_wait.ToSeconds() == 60
    assert abs(r.start_before.ToMilliseconds() / 1000 - (time.time() + 30)) < 5
    keep = jobd.Submit("k", dedup=jobd.Dedup("b")).to_proto()
    assert keep.dedup.mode == pb.DEDUP_MODE_KEEP and not keep.dedup.HasField("window")
    assert not keep.HasField("start_before") and not jobd.Submit("k").to_proto().HasField("dedup")
    at = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    assert jobd.Submit("k", start_before=at).to_proto().start_before.ToSeconds() == int(at.timestamp())
    assert jobd.Submit("k", start_before=1_900_000_000.5).to_proto().start_before.ToMilliseconds() == 1_900_000_000_500
    with pytest.raises(ValueError, match="start_before must be timezone-aware"):
        jobd.Submit("k", start_before=datetime.datetime(2030, 1, 1)).to_proto()
    with pytest.raises(ValueError, match="not both"):
        jobd.Submit("k", start_within=1, start_before=at).to_proto()
    with pytest.raises(ValueError, match="Dedup.mode"):
        jobd.Dedup("k", "discard")
    with pytest.raises(TypeError):
        jobd.Dedup(b"k")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        jobd.Submit("k", dedup=("k", "keep")).to_proto()  # type: ignore[arg-type]
    d = jobd.Dedup("k")
    with pytest.raises(AttributeError):
        d.key = "other"  # type: ignore[misc]  # frozen

    j = pb.Job(id="i", kind="k", dedup_key="dk")
    j.start_before.FromSeconds(1_700_000_000)
    job = jobd.Job.from_proto(j, True, pb.DEDUP_OUTCOME_KEPT)
    assert job.dedup_key == "dk" and job.dedup_outcome == "kept" and job.deduplicated
    assert job.start_before == datetime.datetime.fromtimestamp(1_700_000_000, datetime.timezone.utc)
    plain = jobd.Job.from_proto(pb.Job(id="i", kind="k"))
    assert plain.start_before is None and plain.dedup_key == "" and plain.dedup_outcome is None
    outcomes = {v: jobd.Job.from_proto(pb.Job(), False, v).dedup_outcome for v in pb.DedupOutcome.values()}
    assert outcomes == {
        pb.DEDUP_OUTCOME_UNSPECIFIED: None,
        pb.DEDUP_OUTCOME_CREATED: "created",
        pb.DEDUP_OUTCOME_KEPT: "kept",
        pb.DEDUP_OUTCOME_REPLACED: "replaced",
        pb.DEDUP_OUTCOME_DEBOUNCED: "debounced",
    }
    ok = pb.SubmitResult(accepted=pb.SubmitResponse(job=pb.Job(id="i"), dedup_outcome=pb.DEDUP_OUTCOME_REPLACED))
    assert jobd.SubmitResult.from_proto(ok).dedup_outcome == "replaced"


def test_fairness_key_values():
    """fairness_key on the wire, last in Submit (positional use unchanged); Job's back."""
    assert jobd.Submit("k", fairness_key="t-1").to_proto().fairness_key == "t-1"
    assert jobd.Submit("k").to_proto().fairness_key == ""
    positional = jobd.Submit("k", b"", None, 0, None, None, None, "ord", 0, None, None, None, None, None, None, "fair")
    r = positional.to_proto()
    assert r.ordering_key == "ord" and r.fairness_key == "fair"
    assert jobd.Job.from_proto(pb.Job(id="i", kind="k", fairness_key="t-2")).fairness_key == "t-2"
    assert jobd.Job.from_proto(pb.Job(id="i", kind="k")).fairness_key == ""
    assert [f.name for f in dataclasses.fields(jobd.Job)][-1] == "fairness_key"
    assert [f.name for f in dataclasses.fields(jobd.Submit)][-1] == "fairness_key"
