"""Plain Python values for what jobd sends and takes: jobs are dataclasses,
not protobuf messages, and states are a `str` enum."""
from __future__ import annotations

import datetime as _dt
import enum
import json as _json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union, cast

from google.protobuf import duration_pb2, timestamp_pb2

from .errors import JobdError, error_from_status
from .v1 import jobd_pb2 as pb

__all__ = [
    "State",
    "Job",
    "JobAttempt",
    "JobGraph",
    "JobEdge",
    "ParentResult",
    "JobEvent",
    "JobChange",
    "Submit",
    "SubmitResult",
    "Dedup",
    "RetryResult",
    "KindStatus",
    "WorkerSession",
    "Progress",
    "LogLine",
    "Payload",
    "encode_payload",
]

#: What a payload or a result may be: bytes as they are, str as UTF-8,
#: anything else (dict, list, numbers, ...) as JSON.
Payload = Union[bytes, bytearray, memoryview, str, Dict[str, Any], List[Any], int, float, bool, None]


class State(str, enum.Enum):
    """A job's state; compares equal to its name: `job.state == "SUCCEEDED"`."""

    UNSPECIFIED = "UNSPECIFIED"
    #: Some of its parents (`depends_on`) have not finished: not claimed
    #: until they have. Not terminal.
    WAITING = "WAITING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def terminal(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: nothing more will happen."""
        return self in _TERMINAL

    @classmethod
    def from_proto(cls, value: int) -> "State":
        """The state of a wire value; UNSPECIFIED for one this SDK does not
        know (a state added to jobd later)."""
        name = pb.JobState.Name(value) if value in pb.JobState.values() else "JOB_STATE_UNSPECIFIED"
        try:
            return cls(name[len("JOB_STATE_"):])
        except ValueError:
            return cls.UNSPECIFIED

    @classmethod
    def parse(cls, value: Union["State", str, None]) -> "State":
        """A state from its name, any case ("failed", "FAILED", State.FAILED)."""
        if value is None:
            return cls.UNSPECIFIED
        if isinstance(value, State):
            return value
        v = str(value).upper()
        if v.startswith("JOB_STATE_"):
            v = v[len("JOB_STATE_"):]
        try:
            return cls(v)
        except ValueError:
            raise ValueError(f"unknown job state {value!r}; one of {', '.join(s.value for s in cls)}") from None

    def to_proto(self) -> "pb.JobState":
        return cast("pb.JobState", pb.JobState.Value("JOB_STATE_" + self.value))


_TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})


def _dependency_failure_to_proto(value: Optional[str]) -> "pb.DependencyFailure":
    if value is None:
        return pb.DEPENDENCY_FAILURE_UNSPECIFIED
    if not isinstance(value, str):
        raise TypeError(f"on_dependency_failure must be 'cancel' or 'run', not {type(value).__name__}")
    v = value.lower()
    if v == "cancel":
        return pb.DEPENDENCY_FAILURE_CANCEL
    if v == "run":
        return pb.DEPENDENCY_FAILURE_RUN
    raise ValueError(f"on_dependency_failure must be 'cancel' or 'run', not {value!r}")


def _dependency_failure_from_proto(value: int, has_parents: bool) -> Optional[str]:
    if value == pb.DEPENDENCY_FAILURE_RUN:
        return "run"
    if value == pb.DEPENDENCY_FAILURE_CANCEL or has_parents:
        return "cancel"  # UNSPECIFIED with parents: the default
    return None


#: `Dedup.mode` values, as sent.
_DEDUP_MODES: Dict[str, "pb.DedupMode"] = {
    "keep": pb.DEDUP_MODE_KEEP,
    "replace": pb.DEDUP_MODE_REPLACE,
    "debounce": pb.DEDUP_MODE_DEBOUNCE,
}

#: `SubmitResponse.dedup_outcome` values, as `Job.dedup_outcome` tells them.
_DEDUP_OUTCOMES: Dict[int, str] = {
    pb.DEDUP_OUTCOME_CREATED: "created",
    pb.DEDUP_OUTCOME_KEPT: "kept",
    pb.DEDUP_OUTCOME_REPLACED: "replaced",
    pb.DEDUP_OUTCOME_DEBOUNCED: "debounced",
}


def _dedup_outcome(value: int) -> Optional[str]:
    """"created", "kept", "replaced" or "debounced"; None for a submit
    without dedup (or an outcome this SDK does not know)."""
    return _DEDUP_OUTCOMES.get(value)


