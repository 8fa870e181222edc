//! The dispatcher: claims due jobs from the store in batches, as many as the
//! global and per-kind bounds allow, and runs each on a worker task.
//!
//! Claims are pipelined: up to [`CLAIMS_IN_FLIGHT`] claim requests may be
//! waiting on the store at once, each holding the worker and kind permits it
//! may fill. A claim is a durable write, so waiting for each one before
//! issuing the next would cap throughput at one batch per commit; with
//! several in flight, slots freed while one commits are claimed in the next
//! group commit.
//!
//! Claims keep pace with the pool: a claim asks for the workers free now
//! plus those expected to be free by the time its commit lands (as many as
//! were freed while the previous claim committed, per kind). Jobs claimed
//! ahead wait for a slot on a task of their own, in claim order; they are
//! bounded ([`Engine::ahead`]) and give their job back (QUEUED, attempt not
//! counted) if no slot frees within [`AHEAD_WAIT`], so a wrong guess costs
//! a little latency, never a lease.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::handover::Handed;
use super::{Engine, CLAIM_BATCH};
use crate::job::{now_micros, Job, JobState};
use crate::store::{ClaimOutcome, ClaimRequest, Outcome};

/// Store-failure warnings of this site, rate-limited (see [`crate::log_limit`]).
static CLAIM_LOG: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

/// Pause after a failed claim, so a broken store is not hammered.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Claim requests waiting on the store at most.
pub(crate) const CLAIMS_IN_FLIGHT: usize = 4;
/// Jobs claimed ahead that may wait for a slot at once, per worker, but at
/// least [`AHEAD_MIN`]: enough to cover what a pool of short jobs frees
/// during a commit or two. (How many are claimed ahead is the prediction;
/// this only caps it.)
pub(crate) const AHEAD_PER_WORKER: usize = 4;
pub(crate) const AHEAD_MIN: usize = 256;
/// How long a job claimed ahead waits for a slot before it goes back to
/// QUEUED: well inside its lease slack (the lease started at the claim, the
/// handler's own timeout starts when it runs).
pub(crate) const AHEAD_WAIT: Duration = Duration::from_secs(5);

/// Permits reserved for one claim, and how many more jobs (per kind) it may
/// take ahead of free slots: together they bound what it may take.
struct Reserved {
    global: OwnedSemaphorePermit,
    kinds: HashMap<String, OwnedSemaphorePermit>,
    ahead: HashMap<String, usize>,
    ahead_total: usize,
}

/// What a finished claim hands back to the loop.
struct Claimed {
    reserved: Reserved,
    jobs: Result<ClaimOutcome, ()>,
    /// Slots freed per kind while the claim was committing.
    freed: HashMap<String, usize>,
}

impl Engine {
    /// Runs until drain; returns the workers still running so the drain can
    /// wait for them.
    pub(super) async fn dispatch_loop(
        self: Arc<Self>,
        mut hints: mpsc::Receiver<()>,
        mut handed: mpsc::Receiver<Handed>,
    ) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        let mut claims: JoinSet<Claimed> = JoinSet::new();
        // Whether the store may hold claimable jobs we have not asked for.
        let mut more = true;
        // Slots freed per kind during the last claim's commit: the guess at
        // what the next claim's commit will free.
        let mut predicted: HashMap<String, usize> = HashMap::new();
        // Jobs the claims in flight may take ahead of free slots.
        let mut ahead_in_flight = 0;
        // When a rate-limited kind's bucket next holds a token.
        let mut rate_wake: Option<tokio::time::Instant> = None;
        loop {
            if self.stops.stop_dispatch.is_cancelled() {
                break;
            }
            if more && claims.len() < CLAIMS_IN_FLIGHT {
                // With a claim already on its way, a shared store gets the
                // next one only for a worthwhile batch: each claim there is
                // a commit that PostgreSQL serializes (NOTIFY).
                let least = if claims.is_empty() {
                    1
                } else {
                    self.dispatch.claim_min_batch
                };
                let room = self
                    .dispatch
                    .ahead_bound
                    .saturating_sub(self.dispatch.ahead.load(Ordering::Acquire) + ahead_in_flight);
                if let Some(reserved) = self.reserve(least, room, &predicted) {
                    ahead_in_flight += reserved.ahead_total;
                    claims.spawn(self.clone().claim(reserved));
                    more = false;
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = self.stops.stop_dispatch.cancelled() => break,
                Some(r) = claims.join_next(), if !claims.is_empty() => {
                    let Ok(Claimed { reserved, jobs, freed }) = r else { continue };
                    ahead_in_flight -= reserved.ahead_total;
                    predicted = freed;
                    match jobs {
                        Ok(ClaimOutcome { jobs, expired, rate_limited }) => {
                            // A full batch: there may be more waiting. Jobs
                            // found expired took places in it too.
                            let limit = reserved.global.num_permits() + reserved.ahead_total;
                            let found = jobs.len() + expired.len();
                            more |= found > 0 && found == limit;
                            self.expired(JobState::Queued, &expired);
                            rate_wake = self.rate_wake(rate_wake, rate_limited);
                            self.spawn_workers(&mut workers, reserved, jobs);
                        }
                        Err(()) => {
                            drop(reserved);
                            tokio::select! {
                                _ = tokio::time::sleep(CLAIM_ERROR_PAUSE) => {}
                                _ = self.stops.stop_dispatch.cancelled() => break,
                            }
                            more = true;
                        }
                    }
                }
                Some(h) = handed.recv() => {
                    workers.spawn(self.clone().run_attempt(h.job, h.global, h.kind));
                }
                Some(r) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "worker task failed");
                    }
                    // A slot freed: jobs that waited for it may be claimable.
                    more = true;
                }
                _ = tokio::time::sleep_until(rate_wake.unwrap_or_else(tokio::time::Instant::now)), if rate_wake.is_some() => {
                    // A rated kind's bucket refilled: its jobs may start.
                    rate_wake = None;
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
        self.run_the_rest(handed, claims, workers).await
    }

