//! The engine: takes validated submits into the store, runs due jobs on a
//! bounded worker pool, retries them, and stops cleanly on drain.
//!
//! "Exists" is not "scheduled": a job is in the store before anything else
//! happens. The dispatcher ([`dispatcher`]) claims due jobs from the store;
//! the bounded hint channel only wakes it early. The [`sweeper`] promotes due
//! retries, takes back expired leases, prunes old jobs, and wakes the
//! dispatcher at least once a second, so a dropped hint delays a job by at
//! most that long and loses nothing.

mod completer;
mod dispatcher;
mod feed;
mod handover;
mod ops;
mod parts;
pub mod progress;
pub mod retry;
mod scheduler;
mod stored_schedules;
mod sweeper;
pub mod workflows;

pub use scheduler::ScheduleStatus;
mod attempt;

use parts::{Attempts, Intake, Settings, Stops, Wiring};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, KindSettings};
use crate::events::{Events, Subscription, TooManyWatchers};
use crate::handlers::Registry;
use crate::job::{now_micros, Job, JobState, NewJob};
use crate::metrics::Metrics;
use crate::store::dedup::DedupOutcome;
use crate::store::{CancelOutcome, InsertOutcome, ListQuery, SharedStore, StoreError};

/// Added to a job's timeout to form its lease: the worker enforces the
/// timeout itself, so the lease only runs out when the worker is gone.
pub const LEASE_SLACK: Duration = Duration::from_secs(30);
/// Most jobs claimed in one store call.
pub const CLAIM_BATCH: usize = 256;

/// Why the engine refused a request (mapped to gRPC codes in `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("jobd is draining and takes no new jobs")]
    Draining,
    /// The store's filesystem is below `store.min_free`.
    #[error("{0}")]
    DiskReserve(String),
    #[error("too many watchers (at most {max})")]
    TooManyWatchers { max: usize },
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("kind {0:?} is not configured")]
    UnknownKind(String),
    #[error("schedule {0:?} is not configured")]
    UnknownSchedule(String),
    #[error("schedule {0:?} exists already")]
    ScheduleExists(String),
    /// Update or Delete of a `[[schedules]]` entry.
    #[error("schedule {0:?} is defined in the config")]
    ScheduleInConfig(String),
    /// A stored definition that no longer checks here (its kind is gone).
    #[error("schedule {0:?} cannot run here: {1}")]
    ScheduleUnusable(String, String),
    #[error("at most {max} schedules")]
    TooManySchedules { max: usize },
    #[error("backlog is full ({max} jobs waiting)")]
    BacklogFull { max: u64 },
    #[error("depends_on: job {0} not found")]
    UnknownParent(Uuid),
    #[error("idempotency key {key:?} is used by job {existing_id} for another request")]
    KeyConflict { key: String, existing_id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TooManyWatchers> for EngineError {
    fn from(e: TooManyWatchers) -> Self {
        EngineError::TooManyWatchers { max: e.max }
    }
}

/// A configured kind at run time: its settings and its concurrency bound.
#[derive(Debug)]
pub struct Kind {
    pub settings: KindSettings,
    /// Per-kind bound on running jobs (`kinds.X.concurrency`).
    slots: Arc<Semaphore>,
    /// Slots of this kind freed so far (handlers returned): the dispatcher
    /// sizes claims by how many free while a claim commits.
    freed: AtomicUsize,
    /// `handler = "remote"`: claimed only within its workers' room, never
    /// ahead of free slots.
    remote: bool,
}

pub struct Engine {
    store: SharedStore,
    kinds: HashMap<String, Kind>,
    /// Ordering keys and rates of the kinds that set them, for every claim.
    limits: HashMap<String, crate::store::KindLimits>,
    registry: Registry,
    events: Arc<Events>,
    /// Wakes the sweeper early when a new timer (delay, retry) may be sooner
    /// than the one it sleeps for.
    sweeper_wake: Notify,
    metrics: Arc<Metrics>,
    /// Kinds an operator paused: the dispatcher gives them no slots. Read
    /// from the store at start (and every sweep on a shared store).
    paused: Mutex<std::collections::HashSet<String>>,
    /// Outcomes on their way to the store (owned by the completion path).
    completion: completer::Completion,
    /// Worker slots, wake-ups and claims ahead (owned by the dispatcher).
    dispatch: dispatcher::Dispatch,
    /// The drain's stop signals.
    stops: Stops,
    /// Whether new jobs are taken: drain, a store refusing writes, disk.
    intake: Intake,
    /// The attempts running here, for cancel and drain.
    attempts: Attempts,
    /// Set once after start: worker sessions and span export.
    wiring: Wiring,
    /// Fixed at start and read per job.
    settings: Settings,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shared", &self.settings.shared)
            .field("max_backlog", &self.intake.max_backlog)
            .finish_non_exhaustive()
    }
}