@dataclass(frozen=True)
class Dedup:
    """A submit's deduplication over the kind's jobs that have not started
    (QUEUED, delayed or WAITING): the job that holds `key` takes the submit.

    `mode`: "keep" (the default: that job is returned as it is,
    `deduplicated` True), "replace" (it takes the new payload, labels and
    run_at: same id, watchers see a change) or "debounce" ("replace", and it
    runs `window` seconds after the last submit, never later than `max_wait`
    seconds after the first). No job holding the key: a new one (which
    "debounce" delays by `window` too). `window` is required with
    "debounce" and refused with the other modes, as is `max_wait`; jobd
    checks the bounds (key 1..=256 bytes; durations more than 0, at most a
    year) and names the field of a bad one (InvalidArgument "dedup.key")."""

    key: str
    mode: str = "keep"
    #: Seconds; "debounce" only (required there).
    window: Optional[float] = None
    #: Seconds; "debounce" only (optional).
    max_wait: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise TypeError(f"Dedup.key must be a str, not {type(self.key).__name__}")
        if not isinstance(self.mode, str) or self.mode.lower() not in _DEDUP_MODES:
            raise ValueError(f"Dedup.mode must be 'keep', 'replace' or 'debounce', not {self.mode!r}")

    def to_proto(self) -> pb.Dedup:
        d = pb.Dedup(key=self.key, mode=_DEDUP_MODES[self.mode.lower()])
        if self.window is not None:
            d.window.CopyFrom(_duration(self.window))
        if self.max_wait is not None:
            d.max_wait.CopyFrom(_duration(self.max_wait))
        return d


def _depends_on(value: Any) -> List[str]:
    """`depends_on` as the ids sent: each a job id, "$N" (an earlier entry
    of the same batch), or a Job (its id)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"depends_on must be a list of job ids (or \"$N\" batch references), not {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, Job):
            out.append(v.id)
        elif isinstance(v, str):
            out.append(v)
        else:
            raise TypeError(f"depends_on entries must be job ids (str) or Jobs, not {type(v).__name__}")
    return out


def _time(ts: timestamp_pb2.Timestamp, msg: Any, name: str) -> Optional[_dt.datetime]:
    if not msg.HasField(name):
        return None
    return _dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=_dt.timezone.utc)


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _timestamp(when: Union[_dt.datetime, float], what: str = "run_at") -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            raise ValueError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc))")
        when = when.timestamp()
    t.FromNanoseconds(int(round(when * 1e9)))
    return t


def encode_payload(payload: Payload) -> bytes:
    """bytes as they are, str as UTF-8, None as empty, the rest as JSON."""
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return _json.dumps(payload, separators=(",", ":")).encode("utf-8")


@dataclass
class Progress:
    """How far a running job got, as its worker last said (`ctx.progress`).
    jobd keeps at most one value per job every 200 ms; it stays after the
    job ends."""

    #: 0 to 100.
    percent: int
    message: str = ""
    #: Opaque bytes, JSON by convention (`.json()`).
    details: bytes = b""
    updated_at: Optional[_dt.datetime] = None

    def json(self) -> Any:
        """The details decoded as JSON (None when there are none)."""
        return _json.loads(self.details) if self.details else None

    @classmethod
    def from_proto(cls, p: pb.JobProgress) -> "Progress":
        return cls(
            percent=p.percent,
            message=p.message,
            details=bytes(p.details),
            updated_at=_time(p.updated_at, p, "updated_at"),
        )


@dataclass
class LogLine:
    """One line a job's attempt wrote (`ctx.log`), from `Client.logs`."""

    #: Increases per job (with gaps where old lines were pruned); pass the
    #: last one seen as `after` to resume.
    seq: int
    #: The attempt that wrote it (1 for the first).
    attempt: int
    #: When jobd received it.
    time: Optional[_dt.datetime]
    text: str

    @classmethod
    def from_proto(cls, line: pb.LogLine) -> "LogLine":
        return cls(seq=line.seq, attempt=line.attempt, time=_time(line.time, line, "time"), text=line.text)


@dataclass
class JobAttempt:
    """One ended attempt of a job (`Job.attempts`, the last 25, oldest first)."""

    attempt: int
    started_at: Optional[_dt.datetime]
    finished_at: Optional[_dt.datetime]
    #: "succeeded", "failed" (no retry), "retried", "lost" (lease or
    #: daemon), "cancelled" or "requeued" (drain; the attempt did not count).
    outcome: str
    #: The attempt's error (at most 1 KiB kept), or "".
    error: str = ""
    #: Where it ran: a remote worker's worker_id, "local" for the daemon's
    #: own handlers, "" when unknown (a lost attempt).
    worker: str = ""

    @classmethod
    def from_proto(cls, a: pb.JobAttempt) -> "JobAttempt":
        return cls(
            attempt=a.attempt,
            started_at=_time(a.started_at, a, "started_at"),
            finished_at=_time(a.finished_at, a, "finished_at"),
            outcome=a.outcome,
            error=a.error,
            worker=a.worker,
        )