    /// When the dispatcher must claim again for the rate-limited kinds: the
    /// earliest of `wake` and each kind's next token.
    fn rate_wake(
        &self,
        wake: Option<tokio::time::Instant>,
        rate_limited: Vec<(String, crate::job::Micros)>,
    ) -> Option<tokio::time::Instant> {
        let mut rate_wake = wake;
        for (kind, at) in rate_limited {
            self.metrics.kind_rate_limited(&kind);
            let wait = Duration::from_micros(at.saturating_sub(now_micros()).max(0) as u64);
            let at = tokio::time::Instant::now() + wait;
            rate_wake = Some(rate_wake.map_or(at, |w| w.min(at)));
        }
        rate_wake
    }

    /// At the end of dispatch, jobs started at submit and claims still in
    /// flight: their jobs are RUNNING in the store, so run them (the drain
    /// then waits for them like any other). A submit after this gives its
    /// job back itself.
    async fn run_the_rest(
        self: Arc<Self>,
        mut handed: mpsc::Receiver<Handed>,
        mut claims: JoinSet<Claimed>,
        mut workers: JoinSet<()>,
    ) -> JoinSet<()> {
        handed.close();
        while let Ok(h) = handed.try_recv() {
            workers.spawn(self.clone().run_attempt(h.job, h.global, h.kind));
        }
        while let Some(r) = claims.join_next().await {
            if let Ok(Claimed {
                reserved,
                jobs: Ok(claimed),
                ..
            }) = r
            {
                self.spawn_workers(&mut workers, reserved, claimed.jobs);
            }
        }
        workers
    }

    /// Takes every free worker permit (up to a batch) and every free kind
    /// permit, and allows up to `room` jobs more, per kind as many as
    /// `predicted` says will free during the claim's commit; `None` when
    /// that comes to fewer than `least` jobs or no kind could run.
    fn reserve(
        &self,
        least: usize,
        room: usize,
        predicted: &HashMap<String, usize>,
    ) -> Option<Reserved> {
        let free = self.dispatch.workers.available_permits().min(CLAIM_BATCH);
        let mut extra = room.min(CLAIM_BATCH - free);
        // Ahead of free slots only what the pool frees by itself, and only
        // for local kinds that are not paused: a remote kind's jobs wait for
        // a worker's room, a paused kind's for its resume.
        let ahead: HashMap<String, usize> = predicted
            .iter()
            .filter(|(name, _)| {
                self.kinds.get(*name).is_some_and(|k| !k.remote) && !self.is_paused(name)
            })
            .filter_map(|(k, &n)| {
                let n = n.min(extra);
                extra -= n;
                (n > 0).then(|| (k.clone(), n))
            })
            .collect();
        let ahead_total: usize = ahead.values().sum();
        if free + ahead_total == 0 || free + ahead_total < least {
            return None;
        }
        let global = self
            .dispatch
            .workers
            .clone()
            .try_acquire_many_owned(free as u32)
            .ok()?;
        let kinds: HashMap<String, OwnedSemaphorePermit> = self
            .kinds
            .iter()
            .filter(|(name, _)| !self.is_paused(name))
            .filter_map(|(name, k)| {
                let mut n = k.slots.available_permits().min(free);
                if k.remote {
                    n = n.min(self.remote_room(name, k));
                }
                let p = k.slots.clone().try_acquire_many_owned(n as u32).ok()?;
                (n > 0).then(|| (name.clone(), p))
            })
            .collect();
        if kinds.is_empty() && ahead.is_empty() {
            return None;
        }
        Some(Reserved {
            global,
            kinds,
            ahead,
            ahead_total,
        })
    }

