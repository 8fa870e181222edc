import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_RETRY_WAIT: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_WAITING: _ClassVar[JobState]

class DependencyFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPENDENCY_FAILURE_UNSPECIFIED: _ClassVar[DependencyFailure]
    DEPENDENCY_FAILURE_CANCEL: _ClassVar[DependencyFailure]
    DEPENDENCY_FAILURE_RUN: _ClassVar[DependencyFailure]

class DedupMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEDUP_MODE_UNSPECIFIED: _ClassVar[DedupMode]
    DEDUP_MODE_KEEP: _ClassVar[DedupMode]
    DEDUP_MODE_REPLACE: _ClassVar[DedupMode]
    DEDUP_MODE_DEBOUNCE: _ClassVar[DedupMode]

class DedupOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEDUP_OUTCOME_UNSPECIFIED: _ClassVar[DedupOutcome]
    DEDUP_OUTCOME_CREATED: _ClassVar[DedupOutcome]
    DEDUP_OUTCOME_KEPT: _ClassVar[DedupOutcome]
    DEDUP_OUTCOME_REPLACED: _ClassVar[DedupOutcome]
    DEDUP_OUTCOME_DEBOUNCED: _ClassVar[DedupOutcome]

class ListJobsOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIST_JOBS_ORDER_UNSPECIFIED: _ClassVar[ListJobsOrder]
    LIST_JOBS_ORDER_OLDEST_FIRST: _ClassVar[ListJobsOrder]
    LIST_JOBS_ORDER_NEWEST_FIRST: _ClassVar[ListJobsOrder]

class ScheduleSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_SOURCE_UNSPECIFIED: _ClassVar[ScheduleSource]
    SCHEDULE_SOURCE_CONFIG: _ClassVar[ScheduleSource]
    SCHEDULE_SOURCE_API: _ClassVar[ScheduleSource]

class ScheduleOverlap(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_OVERLAP_UNSPECIFIED: _ClassVar[ScheduleOverlap]
    SCHEDULE_OVERLAP_ALLOW: _ClassVar[ScheduleOverlap]
    SCHEDULE_OVERLAP_SKIP: _ClassVar[ScheduleOverlap]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_RETRY_WAIT: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_WAITING: JobState
DEPENDENCY_FAILURE_UNSPECIFIED: DependencyFailure
DEPENDENCY_FAILURE_CANCEL: DependencyFailure
DEPENDENCY_FAILURE_RUN: DependencyFailure
DEDUP_MODE_UNSPECIFIED: DedupMode
DEDUP_MODE_KEEP: DedupMode
DEDUP_MODE_REPLACE: DedupMode
DEDUP_MODE_DEBOUNCE: DedupMode
DEDUP_OUTCOME_UNSPECIFIED: DedupOutcome
DEDUP_OUTCOME_CREATED: DedupOutcome
DEDUP_OUTCOME_KEPT: DedupOutcome
DEDUP_OUTCOME_REPLACED: DedupOutcome
DEDUP_OUTCOME_DEBOUNCED: DedupOutcome
LIST_JOBS_ORDER_UNSPECIFIED: ListJobsOrder
LIST_JOBS_ORDER_OLDEST_FIRST: ListJobsOrder
LIST_JOBS_ORDER_NEWEST_FIRST: ListJobsOrder
SCHEDULE_SOURCE_UNSPECIFIED: ScheduleSource
SCHEDULE_SOURCE_CONFIG: ScheduleSource
SCHEDULE_SOURCE_API: ScheduleSource
SCHEDULE_OVERLAP_UNSPECIFIED: ScheduleOverlap
SCHEDULE_OVERLAP_ALLOW: ScheduleOverlap
SCHEDULE_OVERLAP_SKIP: ScheduleOverlap

class GetJobGraphRequest(_message.Message):
    __slots__ = ("id", "depth")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    depth: int
    def __init__(self, id: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class GetJobGraphResponse(_message.Message):
    __slots__ = ("jobs", "edges", "truncated")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    edges: _containers.RepeatedCompositeFieldContainer[JobEdge]
    truncated: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[JobEdge, _Mapping]]] = ..., truncated: bool = ...) -> None: ...

class JobEdge(_message.Message):
    __slots__ = ("parent", "child")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    parent: str
    child: str
    def __init__(self, parent: _Optional[str] = ..., child: _Optional[str] = ...) -> None: ...

