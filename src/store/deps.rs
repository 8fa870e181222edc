//! Workflows: the rules for a job that depends on others (DESIGN.md
//! "Workflows"), applied to job records in memory like [`super::transition`].
//! Stores read the parents, call these, and write the results in the same
//! atomic step as the parent's own transition, so a release or a cascade
//! is never half done.

use uuid::Uuid;

use crate::job::{Job, JobState, Micros, ParentFailure};

/// A transition a store made as a consequence of another (a child released
/// or cancelled by its parent's end), for the engine to publish.
#[derive(Debug, Clone)]
pub struct Moved {
    pub prev: JobState,
    pub job: Job,
}

/// Where a job stands given its parents' states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This many parents have not finished.
    Waiting(u32),
    /// Every parent finished in a way that lets it run.
    Ready,
    /// A parent ended FAILED or CANCELLED and the job's policy is CANCEL.
    Cancelled(String),
}

/// Where a job with policy `policy` stands when its parents are in
/// `parents` (id and state of each).
pub fn standing(
    policy: ParentFailure,
    parents: impl IntoIterator<Item = (Uuid, JobState)>,
) -> Standing {
    let mut unfinished = 0u32;
    for (id, state) in parents {
        if !state.is_terminal() {
            unfinished += 1;
        } else if policy == ParentFailure::Cancel && state != JobState::Succeeded {
            return Standing::Cancelled(dependency_error(id, state));
        }
    }
    if unfinished > 0 {
        Standing::Waiting(unfinished)
    } else {
        Standing::Ready
    }
}

fn dependency_error(parent: Uuid, state: JobState) -> String {
    format!(
        "dependency {parent} ended {}",
        state.as_str().to_uppercase()
    )
}

/// Puts a job that is about to be stored QUEUED (created, or retried)
/// where `standing` says: WAITING, QUEUED as it is, or CANCELLED.
/// Returns whether it may still be started at once (only when ready).
pub fn place(job: &mut Job, standing: Standing, now: Micros) -> bool {
    match standing {
        Standing::Ready => {
            job.waiting_on = 0;
            true
        }
        Standing::Waiting(n) => {
            job.state = JobState::Waiting;
            job.waiting_on = n;
            false
        }
        Standing::Cancelled(why) => {
            job.state = JobState::Cancelled;
            job.waiting_on = 0;
            job.last_error = why;
            job.finished_at = Some(now);
            job.next_attempt_at = None;
            false
        }
    }
}

/// RetryJobs re-evaluates a job with parents (it was put back QUEUED):
/// every parent SUCCEEDED (or, under RUN, terminal) → QUEUED; some
/// unfinished → WAITING again. False when a parent's failure still cancels
/// it (the retry is refused; retry that parent first).
pub fn replace(
    job: &mut Job,
    parents: impl IntoIterator<Item = (Uuid, JobState)>,
    now: Micros,
) -> bool {
    if job.parents.is_empty() {
        return true;
    }
    match standing(job.on_parent_failure, parents) {
        Standing::Cancelled(_) => false,
        s => {
            place(job, s, now);
            true
        }
    }
}

/// A parent of the WAITING `child` ended in `parent_state` (terminal): the
/// child is cancelled (policy CANCEL and a failed parent), released to
/// QUEUED (its last unfinished parent), or counts one parent fewer. Returns
/// whether its state changed (an event).
pub fn parent_ended(child: &mut Job, parent: Uuid, parent_state: JobState, now: Micros) -> bool {
    debug_assert_eq!(child.state, JobState::Waiting);
    child.waiting_on = child.waiting_on.saturating_sub(1);
    let failed = parent_state != JobState::Succeeded;
    let state = if failed && child.on_parent_failure == ParentFailure::Cancel {
        child.last_error = dependency_error(parent, parent_state);
        child.finished_at = Some(now);
        child.next_attempt_at = None;
        child.waiting_on = 0;
        JobState::Cancelled
    } else if child.waiting_on == 0 {
        JobState::Queued
    } else {
        return false;
    };
    child.state = state;
    child.updated_at = now;
    child.sequence += 1;
    true
}

/// A WAITING job the sweeper found with every parent terminal (a release
/// that a crash or a bug left undone): where its parents say it goes.
/// Returns whether it moved.
pub fn recheck(
    job: &mut Job,
    parents: impl IntoIterator<Item = (Uuid, JobState)>,
    now: Micros,
) -> bool {
    debug_assert_eq!(job.state, JobState::Waiting);
    let s = standing(job.on_parent_failure, parents);
    if let Standing::Waiting(n) = s {
        job.waiting_on = n;
        return false;
    }
    job.state = JobState::Queued;
    place(job, s, now);
    job.updated_at = now;
    job.sequence += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    fn waiting(n: u32, policy: ParentFailure) -> Job {
        let mut j = NewJob::example().into_job();
        j.state = JobState::Waiting;
        j.waiting_on = n;
        j.on_parent_failure = policy;
        j
    }

    #[test]
    fn the_last_parent_releases_and_a_failure_cancels_under_cancel() {
        let p = Uuid::now_v7();
        let mut j = waiting(2, ParentFailure::Cancel);
        assert!(!parent_ended(&mut j, p, JobState::Succeeded, 5));
        assert_eq!(
            (j.state, j.waiting_on, j.sequence),
            (JobState::Waiting, 1, 1)
        );
        assert!(parent_ended(&mut j, p, JobState::Succeeded, 6));
        assert_eq!((j.state, j.sequence), (JobState::Queued, 2));
        let mut c = waiting(2, ParentFailure::Cancel);
        assert!(parent_ended(&mut c, p, JobState::Failed, 7));
        assert_eq!(c.state, JobState::Cancelled);
        assert!(c.last_error.contains(&p.to_string()), "{}", c.last_error);
        assert_eq!(c.finished_at, Some(7));
    }

    #[test]
    fn run_waits_for_every_parent_whatever_the_outcome() {
        let p = Uuid::now_v7();
        let mut j = waiting(2, ParentFailure::Run);
        assert!(!parent_ended(&mut j, p, JobState::Failed, 5));
        assert!(parent_ended(&mut j, p, JobState::Cancelled, 6));
        assert_eq!(j.state, JobState::Queued);
    }

    #[test]
    fn standing_counts_unfinished_parents() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        use JobState::*;
        let run = ParentFailure::Run;
        let cancel = ParentFailure::Cancel;
        assert_eq!(
            standing(cancel, [(a, Succeeded), (b, Running)]),
            Standing::Waiting(1)
        );
        assert_eq!(
            standing(cancel, [(a, Succeeded), (b, Succeeded)]),
            Standing::Ready
        );
        assert!(matches!(
            standing(cancel, [(a, Failed), (b, Queued)]),
            Standing::Cancelled(_)
        ));
        assert_eq!(
            standing(run, [(a, Failed), (b, Queued)]),
            Standing::Waiting(1)
        );
        assert_eq!(
            standing(run, [(a, Failed), (b, Cancelled)]),
            Standing::Ready
        );
    }
}
