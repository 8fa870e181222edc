//! Every refusal the API can answer, mapped to a gRPC status in one place.
//! Client mistakes get their own variants and codes with rich details;
//! unknown causes become INTERNAL with the detail in the log only.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::engine::EngineError;
use crate::job::JobState;
use crate::log_limit::LogLimit;
use crate::store::StoreError;

/// How long a client told RESOURCE_EXHAUSTED should wait before retrying.
pub const RETRY_AFTER_FULL: Duration = Duration::from_secs(1);

/// One bad field: `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// `hint`: what to write instead (see [`crate::suggest::hint`]), or
    /// empty.
    #[error("kind {kind:?} is not configured{hint}")]
    UnknownKind { kind: String, hint: String },
    /// `hint`: as [`ApiError::UnknownKind`]'s.
    #[error("schedule {id:?} is not configured{hint}")]
    UnknownSchedule { id: String, hint: String },
    #[error("schedule {0:?} exists already (ids are shared by config and stored schedules)")]
    ScheduleExists(String),
    #[error(
        "schedule {0:?} is defined in the config ([[schedules]]): change it there, the API \
         changes only schedules created through it"
    )]
    ScheduleInConfig(String),
    #[error("schedule {0:?} cannot run on this instance: {1}; update or delete it")]
    ScheduleUnusable(String, String),
    #[error(
        "at most {max} schedules, config and stored together (config::MAX_SCHEDULES); \
         delete one first"
    )]
    TooManySchedules { max: usize },
    #[error(
        "idempotency key {key:?} is already used by job {existing_id} for a different request"
    )]
    IdempotencyConflict { key: String, existing_id: Uuid },
    #[error("backlog is full ({max} jobs waiting); retry later")]
    BacklogFull { max: u64 },
    #[error("too many open watchers {per} (at most {max}); retry later")]
    TooManyWatchers { max: usize, per: &'static str },
    #[error(
        "watch stream ended: its client read nothing for {} while events waited; \
         watch again with after_sequence",
        humantime::format_duration(*.idle)
    )]
    WatchStalled { idle: Duration },
    #[error(
        "resume position {after} is outside the window of changes kept (the last {} \
         changes, at most {}; the oldest position to resume after is {oldest}): list \
         the jobs, then watch from now (after = 0)",
        crate::events::CHANGE_LOG_EVENTS,
        humantime::format_duration(crate::events::CHANGE_LOG_AGE)
    )]
    PositionGone { after: u64, oldest: u64 },
    #[error("too many worker sessions (at most {max}); retry later")]
    TooManySessions { max: usize },
    #[error("this client (token, or IP address without auth) has {max} worker sessions open already (workers.max_sessions_per_client)")]
    TooManySessionsPerClient { max: usize },
    #[error("jobd is draining and takes no new jobs; retry on another instance")]
    Draining,
    #[error("disk reserve reached: {0}; no new jobs until space is freed")]
    DiskReserve(String),
    #[error("job {id} has already {state}; it cannot be cancelled")]
    AlreadyFinished { id: Uuid, state: JobState },
    #[error("store unavailable; retry later")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

fn describe(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument(vec![Violation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Draining => ApiError::Draining,
            EngineError::DiskReserve(why) => ApiError::DiskReserve(why),
            EngineError::TooManyWatchers { max } => {
                ApiError::TooManyWatchers { max, per: "in all" }
            }
            EngineError::NotFound(id) => ApiError::NotFound(id),
            EngineError::UnknownKind(kind) => ApiError::UnknownKind {
                kind,
                hint: String::new(),
            },
            EngineError::UnknownSchedule(id) => ApiError::UnknownSchedule {
                id,
                hint: String::new(),
            },
            EngineError::ScheduleExists(id) => ApiError::ScheduleExists(id),
            EngineError::ScheduleInConfig(id) => ApiError::ScheduleInConfig(id),
            EngineError::ScheduleUnusable(id, why) => ApiError::ScheduleUnusable(id, why),
            EngineError::TooManySchedules { max } => ApiError::TooManySchedules { max },
            EngineError::UnknownParent(id) => {
                ApiError::invalid("depends_on", format!("job {id} not found"))
            }
            EngineError::BacklogFull { max } => ApiError::BacklogFull { max },
            EngineError::KeyConflict { key, existing_id } => {
                ApiError::IdempotencyConflict { key, existing_id }
            }
            EngineError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => ApiError::Unavailable(d.to_string()),
            StoreError::Corrupt(d) | StoreError::Internal(d) => ApiError::Internal(d.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(violations) => {
                let mut d = ErrorDetails::new();
                for v in violations {
                    d.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, msg, d)
            }
            ApiError::NotFound(_)
            | ApiError::UnknownKind { .. }
            | ApiError::UnknownSchedule { .. } => Status::not_found(msg),
            ApiError::IdempotencyConflict { key, existing_id } => {
                let d = ErrorDetails::with_error_info(
                    "IDEMPOTENCY_KEY_REUSED",
                    "jobd",
                    [
                        ("job_id".to_string(), existing_id.to_string()),
                        ("idempotency_key".to_string(), key),
                    ],
                );
                Status::with_error_details(Code::AlreadyExists, msg, d)
            }
            ApiError::BacklogFull { .. }
            | ApiError::TooManyWatchers { .. }
            | ApiError::TooManySessions { .. }
            | ApiError::TooManySessionsPerClient { .. } => {
                let d = ErrorDetails::with_retry_info(Some(RETRY_AFTER_FULL));
                Status::with_error_details(Code::ResourceExhausted, msg, d)
            }
            // Not UNAVAILABLE: that tells clients to retry at once, and
            // this client is the cause.
            ApiError::WatchStalled { .. } => Status::resource_exhausted(msg),
            ApiError::Draining | ApiError::DiskReserve(_) => Status::unavailable(msg),
            ApiError::PositionGone { .. } => Status::out_of_range(msg),
            ApiError::AlreadyFinished { .. }
            | ApiError::ScheduleInConfig(_)
            | ApiError::ScheduleUnusable(..) => Status::failed_precondition(msg),
            ApiError::ScheduleExists(_) => Status::already_exists(msg),
            // No retry info: waiting does not make room.
            ApiError::TooManySchedules { .. } => Status::resource_exhausted(msg),
            ApiError::Unavailable(detail) => {
                if let Some(suppressed) = UNAVAILABLE_LOG.admit() {
                    tracing::warn!(%detail, suppressed, "store unavailable");
                }
                Status::unavailable(msg)
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal(msg)
            }
        }
    }
}

/// One "store unavailable" line per 5 s at most: on a full disk every
/// Submit is refused, and a line per refusal would fill the log too.
static UNAVAILABLE_LOG: LogLimit = LogLimit::new();

/// The same refusal as a `google.rpc.Status` message, for SubmitBatch results.
pub fn to_rpc_status(e: ApiError) -> tonic_types::pb::Status {
    let status = Status::from(e);
    let details = status.details();
    if !details.is_empty() {
        if let Ok(s) = <tonic_types::pb::Status as prost::Message>::decode(details) {
            return s;
        }
    }
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;

    #[test]
    fn log_limit_admits_one_line_per_period() {
        let l = LogLimit::new();
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
    }
}
