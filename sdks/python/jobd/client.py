"""`jobd.Client`: submit jobs and follow them, over one gRPC channel."""
from __future__ import annotations

import datetime as _dt
import random
import time
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from ._conn import TLSOption, Connection
from .errors import JobdError, ResourceExhausted, Timeout, Unavailable, error_from_rpc
from .types import (
    Dedup,
    Job,
    JobChange,
    JobEvent,
    JobGraph,
    KindStatus,
    LogLine,
    Payload,
    RetryResult,
    State,
    Submit,
    SubmitResult,
    WorkerSession,
    _timestamp,
)
from .v1 import jobd_pb2 as pb
from .v1 import jobd_pb2_grpc

__all__ = ["Client"]

T = TypeVar("T")

#: Default deadline of each unary call, in seconds.
DEFAULT_RPC_TIMEOUT = 30.0
#: A ResourceExhausted delay longer than this is not waited for.
MAX_RETRY_DELAY = 60.0
#: Consecutive reconnects of a watch whose stream broke (UNAVAILABLE).
WATCH_RECONNECTS = 10
#: Log lines per GetLogs page (jobd's default and ceiling).
LOG_PAGE = 1000

StateArg = Union[State, str, None]


# ---- requests and replies, shared with jobd.aio ----------------------------

def _submit_request(
    kind: str,
    payload: Payload,
    key: Optional[str],
    priority: int,
    delay: Optional[float],
    run_at: Any,
    labels: Optional[Mapping[str, str]],
    ordering_key: Optional[str],
    max_attempts: int,
    timeout: Optional[float],
    depends_on: Optional[Iterable[Union[str, Job]]],
    on_dependency_failure: Optional[str],
    start_within: Optional[float],
    start_before: Optional[Union[_dt.datetime, float]],
    dedup: Optional[Dedup],
    fairness_key: Optional[str],
) -> pb.SubmitRequest:
    return Submit(
        kind, payload, key, priority, delay, run_at, labels, ordering_key, max_attempts, timeout,
        depends_on, on_dependency_failure, start_within, start_before, dedup, fairness_key,
    ).to_proto()


def _batch_request(entries: Iterable[Union[Submit, pb.SubmitRequest]]) -> pb.SubmitBatchRequest:
    reqs = []
    for e in entries:
        if isinstance(e, Submit):
            reqs.append(e.to_proto())
        elif isinstance(e, pb.SubmitRequest):
            reqs.append(e)
        else:
            raise TypeError(f"submit_batch takes jobd.Submit entries, not {type(e).__name__}")
    return pb.SubmitBatchRequest(requests=reqs)


def _list_request(
    kind: Optional[str],
    state: StateArg,
    labels: Optional[Mapping[str, str]],
    ordering_key: Optional[str],
    newest_first: bool,
    page_size: int,
) -> pb.ListJobsRequest:
    r = pb.ListJobsRequest(
        kind=kind or "",
        state=State.parse(state).to_proto(),
        page_size=page_size,
        ordering_key=ordering_key or "",
        order=pb.LIST_JOBS_ORDER_NEWEST_FIRST if newest_first else pb.LIST_JOBS_ORDER_OLDEST_FIRST,
    )
    if labels:
        r.labels.update(labels)
    return r


def _retry_request(
    ids: Optional[Sequence[str]],
    state: StateArg,
    kind: Optional[str],
    labels: Optional[Mapping[str, str]],
    finished_after: Optional[_dt.datetime],
    finished_before: Optional[_dt.datetime],
    dry_run: bool,
    limit: int,
) -> pb.RetryJobsRequest:
    r = pb.RetryJobsRequest(dry_run=dry_run, limit=limit)
    if ids:
        r.ids.extend(ids)
    else:
        f = r.filter
        f.state = State.parse(state or State.FAILED).to_proto()
        f.kind = kind or ""
        if labels:
            f.labels.update(labels)
        if finished_after is not None:
            f.finished_after.CopyFrom(_timestamp(finished_after, "finished_after"))
        if finished_before is not None:
            f.finished_before.CopyFrom(_timestamp(finished_before, "finished_before"))
    return r


def _retry_result(r: pb.RetryJobsResponse) -> RetryResult:
    return RetryResult(
        matched=r.matched,
        retried=r.retried,
        ids=list(r.ids),
        skipped=[(s.id, s.reason) for s in r.skipped],
        more=r.more,
    )


def _retry_delay(err: JobdError, attempt: int, retries: int) -> Optional[float]:
    """How long to wait before trying a ResourceExhausted call again, or None
    to give up: only when jobd said when (RetryInfo), at most `retries`
    times. A little jitter spreads clients that were refused together."""
    if not isinstance(err, ResourceExhausted) or err.retry_after is None or attempt >= retries:
        return None
    if err.retry_after > MAX_RETRY_DELAY:
        return None
    return err.retry_after * random.uniform(1.0, 1.1)