/// An attempt running here.
struct RunningAttempt {
    stop: CancellationToken,
    /// When the attempt last reported progress or a log line (micros):
    /// the kind's `heartbeat_timeout` counts from it.
    heard: Arc<std::sync::atomic::AtomicI64>,
    /// The attempt's deadline (micros; 0 until its handler starts): a
    /// worker's Touch moves it, up to the kind's `max_timeout`.
    deadline: Arc<std::sync::atomic::AtomicI64>,
    /// The job's sequence when this attempt was claimed: later changes
    /// announced by a shared store (a cancel on another instance) stop it.
    claimed_at_sequence: u64,
}

/// The engine's background tasks, awaited by [`Engine::drain`].
#[derive(Debug)]
pub struct EngineTasks {
    dispatcher: JoinHandle<tokio::task::JoinSet<()>>,
    sweeper: JoinHandle<()>,
    /// Fires cron schedules; stops with the sweeper.
    scheduler: JoinHandle<()>,
    /// The completion path, ended by drain once no outcome is pending.
    completer: JoinHandle<()>,
    /// Shared stores: lease renewal, until drain has no attempt left.
    heartbeat: Option<JoinHandle<()>>,
    /// Shared stores: transitions from the store to watchers, until drain
    /// ends (the watch streams end right after it).
    feed: Option<JoinHandle<()>>,
}

/// How long a forced stop (a second signal) spends putting running jobs
/// back in the queue before it gives up on them.
pub const FORCED_STOP_BUDGET: Duration = Duration::from_secs(1);

/// Ends a background task when drain returns, whichever way it returns.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shared stores: how often the heartbeat runs (the store renews leases and
/// recounts at its own pace within it; often enough for a 1 s lease).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Drain waits this long at most for pending outcomes to be committed: more
/// than the completion path's retries of one group take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Each kind with its own slots (`concurrency`), by name.
fn kind_table(kinds: Vec<KindSettings>) -> HashMap<String, Kind> {
    kinds
        .into_iter()
        .map(|k| {
            let slots = Arc::new(Semaphore::new(k.concurrency));
            let kind = Kind {
                remote: matches!(k.handler, crate::config::HandlerSpec::Remote),
                settings: k,
                slots,
                freed: AtomicUsize::new(0),
            };
            (kind.settings.name.clone(), kind)
        })
        .collect()
}

