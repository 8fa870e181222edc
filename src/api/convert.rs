//! Domain types to and from their protobuf forms.

use uuid::Uuid;

use crate::job::{Job, JobState, Micros};
use crate::proto;

pub fn timestamp(m: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: m.div_euclid(1_000_000),
        nanos: (m.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// See [`JobState::to_proto`].
pub fn state_to_proto(s: JobState) -> proto::JobState {
    s.to_proto()
}

/// `None` for UNSPECIFIED (no filter); see [`JobState::from_proto`].
pub fn state_from_proto(s: proto::JobState) -> Option<JobState> {
    JobState::from_proto(s)
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
        result_truncated: false,
        ordering_key: j.ordering_key.clone().unwrap_or_default(),
        fairness_key: j.fairness_key.clone(),
        traceparent: j
            .trace
            .as_ref()
            .map(|t| t.traceparent.clone())
            .unwrap_or_default(),
        progress: j.progress.as_ref().map(|p| proto::JobProgress {
            percent: p.percent,
            message: p.message.clone(),
            details: p.details.to_vec(),
            updated_at: Some(timestamp(p.updated_at)),
        }),
        checkpoint_size: j.checkpoint.len() as u64,
        start_before: j.start_before.map(timestamp),
        dedup_key: j.dedup_key.clone().unwrap_or_default(),
        parent_ids: j.parents.iter().map(Uuid::to_string).collect(),
        waiting_on: j.waiting_on,
        attempts: j
            .attempts
            .iter()
            .map(|a| proto::JobAttempt {
                attempt: a.attempt,
                started_at: Some(timestamp(a.started_at)),
                finished_at: Some(timestamp(a.finished_at)),
                outcome: a.outcome.clone(),
                error: a.error.clone(),
                worker: a.worker.clone(),
            })
            .collect(),
        // Unset for a job without parents (nothing to say).
        on_dependency_failure: match (j.parents.is_empty(), j.on_parent_failure) {
            (true, _) => proto::DependencyFailure::Unspecified,
            (false, crate::job::ParentFailure::Cancel) => proto::DependencyFailure::Cancel,
            (false, crate::job::ParentFailure::Run) => proto::DependencyFailure::Run,
        } as i32,
    }
}

/// One log line as the API returns it.
pub fn log_line_to_proto(l: &crate::job::LogLine) -> proto::LogLine {
    proto::LogLine {
        seq: l.seq,
        attempt: l.attempt,
        time: Some(timestamp(l.at)),
        text: l.text.clone(),
    }
}

/// [`job_to_proto`], cut to at most `max_bytes` encoded: a reply must never
/// fail on a stored job, whatever limits it was stored under. The result is
/// cut first (and `result_truncated` set); if that is not enough, the last
/// error too. Anything else is bounded by validation.
pub fn job_within(j: &Job, max_bytes: usize) -> proto::Job {
    use prost::Message;
    let mut p = job_to_proto(j);
    if p.encoded_len() <= max_bytes {
        return p;
    }
    p.result_truncated = true;
    // Cutting the excess always suffices: a shorter length prefix only
    // makes the message smaller still.
    let over = p.encoded_len().saturating_sub(max_bytes);
    let keep = p.result.len().saturating_sub(over);
    p.result.truncate(keep);
    let len = p.encoded_len();
    if len > max_bytes {
        let mut keep = p.last_error.len().saturating_sub(len - max_bytes);
        while !p.last_error.is_char_boundary(keep) {
            keep -= 1;
        }
        p.last_error.truncate(keep);
    }
    p
}

/// A WatchStatus event, its job cut like [`job_within`].
pub fn event_within(j: &Job, max_bytes: usize) -> proto::JobEvent {
    proto::JobEvent {
        job: Some(job_within(j, max_bytes)),
        sequence: j.sequence,
    }
}

/// A merge's outcome as the API says it.
pub fn dedup_outcome(o: crate::store::dedup::DedupOutcome) -> proto::DedupOutcome {
    use crate::store::dedup::DedupOutcome as D;
    match o {
        D::Created => proto::DedupOutcome::Created,
        D::Kept => proto::DedupOutcome::Kept,
        D::Replaced => proto::DedupOutcome::Replaced,
        D::Debounced => proto::DedupOutcome::Debounced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn job(result: usize, error: &str) -> Job {
        let mut j = crate::job::NewJob::example().into_job();
        j.result = vec![7u8; result].into();
        j.last_error = error.into();
        j
    }

    #[test]
    fn a_job_is_cut_to_fit_and_says_so() {
        let fits = job(100, "");
        let whole = job_to_proto(&fits).encoded_len();
        assert!(!job_within(&fits, whole).result_truncated);
        for max in [whole - 1, whole - 50, 120] {
            let p = job_within(&fits, max);
            assert!(p.result_truncated, "{max}");
            assert!(p.encoded_len() <= max, "{max}: {}", p.encoded_len());
            assert!(p.result.len() >= 100 - (whole - max) - 4);
        }
        // Nothing left to cut in the result: the error is cut, on a char
        // boundary.
        let p = job_within(&job(10, &"é".repeat(500)), 300);
        assert!(p.result.is_empty() && p.result_truncated);
        assert!(p.encoded_len() <= 300 && !p.last_error.is_empty());
    }
}
