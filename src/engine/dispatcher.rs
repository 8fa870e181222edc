//! The dispatcher: claims due jobs from the store in batches, as many as the
//! global and per-kind bounds allow, and runs each on a worker task.
//!
//! Claims are pipelined: up to [`CLAIMS_IN_FLIGHT`] claim requests may be
//! waiting on the store at once, each holding the worker and kind permits it
//! may fill. A claim is a durable write, so waiting for each one before
//! issuing the next would cap throughput at one batch per commit; with
//! several in flight, slots freed while one commits are claimed in the next
//! group commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::{Engine, CLAIM_BATCH, LEASE_SLACK};
use crate::job::{now_micros, Job, JobState};
use crate::store::ClaimRequest;

/// Pause after a failed claim, so a broken store is not hammered.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Claim requests waiting on the store at most.
pub const CLAIMS_IN_FLIGHT: usize = 4;

/// Permits reserved for one claim: they bound what it may take.
struct Reserved {
    global: OwnedSemaphorePermit,
    kinds: HashMap<String, OwnedSemaphorePermit>,
}

/// What a finished claim hands back to the loop.
struct Claimed {
    reserved: Reserved,
    jobs: Result<Vec<Job>, ()>,
}

impl Engine {
    /// Runs until drain; returns the workers still running so the drain can
    /// wait for them.
    pub(super) async fn dispatch_loop(
        self: Arc<Self>,
        mut hints: mpsc::Receiver<()>,
    ) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        let mut claims: JoinSet<Claimed> = JoinSet::new();
        // Whether the store may hold claimable jobs we have not asked for.
        let mut more = true;
        loop {
            if self.stop_dispatch.is_cancelled() {
                break;
            }
            if more && claims.len() < CLAIMS_IN_FLIGHT {
                // With a claim already on its way, a shared store gets the
                // next one only for a worthwhile batch: each claim there is
                // a commit that PostgreSQL serializes (NOTIFY).
                let least = if claims.is_empty() {
                    1
                } else {
                    self.claim_min_batch
                };
                if let Some(reserved) = self.reserve(least) {
                    claims.spawn(self.clone().claim(reserved));
                    more = false;
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = self.stop_dispatch.cancelled() => break,
                Some(r) = claims.join_next(), if !claims.is_empty() => {
                    let Ok(Claimed { reserved, jobs }) = r else { continue };
                    match jobs {
                        Ok(jobs) => {
                            // A full batch: there may be more waiting.
                            more |= !jobs.is_empty() && jobs.len() == reserved.global.num_permits();
                            self.spawn_workers(&mut workers, reserved, jobs);
                        }
                        Err(()) => {
                            drop(reserved);
                            tokio::select! {
                                _ = tokio::time::sleep(CLAIM_ERROR_PAUSE) => {}
                                _ = self.stop_dispatch.cancelled() => break,
                            }
                            more = true;
                        }
                    }
                }
                Some(r) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "worker task failed");
                    }
                    // A slot freed: jobs that waited for it may be claimable.
                    more = true;
                }
                h = hints.recv() => {
                    if h.is_none() {
                        break;
                    }
                    // Coalesce: one claim answers every hint queued so far.
                    while hints.try_recv().is_ok() {}
                    more = true;
                }
            }
        }
        // Claims still in flight: their jobs are RUNNING in the store, so run
        // them (the drain then waits for them like any other).
        while let Some(r) = claims.join_next().await {
            if let Ok(Claimed {
                reserved,
                jobs: Ok(jobs),
            }) = r
            {
                self.spawn_workers(&mut workers, reserved, jobs);
            }
        }
        workers
    }

    /// Takes every free worker permit (up to a batch) and every free kind
    /// permit; `None` when fewer than `least` workers are free or no kind
    /// could run now.
    fn reserve(&self, least: usize) -> Option<Reserved> {
        let free = self.workers.available_permits().min(CLAIM_BATCH);
        if free == 0 || free < least {
            return None;
        }
        let global = self
            .workers
            .clone()
            .try_acquire_many_owned(free as u32)
            .ok()?;
        let kinds: HashMap<String, OwnedSemaphorePermit> = self
            .kinds
            .iter()
            .filter(|(name, _)| !self.is_paused(name))
            .filter_map(|(name, k)| {
                let n = k
                    .slots
                    .available_permits()
                    .min(free)
                    .min(self.remote_room(name));
                let p = k.slots.clone().try_acquire_many_owned(n as u32).ok()?;
                (n > 0).then(|| (name.clone(), p))
            })
            .collect();
        if kinds.is_empty() {
            return None;
        }
        Some(Reserved { global, kinds })
    }

    async fn claim(self: Arc<Self>, reserved: Reserved) -> Claimed {
        let req = ClaimRequest {
            now: now_micros(),
            limit: reserved.global.num_permits(),
            kinds: reserved
                .kinds
                .iter()
                .map(|(k, p)| (k.clone(), p.num_permits()))
                .collect(),
            // The lease must outlast timeout + the handler's stop grace, or
            // the sweeper could requeue a job whose attempt still runs.
            lease_slack: LEASE_SLACK + self.max_stop_grace(),
        };
        let jobs = self.store.claim(&req).await.map_err(|e| {
            tracing::warn!(error = %e, "claiming jobs failed; will retry");
        });
        Claimed { reserved, jobs }
    }

    /// One worker per claimed job, each with one global and one kind permit
    /// split off the reservation; the rest is released.
    fn spawn_workers(
        self: &Arc<Self>,
        workers: &mut JoinSet<()>,
        mut reserved: Reserved,
        jobs: Vec<Job>,
    ) {
        for job in jobs {
            self.metrics.started(&job);
            self.announce(Some(JobState::Queued), &job);
            let global = reserved.global.split(1);
            let kind = reserved.kinds.get_mut(&job.kind).and_then(|p| p.split(1));
            match (global, kind) {
                (Some(g), Some(k)) => {
                    workers.spawn(self.clone().run_attempt(job, g, k));
                }
                // The claim respected the reservation, so this cannot happen.
                _ => {
                    tracing::error!(job = %job.id, "no permit for a claimed job; its lease will expire")
                }
            }
        }
    }
}