@dataclass
class ParentResult:
    """One parent's outcome, as a child's attempt receives it (`ctx.parents`)."""

    id: str
    kind: str
    #: Terminal: SUCCEEDED, or FAILED / CANCELLED for a child submitted with
    #: `on_dependency_failure="run"`.
    state: State
    #: The parent's result (empty unless SUCCEEDED, or when omitted).
    result: bytes = b""
    #: The result was not inlined: a child's attempt receives at most 1 MiB
    #: of its parents' results in all. Read it with `client.get(id)`.
    result_omitted: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state is State.SUCCEEDED

    def json(self) -> Any:
        """The result decoded as JSON; None when it is empty (a parent that
        did not succeed, or returned nothing). ValueError when the result
        was omitted (read it with `client.get(id)`)."""
        self._check_inlined()
        return _json.loads(self.result) if self.result else None

    def text(self) -> str:
        """The result decoded as UTF-8."""
        self._check_inlined()
        return self.result.decode("utf-8")

    def _check_inlined(self) -> None:
        if self.result_omitted:
            raise ValueError(
                f"the result of parent {self.id} was not inlined (over the 1 MiB of parents' results an "
                "attempt receives): read it with client.get(id)"
            )

    @classmethod
    def from_proto(cls, p: pb.ParentResult) -> "ParentResult":
        return cls(
            id=p.id,
            kind=p.kind,
            state=State.from_proto(p.state),
            result=bytes(p.result),
            result_omitted=p.result_omitted,
        )


