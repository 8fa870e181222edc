"""`jobd.Worker`: do the work of kinds declared `handler = "remote"`.

    worker = jobd.Worker("127.0.0.1:50051", max_in_flight=8)

    @worker.task("resize")
    def resize(ctx: jobd.Context, payload: bytes):
        if ctx.cancelled.is_set(): ...
        return {"ok": True}

    worker.run()   # blocks; SIGTERM/SIGINT or worker.stop() drains

The worker owns one `WorkerService.Connect` session at a time (see the
proto's comment on WorkerService for the protocol): hello, heartbeats, at
most `max_in_flight` jobs at once, one report per attempt, cancel, drain,
and reconnection with capped, jittered backoff.

Sync functions run on a pool of `max_in_flight` threads; `async def` ones
as tasks on an event loop (the worker's own loop thread under `run()`, the
caller's loop under `await worker.serve()`). The stream is read by a
thread of its own and heartbeats are sent by another, so neither a busy
function nor a busy event loop silences the session.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import heapq
import inspect
import json as _json
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ._conn import TLSOption, Connection
from .errors import JobdError, error_from_rpc
from .types import ParentResult, Payload, encode_payload
from .v1 import jobd_pb2 as pb
from .v1 import jobd_pb2_grpc

__all__ = ["Worker", "Context", "Permanent", "RetryLater"]

log = logging.getLogger("jobd.worker")

#: Codes at Connect that connecting again cannot fix: run() raises them.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
DEFAULT_HEARTBEAT = 5.0
#: After the drain timeout, how long cancelled functions get to return.
CANCEL_GRACE = 1.0
#: After the last reports of a drain, how long to wait for jobd to end the session.
ACK_WAIT = 5.0
#: A job handed back on stop is retried after this (Fail.retry_after): long
#: enough that jobd does not give it straight back to this closing session.
HANDBACK_RETRY_AFTER = 1.0
#: An attempt's Progress and Log messages each go at most this often: what
#: comes sooner waits (the latest progress; the log lines, in order) and
#: goes when the time is up, or before the attempt's report.
SEND_EVERY = 0.1
#: jobd's bounds (a message past one ends the session: checked before).
MAX_PROGRESS_MESSAGE_BYTES = 256
MAX_PROGRESS_DETAILS_BYTES = 4096
MAX_LOG_LINE_BYTES = 4096
MAX_LOG_LINES_PER_MESSAGE = 1000
#: The largest checkpoint jobd keeps (Touch.checkpoint): 64 KiB.
MAX_CHECKPOINT_BYTES = 64 * 1024


class Permanent(Exception):
    """Raise it from a task to fail the job without a retry (it goes
    straight to FAILED). Any other exception fails the attempt and jobd
    retries it by the kind's policy."""


class RetryLater(Exception):
    """Raise it from a task to fail this attempt and have the next one
    start `after` seconds from now (instead of the kind's backoff)."""

    def __init__(self, message: str = "", *, after: float) -> None:
        super().__init__(message)
        self.after = after