class ParentResult(_message.Message):
    __slots__ = ("id", "kind", "state", "result", "result_omitted")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_OMITTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: JobState
    result: bytes
    result_omitted: bool
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., result: _Optional[bytes] = ..., result_omitted: bool = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("percent", "message", "details", "updated_at")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    percent: int
    message: str
    details: bytes
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, percent: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("id", "after", "limit")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    id: str
    after: int
    limit: int
    def __init__(self, id: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class GetLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class WatchLogsRequest(_message.Message):
    __slots__ = ("id", "after")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    after: int
    def __init__(self, id: _Optional[str] = ..., after: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("seq", "attempt", "time", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    attempt: int
    time: _timestamp_pb2.Timestamp
    text: str
    def __init__(self, seq: _Optional[int] = ..., attempt: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "state", "attempt", "max_attempts", "priority", "idempotency_key", "labels", "created_at", "updated_at", "started_at", "finished_at", "next_attempt_at", "last_error", "result", "payload_size", "timeout", "result_truncated", "ordering_key", "traceparent", "progress", "checkpoint_size", "parent_ids", "waiting_on", "on_dependency_failure", "attempts", "start_before", "dedup_key", "fairness_key")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ORDERING_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    WAITING_ON_FIELD_NUMBER: _ClassVar[int]
    ON_DEPENDENCY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    START_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: JobState
    attempt: int
    max_attempts: int
    priority: int
    idempotency_key: str
    labels: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    next_attempt_at: _timestamp_pb2.Timestamp
    last_error: str
    result: bytes
    payload_size: int
    timeout: _duration_pb2.Duration
    result_truncated: bool
    ordering_key: str
    traceparent: str
    progress: JobProgress
    checkpoint_size: int
    parent_ids: _containers.RepeatedScalarFieldContainer[str]
    waiting_on: int
    on_dependency_failure: DependencyFailure
    attempts: _containers.RepeatedCompositeFieldContainer[JobAttempt]
    start_before: _timestamp_pb2.Timestamp
    dedup_key: str
    fairness_key: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., result: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., result_truncated: bool = ..., ordering_key: _Optional[str] = ..., traceparent: _Optional[str] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., checkpoint_size: _Optional[int] = ..., parent_ids: _Optional[_Iterable[str]] = ..., waiting_on: _Optional[int] = ..., on_dependency_failure: _Optional[_Union[DependencyFailure, str]] = ..., attempts: _Optional[_Iterable[_Union[JobAttempt, _Mapping]]] = ..., start_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dedup_key: _Optional[str] = ..., fairness_key: _Optional[str] = ...) -> None: ...

class JobAttempt(_message.Message):
    __slots__ = ("attempt", "started_at", "finished_at", "outcome", "error", "worker")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    outcome: str
    error: str
    worker: str
    def __init__(self, attempt: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("kind", "payload", "idempotency_key", "priority", "max_attempts", "timeout", "run_at", "labels", "ordering_key", "depends_on", "on_dependency_failure", "start_before", "dedup", "fairness_key")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ORDERING_KEY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    ON_DEPENDENCY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    START_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DEDUP_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    payload: bytes
    idempotency_key: str
    priority: int
    max_attempts: int
    timeout: _duration_pb2.Duration
    run_at: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    ordering_key: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    on_dependency_failure: DependencyFailure
    start_before: _timestamp_pb2.Timestamp
    dedup: Dedup
    fairness_key: str
    def __init__(self, kind: _Optional[str] = ..., payload: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., ordering_key: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., on_dependency_failure: _Optional[_Union[DependencyFailure, str]] = ..., start_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dedup: _Optional[_Union[Dedup, _Mapping]] = ..., fairness_key: _Optional[str] = ...) -> None: ...

class Dedup(_message.Message):
    __slots__ = ("key", "mode", "window", "max_wait")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    mode: DedupMode
    window: _duration_pb2.Duration
    max_wait: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., mode: _Optional[_Union[DedupMode, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("job", "deduplicated", "dedup_outcome")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    DEDUP_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    job: Job
    deduplicated: bool
    dedup_outcome: DedupOutcome
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., deduplicated: bool = ..., dedup_outcome: _Optional[_Union[DedupOutcome, str]] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SubmitRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SubmitRequest, _Mapping]]] = ...) -> None: ...

class SubmitResult(_message.Message):
    __slots__ = ("accepted", "error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: SubmitResponse
    error: _status_pb2.Status
    def __init__(self, accepted: _Optional[_Union[SubmitResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitResult, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("job", "payload_preview")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_PREVIEW_FIELD_NUMBER: _ClassVar[int]
    job: Job
    payload_preview: bytes
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., payload_preview: _Optional[bytes] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ("id", "after_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_sequence: int
    def __init__(self, id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job", "sequence")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job: Job
    sequence: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "kind", "page_size", "page_token", "ordering_key", "labels", "order")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDERING_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    kind: str
    page_size: int
    page_token: str
    ordering_key: str
    labels: _containers.ScalarMap[str, str]
    order: ListJobsOrder
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., kind: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., ordering_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., order: _Optional[_Union[ListJobsOrder, str]] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("kind", "state", "after")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    kind: str
    state: JobState
    after: int
    def __init__(self, kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., after: _Optional[int] = ...) -> None: ...

class WatchJobsResponse(_message.Message):
    __slots__ = ("job", "position")
    JOB_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job: Job
    position: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "complete", "fail", "progress", "log", "touch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    complete: Complete
    fail: Fail
    progress: Progress
    log: Log
    touch: Touch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., complete: _Optional[_Union[Complete, _Mapping]] = ..., fail: _Optional[_Union[Fail, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., touch: _Optional[_Union[Touch, _Mapping]] = ...) -> None: ...

class Touch(_message.Message):
    __slots__ = ("job_id", "attempt", "extend_by", "checkpoint")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    extend_by: _duration_pb2.Duration
    checkpoint: bytes
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., extend_by: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., checkpoint: _Optional[bytes] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_id", "attempt", "percent", "message", "details")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    percent: int
    message: str
    details: bytes
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., percent: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ...) -> None: ...

class Log(_message.Message):
    __slots__ = ("job_id", "attempt", "lines")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lines: _Optional[_Iterable[str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "kinds", "max_in_flight", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    max_in_flight: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, worker_id: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ..., max_in_flight: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Complete(_message.Message):
    __slots__ = ("job_id", "attempt", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    result: bytes
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[bytes] = ...) -> None: ...

class Fail(_message.Message):
    __slots__ = ("job_id", "attempt", "error", "permanent", "retry_after")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    error: str
    permanent: bool
    retry_after: _duration_pb2.Duration
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., error: _Optional[str] = ..., permanent: bool = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "ack", "drain", "touch_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    TOUCH_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: Assign
    cancel: CancelJob
    ack: ReportAck
    drain: Drain
    touch_ack: TouchAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[Assign, _Mapping]] = ..., cancel: _Optional[_Union[CancelJob, _Mapping]] = ..., ack: _Optional[_Union[ReportAck, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., touch_ack: _Optional[_Union[TouchAck, _Mapping]] = ...) -> None: ...

class TouchAck(_message.Message):
    __slots__ = ("job_id", "attempt", "deadline", "stale")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    deadline: _timestamp_pb2.Timestamp
    stale: bool
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stale: bool = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Assign(_message.Message):
    __slots__ = ("job", "payload", "deadline", "headers", "checkpoint", "parents")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    job: Job
    payload: bytes
    deadline: _timestamp_pb2.Timestamp
    headers: _containers.ScalarMap[str, str]
    checkpoint: bytes
    parents: _containers.RepeatedCompositeFieldContainer[ParentResult]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., payload: _Optional[bytes] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., checkpoint: _Optional[bytes] = ..., parents: _Optional[_Iterable[_Union[ParentResult, _Mapping]]] = ...) -> None: ...

class CancelJob(_message.Message):
    __slots__ = ("job_id", "attempt", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("job_id", "attempt", "stale")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    stale: bool
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stale: bool = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleStatus]
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleStatus, _Mapping]]] = ...) -> None: ...

class ScheduleStatus(_message.Message):
    __slots__ = ("id", "kind", "cron", "timezone", "next_fire_at", "paused", "last_job_id", "source", "payload", "labels", "overlap", "catchup")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_AT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    cron: str
    timezone: str
    next_fire_at: _timestamp_pb2.Timestamp
    paused: bool
    last_job_id: str
    source: ScheduleSource
    payload: str
    labels: _containers.ScalarMap[str, str]
    overlap: ScheduleOverlap
    catchup: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., next_fire_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused: bool = ..., last_job_id: _Optional[str] = ..., source: _Optional[_Union[ScheduleSource, str]] = ..., payload: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., overlap: _Optional[_Union[ScheduleOverlap, str]] = ..., catchup: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ScheduleDefinition(_message.Message):
    __slots__ = ("id", "kind", "cron", "timezone", "payload", "labels", "overlap", "catchup")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    cron: str
    timezone: str
    payload: str
    labels: _containers.ScalarMap[str, str]
    overlap: ScheduleOverlap
    catchup: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., payload: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., overlap: _Optional[_Union[ScheduleOverlap, str]] = ..., catchup: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleDefinition
    def __init__(self, schedule: _Optional[_Union[ScheduleDefinition, _Mapping]] = ...) -> None: ...

class CreateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleStatus
    def __init__(self, schedule: _Optional[_Union[ScheduleStatus, _Mapping]] = ...) -> None: ...

class UpdateScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleDefinition
    def __init__(self, schedule: _Optional[_Union[ScheduleDefinition, _Mapping]] = ...) -> None: ...

class UpdateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleStatus
    def __init__(self, schedule: _Optional[_Union[ScheduleStatus, _Mapping]] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TriggerScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class TriggerScheduleResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleStatus
    def __init__(self, schedule: _Optional[_Union[ScheduleStatus, _Mapping]] = ...) -> None: ...

class ResumeScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleStatus
    def __init__(self, schedule: _Optional[_Union[ScheduleStatus, _Mapping]] = ...) -> None: ...

class PauseKindRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class PauseKindResponse(_message.Message):
    __slots__ = ("kind_status",)
    KIND_STATUS_FIELD_NUMBER: _ClassVar[int]
    kind_status: KindStatus
    def __init__(self, kind_status: _Optional[_Union[KindStatus, _Mapping]] = ...) -> None: ...

class ResumeKindRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ResumeKindResponse(_message.Message):
    __slots__ = ("kind_status",)
    KIND_STATUS_FIELD_NUMBER: _ClassVar[int]
    kind_status: KindStatus
    def __init__(self, kind_status: _Optional[_Union[KindStatus, _Mapping]] = ...) -> None: ...

class ListKindsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKindsResponse(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedCompositeFieldContainer[KindStatus]
    def __init__(self, kinds: _Optional[_Iterable[_Union[KindStatus, _Mapping]]] = ...) -> None: ...

class KindStatus(_message.Message):
    __slots__ = ("kind", "handler", "paused", "queued", "running", "retry_wait", "failed", "concurrency", "connected_workers")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RETRY_WAIT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    handler: str
    paused: bool
    queued: int
    running: int
    retry_wait: int
    failed: int
    concurrency: int
    connected_workers: int
    def __init__(self, kind: _Optional[str] = ..., handler: _Optional[str] = ..., paused: bool = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., retry_wait: _Optional[int] = ..., failed: _Optional[int] = ..., concurrency: _Optional[int] = ..., connected_workers: _Optional[int] = ...) -> None: ...

class RetryJobsRequest(_message.Message):
    __slots__ = ("ids", "filter", "dry_run", "limit")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: RetryFilter
    dry_run: bool
    limit: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[RetryFilter, _Mapping]] = ..., dry_run: bool = ..., limit: _Optional[int] = ...) -> None: ...

class RetryFilter(_message.Message):
    __slots__ = ("state", "kind", "labels", "finished_after", "finished_before")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AFTER_FIELD_NUMBER: _ClassVar[int]
    FINISHED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    kind: str
    labels: _containers.ScalarMap[str, str]
    finished_after: _timestamp_pb2.Timestamp
    finished_before: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., kind: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., finished_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetryJobsResponse(_message.Message):
    __slots__ = ("matched", "retried", "ids", "skipped", "more")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    matched: int
    retried: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedCompositeFieldContainer[RetrySkipped]
    more: bool
    def __init__(self, matched: _Optional[int] = ..., retried: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[_Union[RetrySkipped, _Mapping]]] = ..., more: bool = ...) -> None: ...

class RetrySkipped(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerSession]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerSession, _Mapping]]] = ...) -> None: ...

class WorkerSession(_message.Message):
    __slots__ = ("session_id", "worker_id", "kinds", "in_flight", "max_in_flight", "connected_at", "last_seen", "address", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    worker_id: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    in_flight: int
    max_in_flight: int
    connected_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    address: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ..., in_flight: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