@dataclass
class Job:
    """A snapshot of one job."""

    id: str
    kind: str
    state: State
    attempt: int = 0
    max_attempts: int = 0
    priority: int = 0
    idempotency_key: str = ""
    labels: Dict[str, str] = field(default_factory=dict)
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    finished_at: Optional[_dt.datetime] = None
    next_attempt_at: Optional[_dt.datetime] = None
    last_error: str = ""
    #: Output of the successful attempt (bytes; `.json()` / `.text()` decode it).
    result: bytes = b""
    payload_size: int = 0
    #: Per-attempt timeout in effect, in seconds.
    timeout: Optional[float] = None
    result_truncated: bool = False
    ordering_key: str = ""
    traceparent: str = ""
    #: How far the job got, as its worker last said; None until it says.
    progress: Optional[Progress] = None
    #: Set by `submit`: an earlier job with the same idempotency key and the
    #: same request was returned instead of a new one.
    deduplicated: bool = False
    #: Size in bytes of the checkpoint an attempt saved (`ctx.touch(checkpoint=...)`),
    #: handed to the next attempt as `ctx.checkpoint`; 0 for none.
    checkpoint_size: int = 0
    #: The jobs this one depends on (`depends_on`), in that order.
    parent_ids: List[str] = field(default_factory=list)
    #: How many of them have not finished yet (WAITING while above 0).
    waiting_on: int = 0
    #: "cancel" or "run" for a job with parents (`on_dependency_failure`);
    #: None for a job without.
    on_dependency_failure: Optional[str] = None
    #: The job's last 25 ended attempts, oldest first: where each ran and
    #: how it ended (the error of an attempt that was retried stays here).
    attempts: List[JobAttempt] = field(default_factory=list)
    #: Its start deadline (`start_before`, `start_within`, or the kind's
    #: `start_within`): not started by then, it ends FAILED ("expired: ...").
    #: None for none.
    start_before: Optional[_dt.datetime] = None
    #: Its `Dedup.key`, or "". Held while the job has not started.
    dedup_key: str = ""
    #: Set by `submit` with `dedup`: what it did, "created" (a new job),
    #: "kept" (the job holding the key, unchanged; `deduplicated` is True
    #: too), "replaced" or "debounced" (that job, updated). None otherwise.
    dedup_outcome: Optional[str] = None
    #: The key a `fairness = "round_robin"` kind's claims rotate over: the
    #: submit's `fairness_key`, else its `ordering_key`, else "".
    fairness_key: str = ""

    @property
    def done(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return self.state.terminal

    @property
    def succeeded(self) -> bool:
        return self.state is State.SUCCEEDED

    def json(self) -> Any:
        """The result decoded as JSON."""
        return _json.loads(self.result)

    def text(self) -> str:
        """The result decoded as UTF-8."""
        return self.result.decode("utf-8")

    @classmethod
    def from_proto(
        cls, j: pb.Job, deduplicated: bool = False, dedup_outcome: "pb.DedupOutcome" = pb.DEDUP_OUTCOME_UNSPECIFIED
    ) -> "Job":
        return cls(
            id=j.id,
            kind=j.kind,
            state=State.from_proto(j.state),
            attempt=j.attempt,
            max_attempts=j.max_attempts,
            priority=j.priority,
            idempotency_key=j.idempotency_key,
            labels=dict(j.labels),
            created_at=_time(j.created_at, j, "created_at"),
            updated_at=_time(j.updated_at, j, "updated_at"),
            started_at=_time(j.started_at, j, "started_at"),
            finished_at=_time(j.finished_at, j, "finished_at"),
            next_attempt_at=_time(j.next_attempt_at, j, "next_attempt_at"),
            last_error=j.last_error,
            result=bytes(j.result),
            payload_size=j.payload_size,
            timeout=_seconds(j.timeout) if j.HasField("timeout") else None,
            result_truncated=j.result_truncated,
            ordering_key=j.ordering_key,
            traceparent=j.traceparent,
            progress=Progress.from_proto(j.progress) if j.HasField("progress") else None,
            deduplicated=deduplicated,
            checkpoint_size=j.checkpoint_size,
            parent_ids=list(j.parent_ids),
            waiting_on=j.waiting_on,
            on_dependency_failure=_dependency_failure_from_proto(j.on_dependency_failure, len(j.parent_ids) > 0),
            attempts=[JobAttempt.from_proto(a) for a in j.attempts],
            start_before=_time(j.start_before, j, "start_before"),
            dedup_key=j.dedup_key,
            dedup_outcome=_dedup_outcome(dedup_outcome),
            fairness_key=j.fairness_key,
        )


@dataclass(frozen=True)
class JobEdge:
    """`child` depends on `parent`."""

    parent: str
    child: str


@dataclass
class JobGraph:
    """A job's neighbourhood in the dependency graph (`Client.graph`): its
    ancestors and descendants up to the depth asked, at most 1,000 jobs."""

    #: The job asked for first, then the others in the order found.
    jobs: List[Job]
    #: Every edge between the jobs here, sorted.
    edges: List[JobEdge]
    #: The bound (depth, or 1,000 jobs) left some jobs out.
    truncated: bool = False

    @property
    def job(self) -> Job:
        """The job asked for."""
        return self.jobs[0]

    def get(self, id: str) -> Optional[Job]:
        """The job with this id, if it is in the graph."""
        return next((j for j in self.jobs if j.id == id), None)

    def parents_of(self, id: str) -> List[str]:
        """Ids of the parents of `id` that are in the graph."""
        return [e.parent for e in self.edges if e.child == id]

    def children_of(self, id: str) -> List[str]:
        """Ids of the children of `id` that are in the graph."""
        return [e.child for e in self.edges if e.parent == id]

    @classmethod
    def from_proto(cls, r: pb.GetJobGraphResponse) -> "JobGraph":
        return cls(
            jobs=[Job.from_proto(j) for j in r.jobs],
            edges=[JobEdge(e.parent, e.child) for e in r.edges],
            truncated=r.truncated,
        )


@dataclass
class JobEvent:
    """One message of `Client.watch`: the job after a change."""

    job: Job
    #: Increases with every change of this job; pass the last one seen as
    #: `after_sequence` to resume a watch.
    sequence: int


@dataclass
class JobChange:
    """One message of `Client.watch_jobs`: a job after a change."""

    job: Job
    #: Increases with every change the daemon publishes; pass the last one
    #: seen as `after` to resume.
    position: int


@dataclass
class Submit:
    """One entry of `Client.submit_batch`: the same arguments as `submit`.
    `depends_on` may name an earlier entry of the same batch as "$N" (its
    0-based index, below this entry's own). A later entry's `dedup` merges
    into an earlier entry holding the same key."""

    kind: str
    payload: Payload = b""
    key: Optional[str] = None
    priority: int = 0
    delay: Optional[float] = None
    run_at: Optional[Union[_dt.datetime, float]] = None
    labels: Optional[Mapping[str, str]] = None
    ordering_key: Optional[str] = None
    max_attempts: int = 0
    timeout: Optional[float] = None
    depends_on: Optional[Iterable[Union[str, "Job"]]] = None
    on_dependency_failure: Optional[str] = None
    #: Seconds from now: the start deadline (`start_before` = now + this).
    start_within: Optional[float] = None
    #: The start deadline: an aware datetime or a Unix time.
    start_before: Optional[Union[_dt.datetime, float]] = None
    dedup: Optional[Dedup] = None
    #: The key a `fairness = "round_robin"` kind's claims rotate over
    #: (default: `ordering_key`).
    fairness_key: Optional[str] = None

    def to_proto(self) -> pb.SubmitRequest:
        r = pb.SubmitRequest(
            kind=self.kind,
            payload=encode_payload(self.payload),
            idempotency_key=self.key or "",
            priority=self.priority,
            max_attempts=self.max_attempts,
            ordering_key=self.ordering_key or "",
            depends_on=_depends_on(self.depends_on),
            on_dependency_failure=_dependency_failure_to_proto(self.on_dependency_failure),
            fairness_key=self.fairness_key or "",
        )
        if self.labels:
            r.labels.update(self.labels)
        if self.timeout is not None:
            r.timeout.CopyFrom(_duration(self.timeout))
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give delay or run_at, not both")
        if self.delay is not None:
            r.run_at.CopyFrom(_timestamp(time.time() + self.delay))
        elif self.run_at is not None:
            r.run_at.CopyFrom(_timestamp(self.run_at))
        if self.start_within is not None and self.start_before is not None:
            raise ValueError("give start_within or start_before, not both")
        if self.start_within is not None:
            r.start_before.CopyFrom(_timestamp(time.time() + self.start_within))
        elif self.start_before is not None:
            r.start_before.CopyFrom(_timestamp(self.start_before, "start_before"))
        if self.dedup is not None:
            if not isinstance(self.dedup, Dedup):
                raise TypeError(f"dedup must be a jobd.Dedup, not {type(self.dedup).__name__}")
            r.dedup.CopyFrom(self.dedup.to_proto())
        return r


@dataclass
class SubmitResult:
    """The answer to one `submit_batch` entry: `.job` or `.error`."""

    job: Optional[Job] = None
    error: Optional[JobdError] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def deduplicated(self) -> bool:
        return self.job is not None and self.job.deduplicated

    @property
    def dedup_outcome(self) -> Optional[str]:
        """The entry's `Job.dedup_outcome` (None for a refused entry)."""
        return None if self.job is None else self.job.dedup_outcome

    @classmethod
    def from_proto(cls, r: pb.SubmitResult) -> "SubmitResult":
        if r.WhichOneof("result") == "accepted":
            a = r.accepted
            return cls(job=Job.from_proto(a.job, a.deduplicated, a.dedup_outcome))
        return cls(error=error_from_status(r.error))


@dataclass
class RetryResult:
    """What `Client.retry` did."""

    matched: int
    retried: int
    ids: List[str]
    #: (id, reason) of ids given that were not retried.
    skipped: List[Tuple[str, str]]
    #: More jobs matched than `limit`: call again.
    more: bool


@dataclass
class KindStatus:
    """One configured kind (`Client.kinds`)."""

    kind: str
    handler: str
    paused: bool
    queued: int
    running: int
    retry_wait: int
    failed: int
    concurrency: int
    connected_workers: int

    @classmethod
    def from_proto(cls, k: pb.KindStatus) -> "KindStatus":
        return cls(
            kind=k.kind,
            handler=k.handler,
            paused=k.paused,
            queued=k.queued,
            running=k.running,
            retry_wait=k.retry_wait,
            failed=k.failed,
            concurrency=k.concurrency,
            connected_workers=k.connected_workers,
        )


@dataclass
class WorkerSession:
    """One connected remote worker (`Client.workers`)."""

    session_id: str
    worker_id: str
    kinds: List[str]
    in_flight: int
    max_in_flight: int
    connected_at: Optional[_dt.datetime]
    last_seen: Optional[_dt.datetime]
    address: str
    labels: Dict[str, str]

    @classmethod
    def from_proto(cls, w: pb.WorkerSession) -> "WorkerSession":
        return cls(
            session_id=w.session_id,
            worker_id=w.worker_id,
            kinds=list(w.kinds),
            in_flight=w.in_flight,
            max_in_flight=w.max_in_flight,
            connected_at=_time(w.connected_at, w, "connected_at"),
            last_seen=_time(w.last_seen, w, "last_seen"),
            address=w.address,
            labels=dict(w.labels),
        )
