"""Typed errors: one `JobdError` subclass per gRPC status code.

jobd answers a refused request with a status code and, for some codes, rich
details (`google.rpc.Status` in the `grpc-status-details-bin` trailer, or
the `error` of a SubmitBatch entry). They are decoded here:

| code | class | details read |
|---|---|---|
| INVALID_ARGUMENT | `InvalidArgument` | `google.rpc.BadRequest`: `.field`, `.violations` |
| NOT_FOUND | `NotFound` | |
| ALREADY_EXISTS | `AlreadyExists` | `google.rpc.ErrorInfo` metadata `job_id`: `.existing_id` |
| RESOURCE_EXHAUSTED | `ResourceExhausted` | `google.rpc.RetryInfo`: `.retry_after` (seconds) |
| FAILED_PRECONDITION | `FailedPrecondition` | |
| UNAVAILABLE | `Unavailable` | |
| UNAUTHENTICATED | `Unauthenticated` | |
| PERMISSION_DENIED | `PermissionDenied` | |

and the other codes (`OutOfRange`, `DeadlineExceeded`, `Cancelled`,
`Internal`, ...) for completeness. `Timeout` is what `Client.wait` raises
when the job is not finished in time.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "JobdError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "Timeout",
    "error_from_rpc",
    "error_from_status",
]

_DETAILS_KEY = "grpc-status-details-bin"


class JobdError(Exception):
    """A request jobd (or the connection to it) refused.

    `code` is the gRPC status code name ("NOT_FOUND", ...), `message` the
    server's text, `details` the decoded `google.rpc` detail messages.
    The detail fields below are set on whichever error carries them (None
    otherwise); each subclass documents the one it always has.
    """

    code: str = "UNKNOWN"

    def __init__(
        self,
        message: str = "",
        *,
        details: Sequence[Any] = (),
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: List[Any] = list(details)
        #: BadRequest: (field, description) pairs.
        self.violations: List[Tuple[str, str]] = []
        #: The first BadRequest field, e.g. "kind" or "requests[3].max_attempts".
        self.field: Optional[str] = None
        #: RetryInfo's delay, in seconds.
        self.retry_after: Optional[float] = None
        #: ErrorInfo: reason and metadata.
        self.reason: Optional[str] = None
        self.metadata: Dict[str, str] = {}
        #: ErrorInfo metadata "job_id": the job that holds an idempotency key.
        self.existing_id: Optional[str] = None
        for d in self.details:
            if isinstance(d, error_details_pb2.BadRequest):
                self.violations.extend((v.field, v.description) for v in d.field_violations)
            elif isinstance(d, error_details_pb2.RetryInfo):
                self.retry_after = d.retry_delay.seconds + d.retry_delay.nanos / 1e9
            elif isinstance(d, error_details_pb2.ErrorInfo):
                self.reason = d.reason
                self.metadata = dict(d.metadata)
                self.existing_id = self.metadata.get("job_id")
        if self.violations:
            self.field = self.violations[0][0]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self):  # picklable: errors may cross process pools
        blobs = [(d.DESCRIPTOR.full_name, d.SerializeToString()) for d in self.details if d.DESCRIPTOR.full_name in _DETAIL_TYPES]
        return (_rebuild, (type(self), self.message, self.code, blobs))


def _rebuild(cls, message, code, blobs):
    e = cls(message, details=[_DETAIL_TYPES[name].FromString(blob) for name, blob in blobs])
    e.code = code
    return e


class Cancelled(JobdError):
    code = "CANCELLED"


class Unknown(JobdError):
    code = "UNKNOWN"


class InvalidArgument(JobdError):
    """A malformed or missing field, an unknown kind, a payload over the
    limit. `.field` names the first bad field; `.violations` lists them all."""

    code = "INVALID_ARGUMENT"


class DeadlineExceeded(JobdError, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class NotFound(JobdError):
    """No such job (or kind, or schedule)."""

    code = "NOT_FOUND"


class AlreadyExists(JobdError):
    """The idempotency key is held by another job for a different request;
    `.existing_id` is that job's id."""

    code = "ALREADY_EXISTS"


class PermissionDenied(JobdError):
    """The token's role may not call this (e.g. a `submit` token cancelling)."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(JobdError):
    """A bound was reached (backlog, watchers, submit rate). `.retry_after`
    is how long jobd asks the client to wait, in seconds (None when it did
    not say). `Client.submit` retries these by itself."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(JobdError):
    """E.g. cancelling a job that already finished."""

    code = "FAILED_PRECONDITION"


class Aborted(JobdError):
    code = "ABORTED"


class OutOfRange(JobdError):
    code = "OUT_OF_RANGE"


class Unimplemented(JobdError):
    code = "UNIMPLEMENTED"


class Internal(JobdError):
    code = "INTERNAL"


class Unavailable(JobdError):
    """jobd is draining or unreachable, or its store is unavailable."""

    code = "UNAVAILABLE"


class DataLoss(JobdError):
    code = "DATA_LOSS"


class Unauthenticated(JobdError):
    """Missing or wrong token."""

    code = "UNAUTHENTICATED"


class Timeout(DeadlineExceeded):
    """`Client.wait` gave up: the job was not finished in time. `.job` is
    the last snapshot seen (None if none came)."""

    code = "DEADLINE_EXCEEDED"

    def __init__(self, message: str = "", *, job: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.job = job


_BY_CODE: Dict[str, Type[JobdError]] = {
    c.code: c
    for c in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_BY_NUMBER: Dict[int, str] = {c.value[0]: c.name for c in grpc.StatusCode}
_DETAIL_TYPES = {
    t.DESCRIPTOR.full_name: t
    for t in (
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.ErrorInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.ResourceInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
    )
}


def _unpack(details) -> List[Any]:
    out: List[Any] = []
    for any_msg in details:
        name = any_msg.TypeName()
        t = _DETAIL_TYPES.get(name)
        if t is None:
            out.append(any_msg)
            continue
        m = t()
        any_msg.Unpack(m)
        out.append(m)
    return out


def _make(code_name: str, message: str, details: Sequence[Any]) -> JobdError:
    cls = _BY_CODE.get(code_name, JobdError)
    e = cls(message, details=details)
    if cls is JobdError:
        e.code = code_name
    return e


def error_from_status(status: status_pb2.Status) -> JobdError:
    """The error of a `google.rpc.Status` (a SubmitBatch entry's refusal)."""
    return _make(_BY_NUMBER.get(status.code, "UNKNOWN"), status.message, _unpack(status.details))


def _metadata_details(md) -> List[Any]:
    for key, value in md or ():
        if key == _DETAILS_KEY and isinstance(value, (bytes, bytearray)):
            try:
                return _unpack(status_pb2.Status.FromString(bytes(value)).details)
            except Exception:  # a broken trailer: no details, the code stands
                return []
    return []


def error_from_rpc(e: grpc.RpcError) -> JobdError:
    """The typed error of a failed gRPC call (sync or asyncio)."""
    try:
        code = e.code()  # type: ignore[attr-defined]
        message = e.details() or ""  # type: ignore[attr-defined]
        trailers = e.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:  # not a call error (e.g. a bare RpcError)
        return Unknown(str(e))
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    err = _make(name, message, _metadata_details(trailers))
    err.__cause__ = e
    return err
