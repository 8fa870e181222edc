//! Domain types to and from their protobuf forms.

use crate::job::{Job, JobState, Micros};
use crate::proto;

pub fn timestamp(m: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: m.div_euclid(1_000_000),
        nanos: (m.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn state_to_proto(s: JobState) -> proto::JobState {
    match s {
        JobState::Queued => proto::JobState::Queued,
        JobState::Running => proto::JobState::Running,
        JobState::RetryWait => proto::JobState::RetryWait,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
    }
}

/// `None` for UNSPECIFIED (no filter).
pub fn state_from_proto(s: proto::JobState) -> Option<JobState> {
    Some(match s {
        proto::JobState::Unspecified => return None,
        proto::JobState::Queued => JobState::Queued,
        proto::JobState::Running => JobState::Running,
        proto::JobState::RetryWait => JobState::RetryWait,
        proto::JobState::Succeeded => JobState::Succeeded,
        proto::JobState::Failed => JobState::Failed,
        proto::JobState::Cancelled => JobState::Cancelled,
    })
}

pub fn job_to_proto(j: &Job) -> proto::Job {
    proto::Job {
        id: j.id.to_string(),
        kind: j.kind.clone(),
        state: state_to_proto(j.state) as i32,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        priority: j.priority,
        idempotency_key: j.idempotency_key.clone().unwrap_or_default(),
        labels: j
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: Some(timestamp(j.created_at)),
        updated_at: Some(timestamp(j.updated_at)),
        started_at: j.started_at.map(timestamp),
        finished_at: j.finished_at.map(timestamp),
        next_attempt_at: j.next_attempt_at.map(timestamp),
        last_error: j.last_error.clone(),
        result: j.result.to_vec(),
        payload_size: j.payload.len() as u64,
        timeout: prost_types::Duration::try_from(j.timeout).ok(),
    }
}

pub fn event(j: &Job) -> proto::JobEvent {
    proto::JobEvent {
        job: Some(job_to_proto(j)),
        sequence: j.sequence,
    }
}
