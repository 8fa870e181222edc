"""jobd: the Python SDK of the jobd job daemon.

    import jobd

    client = jobd.Client("127.0.0.1:50051")     # or Client(): JOBD_ADDR, JOBD_TOKEN
    job = client.submit("resize", {"w": 100})
    job = client.wait(job.id, timeout=60)
    job.state == "SUCCEEDED"

    # A workflow: parents and a callback that runs after all of them
    # ("$N": entry N of the same batch) and receives their results.
    client.submit_batch([jobd.Submit("fetch", u) for u in urls]
                        + [jobd.Submit("report", depends_on=[f"${i}" for i in range(len(urls))],
                                       on_dependency_failure="run")])

    worker = jobd.Worker("127.0.0.1:50051", max_in_flight=8)

    @worker.task("resize")
    def resize(ctx: jobd.Context, payload: bytes):
        return {"ok": True}

    @worker.task("report")
    def report(ctx: jobd.Context, payload: bytes):
        return [p.json() for p in ctx.parents]     # parents' results, in depends_on order

    worker.run()

`jobd.aio.Client` is the asyncio client. Errors are `jobd.JobdError`
subclasses, one per gRPC status code. The generated protobuf code is
`jobd.v1` (`jobd_pb2`, `jobd_pb2_grpc`).
"""
from ._conn import TLS
from .client import Client
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JobdError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .types import (
    Dedup,
    Job,
    JobAttempt,
    JobChange,
    JobEdge,
    JobEvent,
    JobGraph,
    KindStatus,
    LogLine,
    ParentResult,
    Progress,
    RetryResult,
    State,
    Submit,
    SubmitResult,
    WorkerSession,
)
from .worker import Context, Permanent, RetryLater, Worker
from . import aio

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Worker",
    "Context",
    "Permanent",
    "RetryLater",
    "TLS",
    "State",
    "Job",
    "JobAttempt",
    "JobEvent",
    "JobChange",
    "JobGraph",
    "JobEdge",
    "ParentResult",
    "Submit",
    "SubmitResult",
    "Dedup",
    "RetryResult",
    "KindStatus",
    "WorkerSession",
    "Progress",
    "LogLine",
    "JobdError",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "aio",
    "__version__",
]