def _watch_backoff(failures: int) -> float:
    return min(0.1 * 2 ** failures, 5.0) * random.uniform(0.5, 1.0)


def _stream_retry(err: JobdError, failures: int) -> Optional[float]:
    """A watch stream that broke: how long to wait before resuming it."""
    if failures >= WATCH_RECONNECTS:
        return None
    if isinstance(err, Unavailable):
        return _watch_backoff(failures)
    if isinstance(err, ResourceExhausted) and err.retry_after is not None:
        return min(err.retry_after, MAX_RETRY_DELAY)
    return None


class Client:
    """A connection to jobd's JobService (and AdminService).

        client = jobd.Client("127.0.0.1:50051")          # or Client(): JOBD_ADDR, JOBD_TOKEN
        job = client.submit("resize", {"w": 100})
        job = client.wait(job.id, timeout=60)

    `addr` is "host:port", "http://host:port" or "https://host:port" (TLS
    with the system's roots). `token` is sent as `authorization: Bearer`.
    `tls` is `(ca, cert, key)` (paths or PEM bytes; each may be None), a
    `jobd.TLS`, True (system roots) or False; unset, JOBD_CA / JOBD_CERT /
    JOBD_CERT_KEY are read. `rpc_timeout` bounds every unary call (seconds).
    `retries` is how many times `submit` and `submit_batch` try again after
    RESOURCE_EXHAUSTED, each after the delay jobd's RetryInfo names.

    Thread-safe; use one per process. `close()` (or `with`) ends it.
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        token: Optional[str] = None,
        tls: TLSOption = None,
        server_name: Optional[str] = None,
        rpc_timeout: Optional[float] = DEFAULT_RPC_TIMEOUT,
        retries: int = 3,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.connection = Connection(addr, token=token, tls=tls, server_name=server_name, options=options)
        self.rpc_timeout = rpc_timeout
        self.retries = retries
        self._channel = self.connection.channel()
        self._jobs = jobd_pb2_grpc.JobServiceStub(self._channel)
        self._admin = jobd_pb2_grpc.AdminServiceStub(self._channel)
        self._md = self.connection.metadata

    # ---- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; open watches end."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"jobd.Client({self.connection.target!r})"

    def _call(self, method: Callable[..., T], request: Any, timeout: Optional[float] = None) -> T:
        try:
            return method(request, metadata=self._md, timeout=timeout or self.rpc_timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def _with_retries(self, method: Callable[..., T], request: Any, retries: Optional[int]) -> T:
        n = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return self._call(method, request)
            except ResourceExhausted as err:
                delay = _retry_delay(err, attempt, n)
                if delay is None:
                    raise
                attempt += 1
                time.sleep(delay)

    # ---- JobService ---------------------------------------------------------

    def submit(
        self,
        kind: str,
        payload: Payload = b"",
        *,
        key: Optional[str] = None,
        priority: int = 0,
        delay: Optional[float] = None,
        run_at: Optional[Union[_dt.datetime, float]] = None,
        labels: Optional[Mapping[str, str]] = None,
        ordering_key: Optional[str] = None,
        max_attempts: int = 0,
        timeout: Optional[float] = None,
        depends_on: Optional[Iterable[Union[str, Job]]] = None,
        on_dependency_failure: Optional[str] = None,
        retries: Optional[int] = None,
        start_within: Optional[float] = None,
        start_before: Optional[Union[_dt.datetime, float]] = None,
        dedup: Optional[Dedup] = None,
        fairness_key: Optional[str] = None,
    ) -> Job:
        """Submits one job; returns it once it is durable in jobd's store.

        `payload`: bytes, str (UTF-8) or anything JSON encodes. `key`: an
        idempotency key (the same key and request again returns the same
        job, `deduplicated` True; the same key with another request raises
        AlreadyExists). `delay` (seconds) or `run_at` (an aware datetime or a
        Unix time): not before then. `max_attempts` 0 and `timeout` None
        (seconds per attempt) take the kind's defaults. RESOURCE_EXHAUSTED
        is retried after jobd's RetryInfo delay, at most `retries` times
        (default: the client's, 3).

        `depends_on`: jobs (ids, or Jobs) this one waits for: it is WAITING
        until every one is terminal, and its attempts receive their results
        (`ctx.parents`). `on_dependency_failure`: when a parent ends FAILED
        or CANCELLED, "cancel" (the default: this job is CANCELLED too) or
        "run" (it runs anyway, once every parent is terminal). An unknown
        parent id is InvalidArgument.

        `start_within` (seconds from now) or `start_before` (an aware
        datetime or a Unix time): the start deadline; a job not started by
        then ends FAILED ("expired: ..."), never late (`job.start_before`).
        `dedup`: a `jobd.Dedup(key, mode="keep"|"replace"|"debounce",
        window=None, max_wait=None)`: the kind's job that holds the key and
        has not started takes this submit; `job.dedup_outcome` says what
        happened ("created", "kept", "replaced", "debounced").

        `fairness_key`: the key a `fairness = "round_robin"` kind's claims
        rotate over (e.g. a tenant; at most 256 bytes, no NUL); without it,
        `ordering_key` (`job.fairness_key`)."""
        req = _submit_request(
            kind, payload, key, priority, delay, run_at, labels, ordering_key, max_attempts, timeout,
            depends_on, on_dependency_failure, start_within, start_before, dedup, fairness_key,
        )
        reply = self._with_retries(self._jobs.Submit, req, retries)
        return Job.from_proto(reply.job, reply.deduplicated, reply.dedup_outcome)

    def submit_batch(
        self, entries: Iterable[Union[Submit, pb.SubmitRequest]], *, retries: Optional[int] = None
    ) -> List[SubmitResult]:
        """Submits many jobs in one call (one store commit): one result per
        entry, in order, each with `.job` or `.error` (a JobdError). A call
        refused whole with RESOURCE_EXHAUSTED is retried as `submit` is.

        An entry's `depends_on` may name an earlier entry as "$N" (its
        0-based index): a whole graph goes in one atomic call, e.g. parents
        and a callback `Submit("report", depends_on=["$0", "$1"],
        on_dependency_failure="run")`."""
        reply = self._with_retries(self._jobs.SubmitBatch, _batch_request(entries), retries)
        return [SubmitResult.from_proto(r) for r in reply.results]

    def get(self, id: str) -> Job:
        """The job as it is now. NotFound when there is no such job."""
        return Job.from_proto(self._call(self._jobs.GetStatus, pb.GetStatusRequest(id=id)).job)

    def graph(self, id: str, *, depth: int = 0) -> JobGraph:
        """The job's ancestors and descendants (`depends_on` edges), up to
        `depth` steps each way (0: jobd's default, 3; at most 10), at most
        1,000 jobs: `.jobs` (the job first), `.edges` (`JobEdge(parent,
        child)`), `.truncated`. NotFound when there is no such job."""
        return JobGraph.from_proto(self._call(self._jobs.GetJobGraph, pb.GetJobGraphRequest(id=id, depth=depth)))

    def cancel(self, id: str) -> Job:
        """Cancels a job: a waiting one at once, a running one is stopped
        (its worker is told). FailedPrecondition if it already finished;
        cancelling a CANCELLED job is fine."""
        return Job.from_proto(self._call(self._jobs.Cancel, pb.CancelRequest(id=id)).job)

    def watch(self, id: str, *, after_sequence: int = 0, timeout: Optional[float] = None) -> Iterator[JobEvent]:
        """The job's changes, in order: first its current snapshot, then one
        event per change, ending after a terminal state. A stream that
        breaks (jobd restarting) is resumed from the last sequence seen, a
        few times with backoff. `timeout` (seconds) bounds the whole watch
        (DeadlineExceeded past it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seq, failures = after_sequence, 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._jobs.WatchStatus(
                pb.WatchStatusRequest(id=id, after_sequence=seq), metadata=self._md, timeout=left
            )
            try:
                for msg in call:
                    failures = 0
                    seq = msg.sequence
                    event = JobEvent(Job.from_proto(msg.job), msg.sequence)
                    yield event
                    if event.job.done:
                        return
                return
            except grpc.RpcError as e:
                err = error_from_rpc(e)
                wait = _stream_retry(err, failures)
                if wait is None or (deadline is not None and time.monotonic() + wait >= deadline):
                    raise err from e
                failures += 1
                time.sleep(wait)
            finally:
                call.cancel()

    def wait(self, id: str, timeout: Optional[float] = None) -> Job:
        """Watches the job until it is SUCCEEDED, FAILED or CANCELLED and
        returns it (whatever the outcome: check `job.state`; a WAITING job
        is not finished: it goes on waiting for its parents). Raises
        jobd.Timeout when it is not finished within `timeout` seconds."""
        last: Optional[Job] = None
        try:
            for event in self.watch(id, timeout=timeout):
                last = event.job
        except JobdError as e:
            if e.code == "DEADLINE_EXCEEDED":
                raise Timeout(f"job {id} not finished within {timeout} s", job=last) from e
            raise
        if last is None or not last.done:  # resumed after the end: read it
            last = self.get(id)
        return last

    def logs(
        self, id: str, follow: bool = False, after: int = 0, *, timeout: Optional[float] = None
    ) -> Iterator[LogLine]:
        """The job's log lines (what its attempts wrote with `ctx.log`),
        oldest first, each a `LogLine(seq, attempt, time, text)`. jobd keeps
        the newest 1,000 lines of a job. `after`: only lines with a greater
        `seq` (pass the last one seen to resume).

        `follow=False` reads the lines there are now, page by page, fetched
        as the loop goes. `follow=True` goes on with each line as it is
        written and ends once the job is terminal and every line was sent;
        a stream that breaks (jobd restarting) is resumed after the last
        line seen, a few times with backoff. `timeout` (seconds) bounds a
        follow (DeadlineExceeded past it). NotFound when there is no such
        job."""
        if not follow:
            req = pb.GetLogsRequest(id=id, after=after, limit=LOG_PAGE)
            while True:
                page = self._call(self._jobs.GetLogs, req)
                if not page.lines:
                    return
                for line in page.lines:
                    yield LogLine.from_proto(line)
                req.after = page.lines[-1].seq
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._jobs.WatchLogs(pb.WatchLogsRequest(id=id, after=after), metadata=self._md, timeout=left)
            try:
                for msg in call:
                    failures = 0
                    after = msg.seq
                    yield LogLine.from_proto(msg)
                return
            except grpc.RpcError as e:
                err = error_from_rpc(e)
                wait = _stream_retry(err, failures)
                if wait is None or (deadline is not None and time.monotonic() + wait >= deadline):
                    raise err from e
                failures += 1
                time.sleep(wait)
            finally:
                call.cancel()

    def watch_jobs(
        self, *, kind: Optional[str] = None, state: StateArg = None, after: int = 0
    ) -> Iterator[JobChange]:
        """Every change of every job (optionally of one kind, or into one
        state), from now on (or after position `after`). Endless: break
        out of the loop to stop. OutOfRange when `after` is too old."""
        req = pb.WatchJobsRequest(kind=kind or "", state=State.parse(state).to_proto(), after=after)
        call = self._jobs.WatchJobs(req, metadata=self._md)
        try:
            for msg in call:
                yield JobChange(Job.from_proto(msg.job), msg.position)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        finally:
            call.cancel()

    def list(
        self,
        *,
        kind: Optional[str] = None,
        state: StateArg = None,
        labels: Optional[Mapping[str, str]] = None,
        ordering_key: Optional[str] = None,
        newest_first: bool = False,
        limit: Optional[int] = None,
        page_size: int = 500,
    ) -> Iterator[Job]:
        """Jobs matching every filter given, oldest first (or newest first),
        fetched page by page as the loop goes; at most `limit` of them."""
        req = _list_request(kind, state, labels, ordering_key, newest_first, page_size)
        seen = 0
        while True:
            page = self._call(self._jobs.ListJobs, req)
            for j in page.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield Job.from_proto(j)
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    # ---- AdminService (an admin token when auth is on) ------------------------

    def retry(
        self,
        ids: Optional[Sequence[str]] = None,
        *,
        state: StateArg = None,
        kind: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        finished_after: Optional[_dt.datetime] = None,
        finished_before: Optional[_dt.datetime] = None,
        dry_run: bool = False,
        limit: int = 0,
    ) -> RetryResult:
        """Puts FAILED or CANCELLED jobs back to QUEUED with their attempts
        reset: the given `ids`, or every job matching the filter (`state`
        FAILED by default). A job a parent's failure cancelled goes back to
        WAITING while some parent has not finished (retry the failed parent
        first, then what it cancelled)."""
        req = _retry_request(ids, state, kind, labels, finished_after, finished_before, dry_run, limit)
        return _retry_result(self._call(self._admin.RetryJobs, req))

    def kinds(self) -> List[KindStatus]:
        """Every configured kind with its job counts and connected workers."""
        return [KindStatus.from_proto(k) for k in self._call(self._admin.ListKinds, pb.ListKindsRequest()).kinds]

    def pause_kind(self, kind: str) -> KindStatus:
        """Stops new attempts of a kind (submits are still taken)."""
        return KindStatus.from_proto(self._call(self._admin.PauseKind, pb.PauseKindRequest(kind=kind)).kind_status)

    def resume_kind(self, kind: str) -> KindStatus:
        return KindStatus.from_proto(self._call(self._admin.ResumeKind, pb.ResumeKindRequest(kind=kind)).kind_status)

    def workers(self, kind: Optional[str] = None) -> List[WorkerSession]:
        """The remote worker sessions connected (serving `kind`, or all)."""
        reply = self._call(self._admin.ListWorkers, pb.ListWorkersRequest(kind=kind or ""))
        return [WorkerSession.from_proto(w) for w in reply.workers]
