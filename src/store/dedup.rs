//! Deduplication modes (`SubmitRequest.dedup`), the same rules in every
//! store: a job holds its dedup key while it has not started (QUEUED,
//! delayed or WAITING, attempt 0), and a submit naming a held key of its
//! kind merges into that job instead of creating one. Each store makes the
//! lookup and the merge one atomic step (memory: its lock; SQLite: the
//! writer; PostgreSQL: a partial unique index and a row lock).

use crate::job::{add_micros, DedupMode, Job, JobState, Micros, NewJob};

/// What a submit with a dedup key did (`SubmitResponse.dedup_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupOutcome {
    /// No job held the key: a new one was created.
    Created,
    /// KEEP: the job holding the key, unchanged.
    Kept,
    /// REPLACE: it took the new payload, labels and run_at.
    Replaced,
    /// DEBOUNCE: as REPLACE, its run_at moved to now + window (capped).
    Debounced,
}

/// Whether `job` still holds its dedup key: it has never started and can
/// still be merged into. (A job retried by RetryJobs lost its key.)
pub fn holds_key(job: &Job) -> bool {
    job.dedup_key.is_some()
        && job.attempt == 0
        && matches!(job.state, JobState::Queued | JobState::Waiting)
}

/// Merges `new` into `existing` (which [`holds_key`]) at `now`: the job as
/// it must be stored, or `None` when nothing changes (KEEP), with what
/// happened. Same id; the sequence moves so watchers see the change.
pub fn merge(existing: &Job, new: &NewJob, now: Micros) -> (Option<Job>, DedupOutcome) {
    // Never before the job's last change (another instance's clock, or a
    // merge earlier in the same microsecond).
    let now = now.max(existing.updated_at);
    let Some(d) = &new.dedup else {
        return (None, DedupOutcome::Kept);
    };
    let (run_at, outcome) = match d.mode {
        DedupMode::Keep => return (None, DedupOutcome::Kept),
        DedupMode::Replace => (new.run_at, DedupOutcome::Replaced),
        DedupMode::Debounce { window, max_wait } => (
            Some(debounced_run_at(existing.created_at, now, window, max_wait)),
            DedupOutcome::Debounced,
        ),
    };
    let mut job = existing.clone();
    job.payload = new.payload.clone();
    job.labels = new.labels.clone();
    // A WAITING job keeps no pending time: it is released when its parents
    // end, and then runs at once (run_at is a QUEUED job's).
    job.next_attempt_at = match job.state {
        JobState::Queued => run_at.filter(|t| *t > now),
        _ => job.next_attempt_at,
    };
    job.updated_at = now;
    job.sequence += 1;
    (Some(job), outcome)
}

/// DEBOUNCE's run_at for a job first submitted at `first`, submitted again
/// at `now`: `now + window`, never later than `first + max_wait`.
pub fn debounced_run_at(
    first: Micros,
    now: Micros,
    window: std::time::Duration,
    max_wait: Option<std::time::Duration>,
) -> Micros {
    let t = add_micros(now, window);
    match max_wait {
        Some(m) => t.min(add_micros(first, m)),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::job::Dedup;

    fn held(mode: DedupMode) -> (Job, NewJob) {
        let mut new = NewJob::example();
        new.dedup = Some(Dedup {
            key: "k".into(),
            mode,
        });
        let mut existing = new.clone().into_job();
        existing.created_at = 1_000_000;
        new.payload = bytes::Bytes::from_static(b"new");
        (existing, new)
    }

    #[test]
    fn keep_changes_nothing() {
        let (existing, new) = held(DedupMode::Keep);
        assert!(holds_key(&existing));
        let (job, outcome) = merge(&existing, &new, 2_000_000);
        assert!(job.is_none());
        assert_eq!(outcome, DedupOutcome::Kept);
    }

    #[test]
    fn replace_takes_payload_and_moves_the_sequence() {
        let (existing, new) = held(DedupMode::Replace);
        let (job, outcome) = merge(&existing, &new, 2_000_000);
        let job = job.expect("replaced");
        assert_eq!(outcome, DedupOutcome::Replaced);
        assert_eq!(&job.payload[..], b"new");
        assert_eq!(job.sequence, existing.sequence + 1);
        assert_eq!(job.next_attempt_at, None);
    }

    #[test]
    fn debounce_is_capped_by_max_wait_from_the_first_submit() {
        let (existing, new) = held(DedupMode::Debounce {
            window: Duration::from_secs(10),
            max_wait: Some(Duration::from_secs(15)),
        });
        let (job, outcome) = merge(&existing, &new, 2_000_000);
        assert_eq!(outcome, DedupOutcome::Debounced);
        assert_eq!(job.unwrap().next_attempt_at, Some(12_000_000));
        let (job, _) = merge(&existing, &new, 9_000_000);
        assert_eq!(job.unwrap().next_attempt_at, Some(16_000_000));
    }

    #[test]
    fn a_started_job_no_longer_holds_its_key() {
        let (mut existing, _) = held(DedupMode::Keep);
        existing.attempt = 1;
        assert!(!holds_key(&existing));
        existing.attempt = 0;
        existing.state = JobState::Cancelled;
        assert!(!holds_key(&existing));
    }
}