impl Engine {
    /// Builds the engine and starts its dispatcher and sweeper.
    pub fn start(
        config: &Config,
        kinds: Vec<KindSettings>,
        registry: Registry,
        store: SharedStore,
        metrics: Arc<Metrics>,
        paused: std::collections::BTreeSet<String>,
    ) -> (Arc<Engine>, EngineTasks) {
        for k in &kinds {
            metrics.configured_kind(&k.name);
            metrics.set_kind_paused(&k.name, paused.contains(&k.name));
        }
        let (hints, hint_rx) = mpsc::channel(config.queue.dispatch_channel);
        let pending_bound =
            (completer::PENDING_PER_WORKER * config.queue.workers).max(completer::PENDING_MIN);
        let (outcomes, outcome_rx) = mpsc::channel(pending_bound);
        let (handed, handed_rx) = mpsc::channel(config.queue.workers.max(1));
        let shared = store.is_shared();
        let max_stop_grace = kinds
            .iter()
            .map(|k| k.stop_grace)
            .max()
            .unwrap_or(crate::config::DEFAULT_STOP_GRACE);
        let limits = kinds
            .iter()
            .filter(|k| k.limits != Default::default())
            .map(|k| (k.name.clone(), k.limits))
            .collect();
        let engine = Arc::new(Engine {
            store,
            limits,
            kinds: kind_table(kinds),
            registry,
            events: Events::new(config.queue.max_watchers),
            sweeper_wake: Notify::new(),
            metrics,
            paused: Mutex::new(paused.into_iter().collect()),
            completion: completer::Completion {
                pending: Arc::new(Semaphore::new(pending_bound)),
                pending_bound,
                outcomes,
            },
            dispatch: dispatcher::Dispatch {
                hints,
                workers: Arc::new(Semaphore::new(config.queue.workers)),
                handed,
                ahead: AtomicUsize::new(0),
                // Shared stores renew leases only of attempts running here
                // (a lease may be as short as 1 s), and a job waiting for a
                // slot is not running yet: no claims ahead there.
                ahead_bound: if shared {
                    0
                } else {
                    (dispatcher::AHEAD_PER_WORKER * config.queue.workers).max(dispatcher::AHEAD_MIN)
                },
                claim_min_batch: if shared {
                    (config.queue.workers / 4).max(1)
                } else {
                    1
                },
            },
            stops: Stops {
                stop_dispatch: CancellationToken::new(),
                stop_attempts: CancellationToken::new(),
                stop_heartbeat: CancellationToken::new(),
            },
            intake: Intake {
                accepting: AtomicBool::new(true),
                write_failing: AtomicBool::new(false),
                disk: crate::disk_reserve::DiskGuard::for_config(config),
                max_backlog: config.queue.max_backlog,
                max_parents: config.queue.max_parents,
            },
            attempts: Attempts {
                progress: Default::default(),
                running: Mutex::new(HashMap::new()),
                late_notices: Mutex::default(),
                max_stop_grace,
            },
            wiring: Wiring {
                remote: std::sync::OnceLock::new(),
                spans: std::sync::OnceLock::new(),
            },
            settings: Settings {
                shared,
                retention: config.retention.finished,
                // `validate` checked them before start; a config that was
                // not validated runs without schedules rather than failing.
                schedules: config.schedules().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "schedules not started");
                    Vec::new()
                }),
            },
        });
        let tasks = engine.clone().spawn_tasks(hint_rx, handed_rx, outcome_rx);
        (engine, tasks)
    }

    /// The background tasks: dispatcher, sweeper, scheduler, completer, and
    /// for a shared store the lease heartbeat and the feed of changes.
    fn spawn_tasks(
        self: Arc<Self>,
        hint_rx: mpsc::Receiver<()>,
        handed_rx: mpsc::Receiver<handover::Handed>,
        outcome_rx: mpsc::Receiver<completer::Pending>,
    ) -> EngineTasks {
        let engine = self;
        let feed = engine.store.changes().map(|feed| {
            // Transitions reach watchers through the store, from whichever
            // instance made them.
            engine.events.use_external_feed();
            tokio::spawn(engine.clone().feed_loop(feed))
        });
        let heartbeat = engine
            .settings
            .shared
            .then(|| tokio::spawn(engine.clone().heartbeat_loop()));
        EngineTasks {
            dispatcher: tokio::spawn(engine.clone().dispatch_loop(hint_rx, handed_rx)),
            sweeper: tokio::spawn(engine.clone().sweep_loop()),
            scheduler: tokio::spawn(engine.clone().schedule_loop()),
            completer: tokio::spawn(engine.clone().complete_loop(outcome_rx)),
            heartbeat,
            feed,
        }
    }

    pub fn kind(&self, name: &str) -> Option<&KindSettings> {
        self.kinds.get(name).map(|k| &k.settings)
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn max_backlog(&self) -> u64 {
        self.intake.max_backlog
    }

    /// Parents (depends_on) one job may have (`queue.max_parents`).
    pub fn max_parents(&self) -> usize {
        self.intake.max_parents
    }

    /// Why submits are refused for disk space, if they are.
    pub fn disk_low(&self) -> Option<String> {
        self.intake.disk.as_ref().and_then(|d| d.low())
    }

    /// The disk reserve's guard, for its background reads.
    pub fn disk(&self) -> Option<&Arc<crate::disk_reserve::DiskGuard>> {
        self.intake.disk.as_ref()
    }

    /// Whether the store refused a write since the last successful probe.
    pub fn write_failing(&self) -> bool {
        self.intake.write_failing.load(Ordering::Acquire)
    }

    /// A probe write went through: the store takes writes again.
    pub fn write_recovered(&self) {
        self.intake.write_failing.store(false, Ordering::Release);
    }

    pub fn is_accepting(&self) -> bool {
        self.intake.accepting.load(Ordering::Acquire)
    }

    /// Each attempt gets a `process {kind}` span from now on.
    pub fn use_spans(&self, spans: crate::otel::Spans) {
        let _ = self.wiring.spans.set(spans);
    }

    /// Remote kinds' jobs go to these worker sessions: claims of a remote
    /// kind are capped by the room its sessions have, and a session that
    /// comes or frees a place wakes the dispatcher.
    pub fn use_workers(&self, workers: Arc<crate::handlers::remote::Workers>) {
        workers.connect_engine(self.dispatch.hints.clone(), self.metrics.clone());
        let _ = self.wiring.remote.set(workers);
    }

    /// How many more attempts of remote kind `k` (named `name`) may be
    /// claimed now: the places of the sessions serving it less the attempts
    /// of it already running (claimed, not yet reported).
    pub(super) fn remote_room(&self, name: &str, k: &Kind) -> usize {
        let Some(w) = self.wiring.remote.get() else {
            return 0;
        };
        let running = k.settings.concurrency - k.slots.available_permits();
        w.capacity(name).saturating_sub(running)
    }

    /// Stores jobs (one commit for the whole batch) and wakes the
    /// dispatcher; a job that finds a worker free starts in that same
    /// commit (see [`handover`]).
    pub async fn submit(&self, mut jobs: Vec<NewJob>) -> Result<Vec<InsertOutcome>, EngineError> {
        if !self.is_accepting() {
            self.metrics.reject("draining");
            return Err(EngineError::Draining);
        }
        if let Some(d) = &self.intake.disk {
            let bytes = jobs.iter().map(|j| j.payload.len() as u64).sum();
            if let Err(why) = d.admit(bytes) {
                self.metrics.reject("disk_reserve");
                return Err(EngineError::DiskReserve(why));
            }
        }
        let mut delayed = jobs
            .iter()
            .any(|j| j.run_at.is_some_and(|t| t > j.created_at));
        let mut held = self.hold_slots(&mut jobs).into_iter();
        let out = match self.store.insert(jobs, self.intake.max_backlog).await {
            Ok(out) => out,
            Err(e) => {
                self.metrics.reject("store_unavailable");
                if matches!(e, StoreError::Unavailable(_)) {
                    self.intake.write_failing.store(true, Ordering::Release);
                    if let Some(d) = &self.intake.disk {
                        d.write_refused();
                    }
                }
                if held.any(|s| s.is_some()) {
                    // Slots held and given back: the dispatcher may want them.
                    self.hint();
                }
                return Err(e.into());
            }
        };
        let mut wake = false;
        for o in &out {
            let slots = held.next().flatten();
            match o {
                InsertOutcome::Created(job) => {
                    self.metrics.submitted(job);
                    match slots.filter(|_| job.state == JobState::Running) {
                        Some(slots) => self.hand_over(job.clone(), slots).await,
                        None => {
                            wake = true;
                            self.changed(None, job);
                        }
                    }
                    continue;
                }
                InsertOutcome::Deduplicated(job) => self.metrics.deduplicated(job),
                InsertOutcome::Merged { job, outcome } => {
                    self.metrics.deduplicated(job);
                    if *outcome != DedupOutcome::Kept {
                        // Same state, new payload or time: watchers see
                        // the new sequence, and the time may be now.
                        self.events.publish(job);
                        wake = true;
                        delayed |= job.next_attempt_at.is_some();
                    }
                }
                InsertOutcome::Conflict { .. } => self.metrics.reject("idempotency_conflict"),
                InsertOutcome::BacklogFull => self.metrics.reject("backlog_full"),
                InsertOutcome::UnknownParent(_) => self.metrics.reject("unknown_parent"),
            }
            // Slots held for a job that was not created go back.
            wake |= slots.is_some();
        }
        if wake {
            self.hint();
        }
        if delayed {
            self.sweeper_wake.notify_one();
        }
        Ok(out)
    }

    pub async fn get(&self, id: Uuid) -> Result<Job, EngineError> {
        self.store.get(id).await?.ok_or(EngineError::NotFound(id))
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, EngineError> {
        Ok(self.store.list(query).await?)
    }

    /// Up to `want` jobs of `query`'s order that also pass `keep` (a filter
    /// the store cannot apply, like labels), reading pages of
    /// `query.limit` rows and at most `max_scan` rows in all. Also returns
    /// the last row read when the scan stopped at `max_scan` with fewer than
    /// `want`: a caller resumes after it.
    pub async fn scan(
        &self,
        mut query: ListQuery,
        want: usize,
        max_scan: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<(Vec<Job>, Option<Uuid>), EngineError> {
        let mut out = Vec::new();
        let mut scanned = 0;
        loop {
            let page = self.store.list(&query).await?;
            scanned += page.len();
            let full = page.len() == query.limit;
            let last = page.last().map(|j| j.id);
            for j in page.into_iter().filter(|j| keep(j)) {
                out.push(j);
                if out.len() == want {
                    return Ok((out, None));
                }
            }
            if !full {
                return Ok((out, None));
            }
            if scanned >= max_scan {
                return Ok((out, last));
            }
            query.after = last;
        }
    }

    /// Cancels a job; a running attempt is told to stop.
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, EngineError> {
        let out = self.store.cancel(id, now_micros()).await?;
        if let CancelOutcome::Cancelled { job, prev } = &out {
            self.changed(Some(*prev), job);
            self.publish_moved();
            if *prev == JobState::Running {
                // The worker may not have started yet: the token is made
                // here then, already cancelled, and the worker picks it up.
                if self.settings.shared {
                    // It may run on another instance: only stop an attempt
                    // here (the others learn of it through the store).
                    let running = self.lock_running();
                    if let Some(r) = running.get(&(id, job.attempt)) {
                        r.stop.cancel();
                    }
                } else {
                    self.attempt_token(id, job.attempt, 0).cancel();
                }
            }
        }
        Ok(out)
    }

    /// The current snapshot and a feed of later changes.
    pub async fn watch(&self, id: Uuid) -> Result<(Job, Subscription), EngineError> {
        let sub = self.events.subscribe(id)?;
        let job = self.get(id).await?;
        Ok((job, sub))
    }

    /// Stops renewing leases without a drain (the server failed): attempts
    /// still running here lose their jobs to other instances after the lease.
    pub fn stop_lease_renewal(&self) {
        self.stops.stop_heartbeat.cancel();
    }

    /// Drain step 3: refuse new jobs, stop claiming.
    pub fn stop_accepting(&self) {
        self.intake.accepting.store(false, Ordering::Release);
        self.stops.stop_dispatch.cancel();
    }

    /// Drain step 4: waits up to `timeout` for running attempts, then stops
    /// the rest (they go back to QUEUED without using up an attempt) and
    /// waits for that, also bounded; then waits (bounded again) until every
    /// outcome handed to the completion path is committed. `force` (a second
    /// signal) cuts every wait short. Returns how many attempts had to be
    /// stopped.
    pub async fn drain(
        &self,
        tasks: EngineTasks,
        timeout: Duration,
        force: &CancellationToken,
    ) -> usize {
        self.stop_accepting();
        let EngineTasks {
            dispatcher,
            sweeper,
            scheduler,
            completer,
            heartbeat,
            feed,
        } = tasks;
        // Ended when drain returns; by then every outcome is written unless
        // drain was forced or the store would not take them (those jobs rerun).
        let _completer = AbortOnDrop(completer.abort_handle());
        let _feed = feed.map(|t| t.abort_handle()).map(AbortOnDrop);
        // Leases are renewed until every attempt has ended, however drain ends.
        let _heartbeat = self.stops.stop_heartbeat.clone().drop_guard();
        let _heartbeat_task = heartbeat.map(|t| t.abort_handle()).map(AbortOnDrop);
        // Both loops stop at once unless a store call hangs; a second
        // signal does not wait for that.
        let loops = async {
            let _ = sweeper.await;
            let _ = scheduler.await;
            dispatcher.await
        };
        tokio::pin!(loops);
        let mut workers = tokio::select! {
            r = &mut loops => match r {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher task failed");
                    return 0;
                }
            },
            _ = force.cancelled() => {
                let deadline = tokio::time::Instant::now() + FORCED_STOP_BUDGET;
                let workers = tokio::time::timeout_at(deadline, &mut loops)
                    .await
                    .ok()
                    .and_then(|r| r.ok());
                return self.forced_stop(workers, deadline).await;
            }
        };
        let wait_all = async { while workers.join_next().await.is_some() {} };
        let finished = tokio::select! {
            _ = tokio::time::timeout(timeout, wait_all) => true,
            _ = force.cancelled() => {
                let deadline = tokio::time::Instant::now() + FORCED_STOP_BUDGET;
                return self.forced_stop(Some(workers), deadline).await;
            }
        };
        let stopped = workers.len();
        if stopped > 0 || !finished {
            tracing::warn!(
                running = stopped,
                "drain timeout reached; stopping running jobs, they go back to the queue"
            );
            self.stops.stop_attempts.cancel();
            let wait_all = async { while workers.join_next().await.is_some() {} };
            tokio::select! {
                r = tokio::time::timeout(self.max_stop_grace() + Duration::from_secs(1), wait_all) => {
                    if r.is_err() {
                        tracing::error!(running = workers.len(), "attempts did not stop in time");
                    }
                }
                _ = force.cancelled() => {
                    let deadline = tokio::time::Instant::now() + FORCED_STOP_BUDGET;
                    return self.forced_stop(Some(workers), deadline).await;
                }
            }
            workers.abort_all();
        }
        self.flush_outcomes(force).await;
        stopped
    }

    /// A second signal: a bounded best effort (until `deadline`, about
    /// [`FORCED_STOP_BUDGET`]) to stop every running attempt and put its job
    /// back in the queue without spending the attempt, as a drain timeout
    /// does. Handlers that do not stop by then are abandoned: their jobs are
    /// taken back at the next start, and that attempt counts. Returns how
    /// many attempts were still running.
    async fn forced_stop(
        &self,
        workers: Option<tokio::task::JoinSet<()>>,
        deadline: tokio::time::Instant,
    ) -> usize {
        self.stops.stop_attempts.cancel();
        let Some(mut workers) = workers else {
            return 0;
        };
        let running = workers.len();
        let wait_all = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, wait_all).await.is_err() {
            tracing::warn!(
                running = workers.len(),
                "forced stop: attempts still running are abandoned; their attempt counts"
            );
        }
        workers.abort_all();
        let all = self.completion.pending_bound as u32;
        if tokio::time::timeout_at(deadline, self.completion.pending.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.pending_outcomes(),
                "forced stop: outcomes not written; those jobs run again"
            );
        }
        running
    }

    /// Waits until the completion path has committed every outcome handed to
    /// it, at most [`FLUSH_TIMEOUT`] (the store retries each group a few
    /// times, then gives up on it) or until `force`.
    async fn flush_outcomes(&self, force: &CancellationToken) {
        let all = self.completion.pending_bound as u32;
        tokio::select! {
            r = tokio::time::timeout(FLUSH_TIMEOUT, self.completion.pending.acquire_many(all)) => {
                if r.is_err() {
                    tracing::error!(
                        pending = self.pending_outcomes(),
                        "outcomes not written in time; those jobs will run again"
                    );
                }
            }
            _ = force.cancelled() => {}
        }
    }

    /// The longest any kind's handler may take to stop.
    pub(super) fn max_stop_grace(&self) -> Duration {
        self.attempts.max_stop_grace
    }

    /// What a lease adds to a job's timeout: it must outlast the timeout and
    /// the handler's stop grace, or the sweeper could requeue a job whose
    /// attempt still runs. Used by every claim and every start at submit.
    pub(super) fn lease_slack(&self) -> Duration {
        LEASE_SLACK + self.attempts.max_stop_grace
    }

    /// "One write, one event", the one transition path: after the store
    /// confirmed a change of `job` from `prev` (`None`: its creation), the
    /// state gauges move and watchers (of the job, and WatchJobs) hear of
    /// it. Nothing else publishes events or moves the state gauges.
    fn changed(&self, prev: Option<JobState>, job: &Job) {
        self.metrics.transition(prev, job);
        self.events.publish(job);
    }

    /// Jobs claimed ahead of free slots, waiting for one (RUNNING in the
    /// store, their handlers not started).
    pub fn claimed_ahead(&self) -> usize {
        self.dispatch.ahead.load(Ordering::Acquire)
    }

    fn hint(&self) {
        let _ = self.dispatch.hints.try_send(());
    }

    /// Hint channel depth, for metrics.
    pub fn hint_depth(&self) -> usize {
        self.dispatch.hints.max_capacity() - self.dispatch.hints.capacity()
    }

    /// The stop token of an attempt (created on first use; a child of the
    /// drain's token). `sequence`: the job's sequence as the caller saw it.
    fn attempt_token(&self, id: Uuid, attempt: u32, sequence: u64) -> CancellationToken {
        let mut running = self.lock_running();
        let r = running
            .entry((id, attempt))
            .or_insert_with(|| RunningAttempt {
                stop: self.stops.stop_attempts.child_token(),
                heard: Arc::new(std::sync::atomic::AtomicI64::new(crate::job::now_micros())),
                deadline: Arc::new(std::sync::atomic::AtomicI64::new(0)),
                claimed_at_sequence: 0,
            });
        r.claimed_at_sequence = r.claimed_at_sequence.max(sequence);
        // Checked under the `running` lock, as the feed records them.
        if self.settings.shared
            && sequence > 0
            && self.lock_late_notices().moved_since(&id, sequence)
        {
            tracing::info!(job = %id, attempt, "job changed on another instance before its attempt started; stopping it");
            r.stop.cancel();
        }
        r.stop.clone()
    }

    fn lock_late_notices(&self) -> std::sync::MutexGuard<'_, feed::LateNotices> {
        self.attempts
            .late_notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, u32), RunningAttempt>> {
        self.attempts
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