    async fn claim(self: Arc<Self>, reserved: Reserved) -> Claimed {
        let mut kinds: HashMap<String, usize> = reserved
            .kinds
            .iter()
            .map(|(k, p)| (k.clone(), p.num_permits()))
            .collect();
        for (k, n) in &reserved.ahead {
            *kinds.entry(k.clone()).or_default() += n;
        }
        let req = ClaimRequest {
            now: now_micros(),
            limit: reserved.global.num_permits() + reserved.ahead_total,
            kinds,
            lease_slack: self.lease_slack(),
            limits: self.limits.clone(),
        };
        let before = self.freed_counts();
        let jobs = self.store.claim(&req).await.map_err(|e| {
            if let Some(held_back) = CLAIM_LOG.admit() {
                tracing::warn!(held_back, error = %e, "claiming jobs failed; will retry");
            }
        });
        let freed = self
            .freed_counts()
            .into_iter()
            .map(|(k, n)| {
                let was = before.get(&k).copied().unwrap_or(n);
                (k, n.wrapping_sub(was))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Claimed {
            reserved,
            jobs,
            freed,
        }
    }

    /// Slots freed so far, per kind (counters that only grow).
    fn freed_counts(&self) -> HashMap<String, usize> {
        self.kinds
            .iter()
            .map(|(k, kind)| (k.clone(), kind.freed.load(Ordering::Relaxed)))
            .collect()
    }

    /// One worker per claimed job, each with one global and one kind permit
    /// split off the reservation; jobs beyond it (claimed ahead) wait for
    /// slots on their own task. What is left of the reservation is released.
    fn spawn_workers(
        self: &Arc<Self>,
        workers: &mut JoinSet<()>,
        mut reserved: Reserved,
        jobs: Vec<Job>,
    ) {
        for job in jobs {
            self.metrics.started(&job);
            self.changed(Some(JobState::Queued), &job);
            let global = reserved.global.split(1);
            let kind = reserved.kinds.get_mut(&job.kind).and_then(|p| p.split(1));
            match (global, kind) {
                (Some(g), Some(k)) => {
                    workers.spawn(self.clone().run_attempt(job, g, k));
                }
                // Claimed ahead: waits for slots. Half a pair goes back to
                // the reservation, for a later job of the batch.
                (g, k) => {
                    if let Some(g) = g {
                        reserved.global.merge(g);
                    }
                    if let (Some(k), Some(p)) = (k, reserved.kinds.get_mut(&job.kind)) {
                        p.merge(k);
                    }
                    self.dispatch.ahead.fetch_add(1, Ordering::AcqRel);
                    workers.spawn(self.clone().run_ahead(job));
                }
            }
        }
    }

    /// A job claimed ahead of free slots: waits for a kind slot, then a
    /// worker slot (in claim order: the semaphores are fair), and runs; gives
    /// the job back to the queue, its attempt not counted, after
    /// [`AHEAD_WAIT`] or on drain.
    async fn run_ahead(self: Arc<Self>, job: Job) {
        let slots = async {
            let kind = self.kinds.get(&job.kind)?.slots.clone();
            let k = kind.acquire_owned().await.ok()?;
            let g = self.dispatch.workers.clone().acquire_owned().await.ok()?;
            Some((g, k))
        };
        let got = tokio::select! {
            r = tokio::time::timeout(AHEAD_WAIT, slots) => r.ok().flatten(),
            _ = self.stops.stop_attempts.cancelled() => None,
        };
        self.dispatch.ahead.fetch_sub(1, Ordering::AcqRel);
        match got {
            Some((g, k)) => self.run_attempt(job, g, k).await,
            None => {
                tracing::debug!(job = %job.id, "no slot for a job claimed ahead; back to the queue");
                let reason = format!(
                    "attempt {} waited for a free worker and was given back; not counted",
                    job.attempt
                );
                self.complete(job, Outcome::Requeue { reason }, String::new())
                    .await;
            }
        }
    }
}

/// The dispatcher's state: its wake-ups, the worker slots, the hand-over channel and the claims ahead.
pub(super) struct Dispatch {
    /// Wake-up hints for the dispatcher, bounded by `queue.dispatch_channel`.
    /// A full channel means the dispatcher has plenty of reasons to wake
    /// already, so `try_send` failures are ignored.
    pub(super) hints: mpsc::Sender<()>,
    /// Global bound on running jobs (`queue.workers`).
    pub(super) workers: Arc<tokio::sync::Semaphore>,
    /// Jobs started at submit, to the dispatcher's worker set (see
    /// [`handover`]); one place per worker, as each holds a worker slot.
    pub(super) handed: mpsc::Sender<super::handover::Handed>,
    /// Jobs claimed ahead of free slots and waiting for one (see the
    /// dispatcher), and their bound: [`dispatcher::AHEAD_PER_WORKER`] ×
    /// workers (at least [`dispatcher::AHEAD_MIN`]), so a wrong guess holds
    /// only so many jobs back.
    pub(super) ahead: std::sync::atomic::AtomicUsize,
    pub(super) ahead_bound: usize,
    /// Free workers a claim needs while another is in flight (see the
    /// dispatcher): 1, or a quarter of the pool for shared stores.
    pub(super) claim_min_batch: usize,
}
