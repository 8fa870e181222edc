//! The completion path: outcomes of attempts whose handlers returned, on
//! their way to the store in groups.
//!
//! A worker slot is for running a handler, not for waiting on the disk: when
//! a handler returns, its outcome is handed to this path and the slot (global
//! and per-kind permits) is free at once. The job stays RUNNING under its
//! lease until the outcome is committed; only then do metrics and watchers
//! hear of it ([`Engine::announce`]), and a crash before that reruns the job
//! (at-least-once). Outcomes not yet committed are bounded by
//! [`Engine::pending`]: when they pile up (a slow or stalled store), workers
//! wait for room while still holding their slots, so nothing new starts.
//!
//! Per-kind concurrency bounds handlers running, not outcomes waiting: a
//! pending outcome does not block a new start of the same kind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::Engine;
use crate::job::{now_micros, Job, JobState, Micros};
use crate::store::{Finish, Outcome};

/// Store-failure warnings of this site, rate-limited (see [`crate::log_limit`]).
static OUTCOME_LOG: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
/// Store-failure warnings of this site, rate-limited (see [`crate::log_limit`]).
static OUTCOMES_LOG: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

/// Tries to write an outcome before giving up on it (the lease then expires
/// and the sweeper takes the job back).
const FINISH_TRIES: u32 = 5;
/// Pending outcomes allowed per worker ...
pub(crate) const PENDING_PER_WORKER: usize = 4;
/// ... but at least this many: a group commit of short jobs carries about
/// a hundred outcomes at the default 16 workers (measured: 16 per worker
/// gave ~20% more burn-down than 4, by fewer, larger commits).
pub(crate) const PENDING_MIN: usize = 256;
/// Outcomes in one store call at most.
const COMMIT_BATCH: usize = 1024;
/// Groups of outcomes waiting on the store at once: while one is being
/// synced, the next gathers and is queued for the writer's next commit.
const COMMITS_IN_FLIGHT: usize = 2;

/// An outcome waiting to be committed.
pub(super) struct Pending {
    pub(super) job: Job,
    pub(super) outcome: Outcome,
    /// When the handler returned.
    pub(super) now: Micros,
    /// Where the attempt ran (its history's `worker`).
    pub(super) worker: String,
    /// One of [`Engine::pending`]'s permits, returned once the outcome is
    /// committed (or given up on): that is the bound on pending outcomes.
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Engine {
    /// Hands an attempt's outcome to the completion path. Waits while
    /// [`Engine::pending`] is at its bound (back-pressure on the pool: the
    /// caller still holds its worker slot).
    pub(super) async fn complete(&self, job: Job, outcome: Outcome, worker: String) {
        let now = now_micros();
        let Ok(permit) = self.completion.pending.clone().acquire_owned().await else {
            return;
        };
        let p = Pending {
            job,
            outcome,
            now,
            worker,
            _permit: permit,
        };
        if self.completion.outcomes.send(p).await.is_err() {
            // Only after drain gave up on the store: the lease expires or the
            // next start recovers the job, which then runs again.
            tracing::warn!("completion path closed; the outcome is dropped and the job will rerun");
        }
    }

    /// Collects outcomes and commits them in groups, until drain ends it.
    pub(super) async fn complete_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let mut commits = JoinSet::new();
        // Grown by `recv_many` as outcomes arrive: no group-sized
        // allocation up front or per group.
        let mut batch = Vec::new();
        loop {
            if commits.len() >= COMMITS_IN_FLIGHT {
                let _ = commits.join_next().await;
                continue;
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, COMMIT_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let group = std::mem::take(&mut batch);
                    commits.spawn(self.clone().commit(group));
                }
                Some(_) = commits.join_next(), if !commits.is_empty() => {}
            }
        }
        while commits.join_next().await.is_some() {}
    }

    /// Writes one group of outcomes, retrying those that failed; announces
    /// each after its commit.
    async fn commit(self: Arc<Self>, mut group: Vec<Pending>) {
        for try_no in 1..=FINISH_TRIES {
            let items = group
                .iter()
                .map(|p| Finish {
                    id: p.job.id,
                    attempt: p.job.attempt,
                    outcome: p.outcome.clone(),
                    now: p.now,
                    worker: p.worker.clone(),
                })
                .collect();
            match self.store.finish_many(items).await {
                Ok(results) => {
                    let mut failed = Vec::new();
                    for (p, r) in group.into_iter().zip(results) {
                        match r {
                            Ok(Some(updated)) => {
                                self.committed(&updated);
                                self.tell_worker(&p.job, true);
                            }
                            Ok(None) => {
                                tracing::debug!(
                                    job = %p.job.id,
                                    attempt = p.job.attempt,
                                    "attempt outcome dropped: job no longer runs this attempt"
                                );
                                self.tell_worker(&p.job, false);
                            }
                            Err(e) => {
                                if let Some(held_back) = OUTCOME_LOG.admit() {
                                    tracing::warn!(held_back, job = %p.job.id, error = %e, try_no, "writing attempt outcome failed");
                                }
                                failed.push(p);
                            }
                        }
                    }
                    // Children the outcomes released, after their parents.
                    self.publish_moved();
                    group = failed;
                    if group.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    if let Some(held_back) = OUTCOMES_LOG.admit() {
                        tracing::warn!(held_back, error = %e, try_no, outcomes = group.len(), "writing attempt outcomes failed");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(try_no))).await;
        }
        tracing::error!(
            outcomes = group.len(),
            "giving up writing outcomes; their leases will expire and the jobs will be retried"
        );
        for p in &group {
            self.tell_worker(&p.job, false);
        }
    }

    /// A remote worker whose report this outcome was is acknowledged now,
    /// after the commit: `counted` false when it changed nothing (stale)
    /// or could not be written (the job will run again).
    fn tell_worker(&self, job: &Job, counted: bool) {
        if let Some(w) = self.wiring.remote.get() {
            w.outcome_written(job.id, job.attempt, counted);
        }
    }

    fn committed(&self, updated: &Job) {
        tracing::debug!(job = %updated.id, state = %updated.state, "attempt finished");
        self.changed(Some(JobState::Running), updated);
        match updated.state {
            JobState::RetryWait => self.sweeper_wake.notify_one(),
            JobState::Queued => self.hint(),
            _ => {}
        }
        // A keyed job's end frees its key only now, at the commit (the
        // slot was given back when the handler returned, and a claim then
        // still saw the key busy): wake the claim of the key's next job.
        if updated.ordering_key.is_some() && self.limits.contains_key(&updated.kind) {
            self.hint();
        }
    }

    /// How many outcomes may wait for their commit at once.
    pub fn pending_bound(&self) -> usize {
        self.completion.pending_bound
    }

    /// Outcomes handed over and not yet committed (or given up on).
    pub fn pending_outcomes(&self) -> usize {
        self.completion.pending_bound - self.completion.pending.available_permits()
    }
}

/// The completion path's state: outcomes handed to it and the bound on them.
pub(super) struct Completion {
    /// Outcomes handed to the completion path and not yet committed, at most
    /// [`completer::PENDING_PER_WORKER`] × workers (at least
    /// [`completer::PENDING_MIN`]): enough for a couple of commits' worth of
    /// short jobs, while a stalled store holds back the pool instead of
    /// memory growing. Drain takes every permit back, which
    /// is how it knows every outcome was written.
    pub(super) pending: Arc<tokio::sync::Semaphore>,
    pub(super) pending_bound: usize,
    /// To the completion path; as large as `pending`, so a sender holding a
    /// permit never waits on it.
    pub(super) outcomes: mpsc::Sender<Pending>,
}
