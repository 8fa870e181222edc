//! The state machine, applied to a job record in memory. Stores load the
//! row, call one of these, and write the result back in the same atomic
//! step, so every store follows exactly the same rules.

use crate::job::{add_micros, Job, JobState, Micros, NewJob};

use super::Outcome;

fn touch(job: &mut Job, state: JobState, now: Micros) {
    job.state = state;
    job.updated_at = now;
    job.sequence += 1;
}

/// A delayed QUEUED job whose time came becomes claimable. Not a state
/// change (no event, same sequence); `updated_at` marks when it became
/// runnable.
pub fn release(job: &mut Job, now: Micros) {
    debug_assert_eq!(job.state, JobState::Queued);
    job.next_attempt_at = None;
    job.updated_at = now;
}

/// A claim of a job whose start deadline has passed: it ends FAILED
/// instead of starting late. True when it started (RUNNING).
pub fn claim_or_expire(job: &mut Job, now: Micros, lease_slack: std::time::Duration) -> bool {
    if is_expired(job, now) {
        expire(job, now);
        return false;
    }
    claim(job, now, lease_slack);
    true
}

/// Whether `job` (not started) is past its start deadline at `now`.
pub fn is_expired(job: &Job, now: Micros) -> bool {
    job.start_before.is_some_and(|t| t <= now)
}

/// A job not started by its deadline: FAILED, saying so.
pub fn expire(job: &mut Job, now: Micros) {
    let at = job.start_before.unwrap_or(now);
    job.last_error = format!("expired: not started before {}", crate::config::rfc3339(at));
    job.next_attempt_at = None;
    job.lease_expires_at = None;
    job.finished_at = Some(now);
    job.waiting_on = 0;
    touch(job, JobState::Failed, now);
}

/// QUEUED -> RUNNING with a new attempt number and lease.
pub fn claim(job: &mut Job, now: Micros, lease_slack: std::time::Duration) {
    debug_assert_eq!(job.state, JobState::Queued);
    job.ready_at = Some(job.updated_at.max(job.next_attempt_at.unwrap_or(0)));
    job.attempt += 1;
    job.started_at = Some(now);
    job.next_attempt_at = None;
    job.lease_expires_at = Some(add_micros(now, job.timeout + lease_slack));
    touch(job, JobState::Running, now);
}

/// Creation, the first transition: the job record a submit stores, QUEUED,
/// or RUNNING when `new.start` is set and `kind_has_ready` is false (see
/// [`NewJob::start`]); the check is only asked for then.
///
/// `standing` is where its parents (if any) put it: a job that waits for
/// them is created WAITING (and never started at once), one whose parent
/// failed under CANCEL is created CANCELLED.
pub fn create(
    new: NewJob,
    now: Micros,
    standing: super::deps::Standing,
    kind_has_ready: impl FnOnce(&str) -> bool,
) -> Job {
    let start = new
        .start
        .filter(|_| new.run_at.is_none_or(|t| t <= new.created_at));
    let mut job = new.into_job();
    let ready = super::deps::place(&mut job, standing, now);
    if let Some(slack) = start.filter(|_| ready && !is_expired(&job, now)) {
        if !kind_has_ready(&job.kind) {
            let now = now.max(job.created_at);
            claim(&mut job, now, slack);
        }
    }
    job
}

/// The QUEUED record that a job started in its insert's commit (see
/// `NewJob::start`) was within that commit, for watchers: they see every
/// transition, in sequence.
pub fn before_claim(job: &Job) -> Job {
    let mut j = job.clone();
    j.state = JobState::Queued;
    j.attempt = j.attempt.saturating_sub(1);
    j.started_at = None;
    j.lease_expires_at = None;
    j.ready_at = None;
    j.updated_at = j.created_at;
    j.sequence = j.sequence.saturating_sub(1);
    j
}

/// Applies an attempt's outcome if `attempt` is still the running one.
/// Returns false (and changes nothing) for a stale attempt.
pub fn finish(job: &mut Job, attempt: u32, outcome: Outcome, now: Micros) -> bool {
    finish_on(job, attempt, outcome, now, "")
}

/// [`finish`], recording in the attempt history that it ran on `worker`.
pub fn finish_on(job: &mut Job, attempt: u32, outcome: Outcome, now: Micros, worker: &str) -> bool {
    if job.state != JobState::Running || job.attempt != attempt {
        return false;
    }
    job.lease_expires_at = None;
    let (label, error) = match &outcome {
        Outcome::Succeeded { .. } => ("succeeded", ""),
        Outcome::Retry { error, .. } => ("retried", error.as_str()),
        Outcome::Failed { error } => ("failed", error.as_str()),
        Outcome::Requeue { reason } => ("requeued", reason.as_str()),
    };
    ended(job, label, error, now, worker);
    match outcome {
        Outcome::Succeeded { result } => {
            job.result = result;
            // The history keeps what went wrong before.
            job.last_error = String::new();
            job.finished_at = Some(now);
            touch(job, JobState::Succeeded, now);
        }
        Outcome::Retry { error, at } => {
            job.last_error = error;
            job.next_attempt_at = Some(at);
            touch(job, JobState::RetryWait, now);
        }
        Outcome::Failed { error } => {
            job.last_error = error;
            job.finished_at = Some(now);
            touch(job, JobState::Failed, now);
        }
        Outcome::Requeue { reason } => {
            // Drain: the attempt was cut short by us, not by the job, so it
            // does not count.
            job.attempt = job.attempt.saturating_sub(1);
            // It started once: its dedup key, which a new job may hold by
            // now, is not taken back (see `dedup::holds_key`).
            job.dedup_key = None;
            job.last_error = reason;
            touch(job, JobState::Queued, now);
        }
    }
    true
}

