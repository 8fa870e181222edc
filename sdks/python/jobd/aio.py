"""`jobd.aio.Client`: `jobd.Client` for asyncio code, on grpc.aio.

    async with jobd.aio.Client() as client:
        job = await client.submit("resize", b"...")
        job = await client.wait(job.id, timeout=60)
        async for event in client.watch(job.id): ...
        async for j in client.list(kind="resize", state="FAILED"): ...

Every method has the sync client's arguments and meaning (`submit` with
`depends_on`, `graph`, ...); the streams
(`watch`, `watch_jobs`, `list`, `logs`) are async iterators.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import time
from typing import Any, AsyncIterator, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from ._conn import TLSOption, Connection
from .client import (
    DEFAULT_RPC_TIMEOUT,
    LOG_PAGE,
    StateArg,
    _batch_request,
    _list_request,
    _retry_delay,
    _retry_request,
    _retry_result,
    _stream_retry,
    _submit_request,
)
from .errors import JobdError, ResourceExhausted, Timeout, error_from_rpc
from .types import Dedup, Job, JobChange, JobEvent, JobGraph, KindStatus, LogLine, Payload, RetryResult, State, Submit, SubmitResult, WorkerSession
from .v1 import jobd_pb2 as pb
from .v1 import jobd_pb2_grpc

__all__ = ["Client"]


class Client:
    """`jobd.Client` for asyncio. Create it inside the event loop that uses
    it; `await client.close()` (or `async with`) ends it."""

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
        self._channel = self.connection.aio_channel()
        self._jobs = jobd_pb2_grpc.JobServiceStub(self._channel)
        self._admin = jobd_pb2_grpc.AdminServiceStub(self._channel)
        self._md = self.connection.metadata

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"jobd.aio.Client({self.connection.target!r})"

    async def _call(self, method: Any, request: Any, timeout: Optional[float] = None) -> Any:
        try:
            return await method(request, metadata=self._md, timeout=timeout or self.rpc_timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    async def _with_retries(self, method: Any, request: Any, retries: Optional[int]) -> Any:
        n = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return await self._call(method, request)
            except ResourceExhausted as err:
                delay = _retry_delay(err, attempt, n)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def submit(
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
        """See `jobd.Client.submit`."""
        req = _submit_request(
            kind, payload, key, priority, delay, run_at, labels, ordering_key, max_attempts, timeout,
            depends_on, on_dependency_failure, start_within, start_before, dedup, fairness_key,
        )
        reply = await self._with_retries(self._jobs.Submit, req, retries)
        return Job.from_proto(reply.job, reply.deduplicated, reply.dedup_outcome)

    async def submit_batch(
        self, entries: Iterable[Union[Submit, pb.SubmitRequest]], *, retries: Optional[int] = None
    ) -> List[SubmitResult]:
        """See `jobd.Client.submit_batch`."""
        reply = await self._with_retries(self._jobs.SubmitBatch, _batch_request(entries), retries)
        return [SubmitResult.from_proto(r) for r in reply.results]

    async def get(self, id: str) -> Job:
        return Job.from_proto((await self._call(self._jobs.GetStatus, pb.GetStatusRequest(id=id))).job)

    async def graph(self, id: str, *, depth: int = 0) -> JobGraph:
        """See `jobd.Client.graph`."""
        reply = await self._call(self._jobs.GetJobGraph, pb.GetJobGraphRequest(id=id, depth=depth))
        return JobGraph.from_proto(reply)

    async def cancel(self, id: str) -> Job:
        return Job.from_proto((await self._call(self._jobs.Cancel, pb.CancelRequest(id=id))).job)

    async def watch(
        self, id: str, *, after_sequence: int = 0, timeout: Optional[float] = None
    ) -> AsyncIterator[JobEvent]:
        """See `jobd.Client.watch`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seq, failures = after_sequence, 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._jobs.WatchStatus(
                pb.WatchStatusRequest(id=id, after_sequence=seq), metadata=self._md, timeout=left
            )
            try:
                async for msg in call:
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
                await asyncio.sleep(wait)
            finally:
                call.cancel()

    async def wait(self, id: str, timeout: Optional[float] = None) -> Job:
        """See `jobd.Client.wait`."""
        last: Optional[Job] = None
        try:
            async for event in self.watch(id, timeout=timeout):
                last = event.job
        except JobdError as e:
            if e.code == "DEADLINE_EXCEEDED":
                raise Timeout(f"job {id} not finished within {timeout} s", job=last) from e
            raise
        if last is None or not last.done:
            last = await self.get(id)
        return last

    async def logs(
        self, id: str, follow: bool = False, after: int = 0, *, timeout: Optional[float] = None
    ) -> AsyncIterator[LogLine]:
        """See `jobd.Client.logs`."""
        if not follow:
            req = pb.GetLogsRequest(id=id, after=after, limit=LOG_PAGE)
            while True:
                page = await self._call(self._jobs.GetLogs, req)
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
                async for msg in call:
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
                await asyncio.sleep(wait)
            finally:
                call.cancel()

    async def watch_jobs(
        self, *, kind: Optional[str] = None, state: StateArg = None, after: int = 0
    ) -> AsyncIterator[JobChange]:
        """See `jobd.Client.watch_jobs`."""
        req = pb.WatchJobsRequest(kind=kind or "", state=State.parse(state).to_proto(), after=after)
        call = self._jobs.WatchJobs(req, metadata=self._md)
        try:
            async for msg in call:
                yield JobChange(Job.from_proto(msg.job), msg.position)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        finally:
            call.cancel()

    async def list(
        self,
        *,
        kind: Optional[str] = None,
        state: StateArg = None,
        labels: Optional[Mapping[str, str]] = None,
        ordering_key: Optional[str] = None,
        newest_first: bool = False,
        limit: Optional[int] = None,
        page_size: int = 500,
    ) -> AsyncIterator[Job]:
        """See `jobd.Client.list`."""
        req = _list_request(kind, state, labels, ordering_key, newest_first, page_size)
        seen = 0
        while True:
            page = await self._call(self._jobs.ListJobs, req)
            for j in page.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield Job.from_proto(j)
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    async def retry(
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
        """See `jobd.Client.retry`."""
        req = _retry_request(ids, state, kind, labels, finished_after, finished_before, dry_run, limit)
        return _retry_result(await self._call(self._admin.RetryJobs, req))

    async def kinds(self) -> List[KindStatus]:
        reply = await self._call(self._admin.ListKinds, pb.ListKindsRequest())
        return [KindStatus.from_proto(k) for k in reply.kinds]

    async def pause_kind(self, kind: str) -> KindStatus:
        reply = await self._call(self._admin.PauseKind, pb.PauseKindRequest(kind=kind))
        return KindStatus.from_proto(reply.kind_status)

    async def resume_kind(self, kind: str) -> KindStatus:
        reply = await self._call(self._admin.ResumeKind, pb.ResumeKindRequest(kind=kind))
        return KindStatus.from_proto(reply.kind_status)

    async def workers(self, kind: Optional[str] = None) -> List[WorkerSession]:
        reply = await self._call(self._admin.ListWorkers, pb.ListWorkersRequest(kind=kind or ""))
        return [WorkerSession.from_proto(w) for w in reply.workers]