class Context:
    """What a task knows about the attempt it runs.

    `payload` (bytes) and `json()`; `job_id`, `kind`, `attempt` (1 for the
    first), `max_attempts`, `deadline` (aware datetime: jobd stops the
    attempt then), `headers` (trace context: `traceparent`); `checkpoint`
    (bytes or None), what an earlier attempt saved with
    `touch(checkpoint=...)`; `parents`, the results of the jobs this one
    depends on (`ParentResult`s in `depends_on` order; empty for a job
    without parents); `cancelled`, a threading.Event set when jobd
    cancels the attempt (cancelled, timed out) or the worker gives it up
    (session lost, drain timeout). An async task is cancelled (asyncio) as
    well.

    `progress(percent, message, details)` and `log(*lines)` tell jobd how
    the attempt goes, `touch(extend_by, checkpoint=...)` pushes its
    deadline further and saves where it got; all return at once (from sync
    and async tasks).
    """

    __slots__ = (
        "job_id", "kind", "attempt", "max_attempts", "payload", "headers", "checkpoint", "parents", "cancelled",
        "_deadline", "_send", "_out",
    )

    def __init__(
        self,
        job_id: str,
        kind: str,
        attempt: int,
        max_attempts: int,
        payload: bytes,
        deadline: Optional[timestamp_pb2.Timestamp],
        headers: Mapping[str, str],
        send: Callable[[pb.WorkerMessage], None],
        checkpoint: Optional[bytes] = None,
        parents: Sequence[ParentResult] = (),
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.payload = payload
        self.headers = dict(headers)
        #: The checkpoint the last attempt that saved one left
        #: (`touch(checkpoint=...)`, Assign.checkpoint): resume from it.
        #: None when no attempt saved one (or it saved an empty one).
        self.checkpoint: Optional[bytes] = checkpoint or None
        #: The jobs this one depends on (`depends_on`), in that order, each
        #: with its id, kind, terminal state and result (`.json()`,
        #: `.text()`; `result_omitted` past the 1 MiB an attempt receives
        #: in all: read it with `client.get(id)`). Empty for a job without
        #: parents.
        self.parents: List[ParentResult] = list(parents)
        self.cancelled = threading.Event()
        self._deadline = deadline
        # Sends a message on this attempt's session, from any thread.
        self._send = send
        self._out = _Outflow(job_id, attempt, send)

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return _json.loads(self.payload)

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")

    @property
    def deadline(self) -> Optional[_dt.datetime]:
        """When jobd stops this attempt (its timeout), or None."""
        if self._deadline is None:
            return None
        return _dt.datetime.fromtimestamp(self._deadline.seconds + self._deadline.nanos / 1e9, tz=_dt.timezone.utc)

    @property
    def time_left(self) -> Optional[float]:
        """Seconds until the attempt's deadline (None: no deadline)."""
        if self._deadline is None:
            return None
        return self._deadline.seconds + self._deadline.nanos / 1e9 - time.time()

    @property
    def traceparent(self) -> Optional[str]:
        return self.headers.get("traceparent")

    def progress(self, percent: float, message: str = "", details: Payload = None) -> None:
        """Tells jobd how far the attempt got: `percent` 0 to 100 (a float
        is rounded down), a `message` of at most 256 bytes (UTF-8),
        `details` of at most 4 KiB (bytes, str, or a dict / list sent as
        JSON). Watchers see it as an event of the job (still RUNNING) and
        `job.progress` keeps the latest. Returns at once: at most ~10
        values a second are sent (the latest wins), and jobd stores at most
        one every 200 ms. ValueError for a value out of bounds; a no-op
        once the attempt ended (reported, cancelled, given up)."""
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError(f"progress percent must be a number, not {type(percent).__name__}")
        if not 0 <= percent <= 100:
            raise ValueError(f"progress percent must be 0 to 100, not {percent!r}")
        if not isinstance(message, str):
            raise TypeError(f"progress message must be a str, not {type(message).__name__}")
        size = _utf8_len(message, "progress message")
        if size > MAX_PROGRESS_MESSAGE_BYTES:
            raise ValueError(f"progress message is {size} bytes: at most {MAX_PROGRESS_MESSAGE_BYTES} (UTF-8)")
        blob = encode_payload(details)
        if len(blob) > MAX_PROGRESS_DETAILS_BYTES:
            raise ValueError(f"progress details are {len(blob)} bytes: at most {MAX_PROGRESS_DETAILS_BYTES}")
        msg = pb.Progress(job_id=self.job_id, attempt=self.attempt, percent=int(percent), message=message, details=blob)
        self._out.progress(pb.WorkerMessage(progress=msg))

    def touch(
        self, extend_by: Optional[float] = None, *, checkpoint: Union[bytes, str, None] = None
    ) -> "Future[Optional[_dt.datetime]]":
        """Tells jobd the attempt is alive (a sign of life, like a
        heartbeat of its own), and:

        - `extend_by` (seconds): pushes the attempt's deadline to that long
          from now (jobd caps it at the kind's `max_timeout`, counted from
          the attempt's start). None: the deadline stays where it is.
        - `checkpoint` (bytes, or a str sent as UTF-8; at most 64 KiB):
          saves where the attempt got. If this attempt fails or is lost
          (its worker killed, the session broken), the next attempt's
          `ctx.checkpoint` is the last checkpoint saved.

        Returns at once: the Touch is queued on the session, as before. It
        returns a `concurrent.futures.Future` that jobd's answer (TouchAck)
        resolves with the attempt's deadline now (an aware datetime, also
        kept in `deadline`), or with None when the touch was stale: jobd
        no longer holds the attempt, the checkpoint was not stored, or the
        attempt ended (reported, cancelled, given up) before the answer.
        A checkpoint is durable once the future resolves to a datetime;
        until then it may be lost with the worker. Wait only when that
        matters, e.g. before a side effect the next attempt must not
        repeat: `ctx.touch(checkpoint=b"...").result(timeout)` in a sync
        task, `await asyncio.wrap_future(ctx.touch(checkpoint=b"..."))` in
        an async one. Ignoring the future is fine.

        ValueError (nothing sent) for a negative or not finite `extend_by`,
        a checkpoint over 64 KiB or a str that is not valid UTF-8;
        TypeError for other types. Once the attempt ended nothing is sent
        and the future is already resolved with None."""
        if extend_by is not None:
            if isinstance(extend_by, bool) or not isinstance(extend_by, (int, float)):
                raise TypeError(f"touch extend_by must be a number of seconds, not {type(extend_by).__name__}")
            if not 0 <= extend_by < float("inf"):
                raise ValueError(f"touch extend_by must be 0 or more seconds, not {extend_by!r}")
        blob = _checkpoint_bytes(checkpoint)
        msg = pb.Touch(job_id=self.job_id, attempt=self.attempt)
        if extend_by is not None:
            msg.extend_by.CopyFrom(_duration(extend_by))
        if blob is not None:
            msg.checkpoint = blob
        return self._out.touch(pb.WorkerMessage(touch=msg))

    def _touched(self, deadline: timestamp_pb2.Timestamp) -> None:
        """jobd's TouchAck: the attempt's deadline now."""
        d = timestamp_pb2.Timestamp()
        d.CopyFrom(deadline)
        self._deadline = d  # one assignment: readers see the old or the new

    def log(self, *lines: str) -> None:
        """Appends lines to the job's log (`client.logs(id)`), tagged with
        this attempt: each argument a str, split on newlines (one trailing
        newline is dropped), each line at most 4 KiB (UTF-8; ValueError
        past that). Returns at once: lines written in a burst go together,
        at most ~10 messages a second (1,000 lines each). jobd keeps the
        newest 1,000 lines of a job. A no-op once the attempt ended."""
        out: List[str] = []
        for text in lines:
            if not isinstance(text, str):
                raise TypeError(f"log lines must be str, not {type(text).__name__}")
            if text.endswith("\n"):
                text = text[:-1]
            for line in text.split("\n"):
                if line.endswith("\r"):
                    line = line[:-1]
                size = _utf8_len(line, "log line")
                if size > MAX_LOG_LINE_BYTES:
                    raise ValueError(f"log line {len(out)} is {size} bytes: at most {MAX_LOG_LINE_BYTES} (UTF-8)")
                out.append(line)
        if out:
            self._out.log(out)

    def __repr__(self) -> str:
        return f"Context(job_id={self.job_id!r}, kind={self.kind!r}, attempt={self.attempt})"


def _checkpoint_bytes(checkpoint: Union[bytes, bytearray, memoryview, str, None]) -> Optional[bytes]:
    """A `touch` checkpoint as the bytes sent (None: no checkpoint),
    checked against jobd's bound (a larger one would end the session)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        try:
            blob = checkpoint.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"touch checkpoint is not valid UTF-8: {e}") from None
    elif isinstance(checkpoint, (bytes, bytearray, memoryview)):
        blob = bytes(checkpoint)
    else:
        raise TypeError(f"touch checkpoint must be bytes or str, not {type(checkpoint).__name__}")
    if len(blob) > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"touch checkpoint is {len(blob)} bytes: at most {MAX_CHECKPOINT_BYTES} (64 KiB)")
    return blob


def _utf8_len(text: str, what: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid UTF-8: {e}") from None


class _Outflow:
    """An attempt's Progress and Log messages on their way to the session's
    outbox. Each kind goes at most every SEND_EVERY: a progress value that
    comes sooner replaces the one waiting, log lines wait in order (a full
    message's worth goes at once), and the flusher thread sends them when
    the time is up. Touches go at once; their futures wait, oldest first,
    for jobd's answers (it answers in order). `end()` sends what waits
    (before the report) or drops it, resolves the touches still waiting
    with None, and makes any later call a no-op."""

    __slots__ = (
        "job_id", "attempt", "send", "lock", "ended", "progress_msg", "progress_at", "lines", "lines_at", "due",
        "touches",
    )

    def __init__(self, job_id: str, attempt: int, send: Callable[[pb.WorkerMessage], None]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.send = send
        self.lock = threading.Lock()
        self.ended = False
        self.progress_msg: Optional[pb.WorkerMessage] = None  # the latest, waiting
        self.progress_at = -SEND_EVERY  # monotonic time of the last sent
        self.lines: List[str] = []  # waiting
        self.lines_at = -SEND_EVERY
        self.due: Optional[float] = None  # the flusher wakes it then
        self.touches: "Deque[Future[Optional[_dt.datetime]]]" = deque()  # sent, not yet answered

    def progress(self, msg: pb.WorkerMessage) -> None:
        with self.lock:
            if self.ended:
                return
            now = time.monotonic()
            if self.progress_msg is None and now - self.progress_at >= SEND_EVERY:
                self.progress_at = now
                self.send(msg)  # under the lock: in order with the flusher's sends
                return
            self.progress_msg = msg
            self._schedule(self.progress_at + SEND_EVERY)

    def touch(self, msg: pb.WorkerMessage) -> "Future[Optional[_dt.datetime]]":
        fut: "Future[Optional[_dt.datetime]]" = Future()
        fut.set_running_or_notify_cancel()  # it cannot be cancelled: the Touch is on its way
        with self.lock:
            if not self.ended:
                self.touches.append(fut)
                self.send(msg)  # not held back: each touch goes at once
                return fut
        fut.set_result(None)
        return fut

    def touched(self, deadline: Optional[_dt.datetime]) -> None:
        """jobd's answer to the oldest touch waiting: the deadline, or None (stale)."""
        with self.lock:
            fut = self.touches.popleft() if self.touches else None
        if fut is not None:
            fut.set_result(deadline)

    def log(self, lines: List[str]) -> None:
        with self.lock:
            if self.ended:
                return
            self.lines.extend(lines)
            now = time.monotonic()
            if len(self.lines) >= MAX_LOG_LINES_PER_MESSAGE or now - self.lines_at >= SEND_EVERY:
                self._send_lines(now, paced=True)
            if self.lines:
                self._schedule(self.lines_at + SEND_EVERY)

    def _send_lines(self, now: float, paced: bool = False) -> None:
        """Sends the waiting lines (self.lock held), 1,000 a message; with
        `paced`, a partial message only if the last went SEND_EVERY ago."""
        n = MAX_LOG_LINES_PER_MESSAGE
        while self.lines:
            if paced and len(self.lines) < n and now - self.lines_at < SEND_EVERY:
                return
            batch, self.lines = self.lines[:n], self.lines[n:]
            self.send(pb.WorkerMessage(log=pb.Log(job_id=self.job_id, attempt=self.attempt, lines=batch)))
            self.lines_at = now

    def _schedule(self, at: float) -> None:
        if self.due is not None and self.due <= at:
            return
        self.due = at
        _flusher().add(at, self)

    def flush(self) -> None:
        """The flusher's call: sends what is due, schedules the rest."""
        with self.lock:
            self.due = None
            if self.ended:
                return
            now = time.monotonic() + 0.001
            if self.progress_msg is not None:
                if now - self.progress_at >= SEND_EVERY:
                    self.send(self.progress_msg)
                    self.progress_msg, self.progress_at = None, now
                else:
                    self._schedule(self.progress_at + SEND_EVERY)
            if self.lines:
                if now - self.lines_at >= SEND_EVERY:
                    self._send_lines(now)
                else:
                    self._schedule(self.lines_at + SEND_EVERY)

    def end(self, send: bool) -> None:
        """The attempt ended: send what waits (`send`: it is about to be
        reported) or drop it; later calls are no-ops."""
        with self.lock:
            if self.ended:
                return
            self.ended = True
            if send:
                if self.progress_msg is not None:
                    self.send(self.progress_msg)
                self._send_lines(time.monotonic())
            self.progress_msg = None
            self.lines = []
            waiting, self.touches = list(self.touches), deque()
        for fut in waiting:  # no answer counts any more: not known to be kept
            fut.set_result(None)


class _Flusher:
    """One thread per process that sends what attempts' `_Outflow`s hold
    back once it is due."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: List[Tuple[float, int, _Outflow]] = []
        self._n = 0
        threading.Thread(target=self._run, name="jobd-flusher", daemon=True).start()

    def add(self, at: float, out: _Outflow) -> None:
        with self._cond:
            self._n += 1
            heapq.heappush(self._heap, (at, self._n, out))
            if self._heap[0][2] is out:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, out = heapq.heappop(self._heap)
            try:
                out.flush()
            except Exception:
                log.exception("sending progress or log lines")


_FLUSHER: Optional[_Flusher] = None
_FLUSHER_LOCK = threading.Lock()


def _flusher() -> _Flusher:
    global _FLUSHER
    if _FLUSHER is None:
        with _FLUSHER_LOCK:
            if _FLUSHER is None:
                _FLUSHER = _Flusher()
    return _FLUSHER


TaskFn = Callable[..., Any]


class _Task:
    __slots__ = ("kind", "fn", "is_async", "json", "with_payload")

    def __init__(self, kind: str, fn: TaskFn, json: bool) -> None:
        self.kind = kind
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        self.json = json
        self.with_payload = _positional_params(fn) != 1


def _positional_params(fn: TaskFn) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(seconds, 0) * 1e9))
    return d


def _error_text(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Pool:
    """Threads for sync tasks, started as needed up to `size`. Daemon
    threads: a task that never returns cannot hold the process after
    `run()` returned."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._q: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                spawn = False
            elif self._threads < self._size:
                self._threads += 1
                spawn = True
            else:
                spawn = False  # every thread is busy: the first one free takes it
        if spawn:
            threading.Thread(target=self._work, args=(fn,), name="jobd-task", daemon=True).start()
        else:
            self._q.put(fn)

    def _work(self, fn: Optional[Callable[[], None]]) -> None:
        while fn is not None:
            try:
                fn()
            except BaseException:  # the callable reports its own errors
                log.exception("task thread")
            with self._lock:
                self._idle += 1
            fn = self._q.get()

    def shutdown(self) -> None:
        with self._lock:
            n = self._threads
        for _ in range(n):
            self._q.put(None)


class _Attempt:
    __slots__ = ("key", "ctx", "task", "started", "report", "future")

    def __init__(self, key: Tuple[str, int], ctx: Context, task: Optional[_Task]) -> None:
        self.key = key
        self.ctx = ctx
        self.task = task
        self.started = False
        self.report: Optional[pb.WorkerMessage] = None  # held back while stopping
        self.future: Any = None  # concurrent.futures.Future of an async task


class _Session:
    """One Connect stream: its outbox, the attempts it holds, and the
    condition every change of them is signalled on."""

    def __init__(self) -> None:
        self.outbox: "queue.SimpleQueue[Optional[pb.WorkerMessage]]" = queue.SimpleQueue()
        self.cond = threading.Condition(threading.Lock())
        self.held: Dict[Tuple[str, int], _Attempt] = {}
        self.welcomed = False
        self.ended = threading.Event()  # the stream is over
        self.closed = False  # our side is closed: nothing more is sent
        self.stopping = False  # local drain: reports are held back until its end
        self.error: Optional[JobdError] = None

    def send(self, msg: pb.WorkerMessage) -> None:
        if not self.closed:
            self.outbox.put(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put(None)

    def requests(self):  # gRPC sends what this yields, from a thread of its own
        while True:
            msg = self.outbox.get()
            if msg is None:
                return
            yield msg


class Worker:
    """A worker process's connection to jobd: register a function per
    kind, then `run()`.

    Connection arguments are the Client's (`addr`, `token`, `tls`,
    `server_name`, and JOBD_ADDR / JOBD_TOKEN / JOBD_CA / JOBD_CERT /
    JOBD_CERT_KEY). `max_in_flight`: jobs run at once (1..=10000).
    `drain_timeout`: on stop, how long the jobs being run get to finish
    before they are cancelled and handed back. `reconnect_min` /
    `reconnect_max`: the backoff between sessions (doubling, jittered).
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        token: Optional[str] = None,
        tls: TLSOption = None,
        server_name: Optional[str] = None,
        max_in_flight: int = 8,
        worker_id: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        drain_timeout: float = 30.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        if not 1 <= max_in_flight <= 10000:
            raise ValueError("max_in_flight must be 1 to 10000")
        self.connection = Connection(addr, token=token, tls=tls, server_name=server_name, options=options)
        self.max_in_flight = max_in_flight
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.labels = dict(labels or {})
        self.drain_timeout = drain_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.tasks: Dict[str, _Task] = {}
        #: Attempts completed, failed and handed back; stale acks; sessions opened.
        self.stats: Dict[str, int] = {"completed": 0, "failed": 0, "handed_back": 0, "stale": 0, "sessions": 0}
        self._lock = threading.Lock()
        self._stop_asked = False
        self._forced = False
        self._wake = threading.Event()  # stop asked: ends a reconnect pause
        self._session: Optional[_Session] = None
        self._pool: Optional[_Pool] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._connected = threading.Event()
        self._running = False

    # ---- registration -------------------------------------------------------

    def task(self, kind: str, *, json: bool = False) -> Callable[[TaskFn], TaskFn]:
        """Registers the decorated function for `kind`. It is called as
        `fn(ctx, payload)` (or `fn(ctx)`), payload bytes, or decoded JSON
        with `json=True`; it returns the result (bytes, str, or anything
        JSON encodes; None for empty) or raises (`jobd.Permanent`: no
        retry). `async def` functions work too."""

        def register(fn: TaskFn) -> TaskFn:
            self.register(kind, fn, json=json)
            return fn

        return register

    def register(self, kind: str, fn: TaskFn, *, json: bool = False) -> None:
        """`task` without the decorator."""
        if kind in self.tasks:
            raise ValueError(f"kind {kind!r} already has a task")
        self.tasks[kind] = _Task(kind, fn, json)

    # ---- running ------------------------------------------------------------

    def run(self) -> None:
        """Serves until stopped: blocks. In the main thread, SIGTERM and
        SIGINT drain (a second one stops at once). Raises the JobdError of
        a refusal that reconnecting cannot fix (bad token, unknown kind)."""
        installed: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, self._on_signal)
        loop: Optional[asyncio.AbstractEventLoop] = None
        loop_thread: Optional[threading.Thread] = None
        try:
            if any(t.is_async for t in self.tasks.values()):
                loop = asyncio.new_event_loop()
                loop_thread = threading.Thread(target=loop.run_forever, name="jobd-asyncio", daemon=True)
                loop_thread.start()
            self._serve(loop)
        finally:
            for signum, old in installed.items():
                signal.signal(signum, old)
            if loop is not None and loop_thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                loop_thread.join(5)
                if not loop.is_running():
                    loop.close()

    async def serve(self) -> None:
        """`run()` for asyncio programs: serves until `stop()`, with async
        tasks on the running loop (no signal handlers are installed).
        Cancelling it asks for a drain."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self._serve, loop)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.stop()
            raise

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler must not take locks the interrupted code may hold
        # (logging's among them): a thread of its own does the work.
        force, self._stop_asked = self._stop_asked, True
        threading.Thread(target=self._signalled, args=(signum, force), daemon=True).start()

    def _signalled(self, signum: int, force: bool) -> None:
        name = signal.Signals(signum).name
        if force:
            log.warning("second %s: stopping at once", name)
        else:
            log.info("%s: draining (send it again to stop at once)", name)
        self.stop(force=force)

    def stop(self, *, force: bool = False) -> None:
        """Drains, from any thread: takes no new job, finishes (or, past
        `drain_timeout`, cancels and hands back) what it holds, reports,
        and makes `run()` return. `force`: cancel and hand back at once."""
        self._stop_asked = True
        if force:
            self._forced = True
        self._wake.set()
        s = self._session
        if s is not None:
            with s.cond:
                s.cond.notify_all()

    @property
    def connected(self) -> bool:
        """True while a session is open (welcomed by jobd)."""
        return self._connected.is_set()

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Blocks until a session is open (call it from another thread)."""
        return self._connected.wait(timeout)

    def _serve(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        if not self.tasks:
            raise ValueError("no task registered: use @worker.task(kind)")
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._loop = loop
        self._pool = _Pool(self.max_in_flight)
        ms = lambda s: int(s * 1000)  # noqa: E731
        channel = self.connection.channel(
            [
                ("grpc.keepalive_time_ms", 20000),
                ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.initial_reconnect_backoff_ms", ms(self.reconnect_min)),
                ("grpc.min_reconnect_backoff_ms", ms(self.reconnect_min)),
                ("grpc.max_reconnect_backoff_ms", ms(self.reconnect_max)),
            ]
        )
        stub = jobd_pb2_grpc.WorkerServiceStub(channel)
        backoff = self.reconnect_min
        try:
            while not self._stop_asked:
                began = time.monotonic()
                welcomed = self._run_session(stub)
                if self._stop_asked:
                    break
                if welcomed and time.monotonic() - began > 1.0:
                    backoff = self.reconnect_min  # a session that lasted resets it
                pause = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, self.reconnect_max)
                log.info("reconnecting in %.2f s", pause)
                self._wake.wait(pause)
        finally:
            self._connected.clear()
            channel.close()
            self._pool.shutdown()
            self._running = False

    # ---- one session --------------------------------------------------------

    def _run_session(self, stub: jobd_pb2_grpc.WorkerServiceStub) -> bool:
        s = _Session()
        s.send(
            pb.WorkerMessage(
                hello=pb.Hello(
                    worker_id=self.worker_id,
                    kinds=list(self.tasks),
                    max_in_flight=self.max_in_flight,
                    labels=self.labels,
                )
            )
        )
        self._session = s
        call = stub.Connect(s.requests(), metadata=self.connection.metadata)
        reader = threading.Thread(target=self._read, args=(s, call), name="jobd-session", daemon=True)
        reader.start()
        try:
            with s.cond:
                while not s.ended.is_set() and not self._stop_asked:
                    s.cond.wait()
            if not s.ended.is_set():
                self._drain(s)
        finally:
            self._connected.clear()
            if not s.ended.is_set():
                call.cancel()
            with s.cond:
                self._abandon(s)
            reader.join(5)
            self._session = None
        if s.error is not None:
            raise s.error
        return s.welcomed

    def _read(self, s: _Session, call: Any) -> None:
        """The session's reader thread: every message jobd sends."""
        try:
            for msg in call:
                what = msg.WhichOneof("msg")
                if what == "assign":
                    self._assign(s, msg.assign)
                elif what == "ack":
                    if msg.ack.stale:
                        with self._lock:
                            self.stats["stale"] += 1
                        log.debug("stale ack: job %s attempt %d no longer held the job", msg.ack.job_id, msg.ack.attempt)
                elif what == "touch_ack":
                    self._touch_ack(s, msg.touch_ack)
                elif what == "cancel":
                    self._cancel(s, (msg.cancel.job_id, msg.cancel.attempt), msg.cancel.reason)
                elif what == "welcome":
                    every = msg.welcome.heartbeat_interval.ToTimedelta().total_seconds() or DEFAULT_HEARTBEAT
                    with s.cond:
                        s.welcomed = True
                    with self._lock:
                        self.stats["sessions"] += 1
                    threading.Thread(target=self._heartbeats, args=(s, every), name="jobd-heartbeat", daemon=True).start()
                    self._connected.set()
                    log.info("connected to %s: session %s", self.connection.target, msg.welcome.session_id)
                elif what == "drain":
                    log.info("jobd is draining: finishing the %d jobs held, taking no more", len(s.held))
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            if code in REFUSED:
                s.error = error_from_rpc(e)
                log.error("jobd refused the session: %s", s.error)
            elif code != grpc.StatusCode.CANCELLED or not s.closed:
                log.info("session ended: %s: %s", code.name, e.details())  # type: ignore[attr-defined]
        except Exception:
            log.exception("session reader")
        finally:
            with s.cond:
                s.ended.set()
                s.cond.notify_all()

    def _touch_ack(self, s: _Session, ack: pb.TouchAck) -> None:
        with s.cond:
            att = s.held.get((ack.job_id, ack.attempt))
        if ack.stale or not ack.HasField("deadline"):
            log.debug("stale touch: job %s attempt %d no longer held (or its checkpoint not kept)", ack.job_id, ack.attempt)
            if att is not None:
                att.ctx._out.touched(None)
            return
        if att is not None:
            att.ctx._touched(ack.deadline)
            att.ctx._out.touched(att.ctx.deadline)

    def _heartbeats(self, s: _Session, every: float) -> None:
        beat = pb.WorkerMessage(heartbeat=pb.Heartbeat())
        while not s.ended.wait(every) and not s.closed:
            s.send(beat)

    def _assign(self, s: _Session, a: pb.Assign) -> None:
        job = a.job
        key = (job.id, job.attempt)
        deadline = a.deadline if a.HasField("deadline") else None
        ctx = Context(
            job.id, job.kind, job.attempt, job.max_attempts, a.payload, deadline, a.headers, s.send, bytes(a.checkpoint),
            [ParentResult.from_proto(p) for p in a.parents],
        )
        att = _Attempt(key, ctx, self.tasks.get(job.kind))
        with s.cond:
            s.held[key] = att
            if s.stopping or self._stop_asked:
                return  # not started: handed back when the drain ends
            att.started = True
        self._start(s, att)

    def _start(self, s: _Session, att: _Attempt) -> None:
        task = att.task
        if task is None:
            self._done(s, att, self._fail(att, f"this worker has no task for kind {att.ctx.kind!r}", permanent=True))
        elif task.is_async:
            loop = self._loop
            assert loop is not None
            att.future = asyncio.run_coroutine_threadsafe(self._run_async(s, att, task), loop)
        else:
            assert self._pool is not None
            self._pool.submit(functools.partial(self._run_sync, s, att, task))

    def _args(self, att: _Attempt, task: _Task) -> Tuple[Any, ...]:
        if not task.with_payload:
            return (att.ctx,)
        if not task.json:
            return (att.ctx, att.ctx.payload)
        try:
            return (att.ctx, _json.loads(att.ctx.payload))
        except ValueError as e:
            raise Permanent(f"payload is not JSON: {e}") from e

    def _run_sync(self, s: _Session, att: _Attempt, task: _Task) -> None:
        try:
            report = self._complete(att, task.fn(*self._args(att, task)))
        except BaseException as e:  # every failure is reported
            report = self._failure(att, e)
        self._done(s, att, report)

    async def _run_async(self, s: _Session, att: _Attempt, task: _Task) -> None:
        try:
            report = self._complete(att, await task.fn(*self._args(att, task)))
        except asyncio.CancelledError:
            if att.ctx.cancelled.is_set():
                return  # cancelled by jobd, or given up: no report
            report = self._fail(att, "cancelled")
        except BaseException as e:
            report = self._failure(att, e)
        self._done(s, att, report)

    def _complete(self, att: _Attempt, result: Payload) -> pb.WorkerMessage:
        return pb.WorkerMessage(complete=pb.Complete(job_id=att.key[0], attempt=att.key[1], result=encode_payload(result)))

    def _fail(self, att: _Attempt, error: str, *, permanent: bool = False, after: Optional[float] = None) -> pb.WorkerMessage:
        f = pb.Fail(job_id=att.key[0], attempt=att.key[1], error=error, permanent=permanent)
        if after is not None:
            f.retry_after.CopyFrom(_duration(after))
        return pb.WorkerMessage(fail=f)

    def _failure(self, att: _Attempt, e: BaseException) -> pb.WorkerMessage:
        if isinstance(e, Permanent):
            return self._fail(att, str(e) or "permanent failure", permanent=True)
        if isinstance(e, RetryLater):
            return self._fail(att, str(e) or "retry later", after=e.after)
        if not att.ctx.cancelled.is_set():
            log.warning("job %s attempt %d failed", att.key[0], att.key[1], exc_info=e)
        return self._fail(att, _error_text(e))

    def _done(self, s: _Session, att: _Attempt, report: pb.WorkerMessage) -> None:
        """An attempt finished: report it, once, if it is still ours."""
        with s.cond:
            if s.held.get(att.key) is not att or s.closed:
                att.ctx._out.end(send=False)
                log.debug("job %s attempt %d finished after it was given up: not reported", *att.key)
                return
            att.ctx._out.end(send=True)  # its last progress and lines go before the report
            if s.stopping:  # held back: sent with the others when the drain ends
                att.report = report
                s.cond.notify_all()
                return
            del s.held[att.key]
            s.send(report)
        self._count(report)

    def _count(self, report: pb.WorkerMessage) -> None:
        with self._lock:
            self.stats["completed" if report.HasField("complete") else "failed"] += 1

    def _cancel(self, s: _Session, key: Tuple[str, int], reason: str) -> None:
        with s.cond:
            att = s.held.pop(key, None)
            s.cond.notify_all()
        if att is not None:
            log.info("job %s attempt %d cancelled by jobd: %s", key[0], key[1], reason)
            self._stop_attempt(att)

    @staticmethod
    def _stop_attempt(att: _Attempt) -> None:
        att.ctx._out.end(send=False)
        att.ctx.cancelled.set()
        if att.future is not None:
            att.future.cancel()  # thread-safe: cancels the task on its loop

    def _abandon(self, s: _Session) -> None:
        """The session is over (s.cond held): jobd retries what it held."""
        if s.held:
            log.info("session over with %d jobs held: jobd retries them", len(s.held))
        for att in s.held.values():
            self._stop_attempt(att)
        s.held.clear()
        s.close()

    def _drain(self, s: _Session) -> None:
        """A local stop with the session open. Reports are held back, so
        jobd's room for this session never frees and nothing new comes; the
        running jobs get up to `drain_timeout`, then are cancelled (and
        CANCEL_GRACE to return); then every report goes at once, what never
        started or did not finish is handed back (Fail, retried after
        HANDBACK_RETRY_AFTER), and our side of the stream closes."""

        def running() -> List[_Attempt]:
            return [a for a in s.held.values() if a.started and a.report is None]

        with s.cond:
            s.stopping = True
            log.info("stopping: %d jobs running, up to %.1f s to finish", len(running()), self.drain_timeout)
            deadline = time.monotonic() + self.drain_timeout
            while running() and not s.ended.is_set() and not self._forced:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.cond.wait(left)
            late = running()
            if late and not s.ended.is_set():
                log.warning("stopping: %d jobs not finished: cancelling them", len(late))
                for att in late:
                    self._stop_attempt(att)
                grace = time.monotonic() + (0.0 if self._forced else CANCEL_GRACE)
                while running() and not s.ended.is_set() and time.monotonic() < grace:
                    s.cond.wait(grace - time.monotonic())
            if s.ended.is_set():
                return  # the session broke: nothing can be reported any more
            reports = 0
            for att in list(s.held.values()):
                if att.report is not None:
                    self._count(att.report)
                    s.send(att.report)
                    reports += 1
                else:
                    self._stop_attempt(att)
                    with self._lock:
                        self.stats["handed_back"] += 1
                    why = "handed back unfinished" if att.started else "handed back before it started"
                    s.send(self._fail(att, f"worker stopping: {why}", after=HANDBACK_RETRY_AFTER))
            log.info("stopping: %d reports sent, %d jobs handed back", reports, len(s.held) - reports)
            s.held.clear()
            s.close()  # ends our side; jobd acks the reports, then ends its side
        s.ended.wait(1.0 if self._forced else ACK_WAIT)