/// Records the running attempt's end in the job's history (bounded).
fn ended(job: &mut Job, outcome: &str, error: &str, now: Micros, worker: &str) {
    if job.attempts.len() >= crate::job::MAX_ATTEMPT_HISTORY {
        job.attempts.remove(0);
    }
    let error = crate::handlers::cut_str(error, crate::job::MAX_ATTEMPT_ERROR_BYTES);
    job.attempts.push(crate::job::AttemptRecord {
        attempt: job.attempt,
        started_at: job.started_at.unwrap_or(now),
        finished_at: now,
        outcome: outcome.to_string(),
        error: error.to_string(),
        worker: worker.to_string(),
    });
}

/// Cancels a job that is not terminal.
pub fn cancel(job: &mut Job, now: Micros) {
    if job.state == JobState::Running {
        ended(job, "cancelled", "cancelled", now, "");
    }
    job.lease_expires_at = None;
    job.next_attempt_at = None;
    job.finished_at = Some(now);
    touch(job, JobState::Cancelled, now);
}

/// RETRY_WAIT -> QUEUED once its time came.
pub fn promote(job: &mut Job, now: Micros) {
    debug_assert_eq!(job.state, JobState::RetryWait);
    job.next_attempt_at = None;
    touch(job, JobState::Queued, now);
}

/// A RUNNING job whose worker is gone (lease expired, or the daemon died
/// mid-attempt). The attempt counts as used: a job that crashes the daemon
/// must not be retried forever. It goes back to QUEUED while attempts
/// remain, else to FAILED.
pub fn lease_lost(job: &mut Job, now: Micros, why: &str) {
    debug_assert_eq!(job.state, JobState::Running);
    job.lease_expires_at = None;
    job.last_error = format!("attempt {} lost: {why}", job.attempt);
    let error = job.last_error.clone();
    ended(job, "lost", &error, now, "");
    if job.attempt >= job.max_attempts {
        job.finished_at = Some(now);
        touch(job, JobState::Failed, now);
    } else {
        touch(job, JobState::Queued, now);
    }
}

/// FAILED or CANCELLED -> QUEUED (RetryJobs): a fresh start with all its
/// attempts, same id, its sequence going on so watchers see it come back.
/// The last error stays until the next attempt ends, so it is still visible.
pub fn retry(job: &mut Job, now: Micros) {
    debug_assert!(matches!(job.state, JobState::Failed | JobState::Cancelled));
    job.attempt = 0;
    job.result = bytes::Bytes::new();
    job.started_at = None;
    job.finished_at = None;
    job.next_attempt_at = None;
    job.lease_expires_at = None;
    // A retry is a fresh start: the old deadline would expire it at once.
    job.start_before = None;
    // Nor does it take its dedup key back: another job may hold it now.
    job.dedup_key = None;
    touch(job, JobState::Queued, now);
}

/// Whether RetryJobs may put this job back in the queue.
pub fn retryable(state: JobState) -> bool {
    matches!(state, JobState::Failed | JobState::Cancelled)
}

/// What RetryJobs does with one id.
#[derive(Debug)]
pub enum RetryDecision {
    /// Save `job` (retried in place); it was `prev` at attempt `attempt`.
    Retry {
        job: Job,
        prev: JobState,
        attempt: u32,
    },
    /// Left as it is, for this reason.
    Skip(super::RetryOutcome),
}

/// RetryJobs' decision for one id, the same in every store: the job (as
/// stored, if found) is retried in place when it is FAILED or CANCELLED and
/// the backlog has `room`.
pub fn decide_retry(found: Option<Job>, room: bool, now: Micros) -> RetryDecision {
    use super::RetryOutcome;
    match found {
        None => RetryDecision::Skip(RetryOutcome::NotFound),
        Some(job) if !retryable(job.state) => RetryDecision::Skip(RetryOutcome::NotRetryable(job)),
        Some(_) if !room => RetryDecision::Skip(RetryOutcome::BacklogFull),
        Some(mut job) => {
            let (prev, attempt) = (job.state, job.attempt);
            retry(&mut job, now);
            RetryDecision::Retry { job, prev, attempt }
        }
    }
}
