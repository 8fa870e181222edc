//! Durable job storage. One [`Store`] trait, three places to keep jobs:
//! [`memory`] (tests, throwaway use), [`sqlite`] (the embedded default) and
//! [`postgres`] (several instances on one queue). Every state change is one atomic store write that
//! returns the job's new snapshot; the transition rules themselves live in
//! [`transition`] so that every implementation applies the same ones.

pub mod codec;
pub mod dedup;
pub mod deps;
pub mod fairness;
pub mod limits;
pub mod memory;
pub mod postgres;
pub mod sqlite;
pub mod transition;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::job::{Job, JobState, Micros, NewJob};
pub use limits::{KindLimits, RateLimit};

/// Why a store operation failed. None of these is the client's fault.
/// Each carries a [`Detail`]: what to say, and the driver's error that
/// caused it when there is one (the error's `source`). Cheap to clone, so
/// that one failed write can answer every request of its batch.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The store cannot take writes now (disk full, read-only, I/O error,
    /// writer gone). Submits answer UNAVAILABLE; nothing acknowledged is lost.
    Unavailable(Detail),
    /// The data on disk is not something this jobd can use.
    Corrupt(Detail),
    /// A bug or an unexpected condition; details go to the log.
    Internal(Detail),
}

impl StoreError {
    /// What the error says, after its kind.
    pub fn detail(&self) -> &Detail {
        match self {
            StoreError::Unavailable(d) | StoreError::Corrupt(d) | StoreError::Internal(d) => d,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(d) => write!(f, "store unavailable: {d}"),
            StoreError::Corrupt(d) => write!(f, "store data unusable: {d}"),
            StoreError::Internal(d) => write!(f, "store error: {d}"),
        }
    }
}

/// Written by hand rather than derived: the source is the driver's error
/// itself (not the [`Detail`] around it), so it can be downcast.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = self.detail().cause.as_deref()?;
        Some(cause)
    }
}

/// A [`StoreError`]'s message, and the error that caused it, if any.
#[derive(Debug, Clone)]
pub struct Detail {
    message: String,
    /// Shared, so that the error can be cloned.
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Detail {
    pub fn new(message: impl Into<String>) -> Detail {
        Detail {
            message: message.into(),
            cause: None,
        }
    }

    /// The same message, caused by `e`.
    pub fn because(self, e: impl std::error::Error + Send + Sync + 'static) -> Detail {
        Detail {
            cause: Some(Arc::new(e)),
            ..self
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads as its message, as the `String` it replaced did
/// (`StoreError::Corrupt(m) => m.contains("newer")`).
impl std::ops::Deref for Detail {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Detail {
        Detail::new(message)
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Detail {
        Detail::new(message)
    }
}

/// What happened to one submitted job.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Created(Job),
    /// Same idempotency key, same request: the existing job.
    Deduplicated(Job),
    /// A job of the kind held the submit's dedup key: the job as it is now
    /// (unchanged for KEEP), and what the merge did ([`dedup::merge`]).
    Merged {
        job: Job,
        outcome: dedup::DedupOutcome,
    },
    /// Same idempotency key, different request.
    Conflict {
        existing_id: Uuid,
    },
    /// The backlog is at its bound; nothing was stored.
    BacklogFull,
    /// A parent (depends_on) does not exist; nothing was stored.
    UnknownParent(Uuid),
}

/// The answer to a submit whose idempotency key `existing` holds: the same
/// job when the request (its hash) is the same, a conflict otherwise.
pub fn idempotent(existing: &Job, request_hash: &[u8; 32]) -> InsertOutcome {
    if existing.request_hash == *request_hash {
        InsertOutcome::Deduplicated(existing.clone())
    } else {
        InsertOutcome::Conflict {
            existing_id: existing.id,
        }
    }
}

/// How an attempt ended, as the engine decided it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: Bytes,
    },
    /// RUNNING -> RETRY_WAIT until `at`.
    Retry {
        error: String,
        at: Micros,
    },
    /// RUNNING -> FAILED (permanent error or attempts used up).
    Failed {
        error: String,
    },
    /// RUNNING -> QUEUED without using up the attempt (drain).
    Requeue {
        reason: String,
    },
}

/// One attempt's outcome, for [`Store::finish_many`].
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: Uuid,
    pub attempt: u32,
    pub outcome: Outcome,
    /// When the attempt ended (its `finished_at` / `updated_at`).
    pub now: Micros,
    /// Where it ran, for the attempt history ("local", a worker's id).
    pub worker: String,
}

/// Per outcome of [`Store::finish_many`], what [`Store::finish`] answers.
pub type FinishResults = Vec<Result<Option<Job>, StoreError>>;

/// Answer to a cancel request.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    NotFound,
    /// The job was `prev` (QUEUED, RETRY_WAIT or RUNNING) and is now CANCELLED.
    Cancelled {
        job: Job,
        prev: JobState,
    },
    /// Already CANCELLED: nothing changed.
    AlreadyCancelled(Job),
    /// SUCCEEDED or FAILED: cannot be cancelled.
    AlreadyFinished(Job),
}

/// What RetryJobs did to one job.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    NotFound,
    /// The job was `prev` (FAILED or CANCELLED) and is now QUEUED with its
    /// attempts reset.
    Retried {
        job: Job,
        prev: JobState,
    },
    /// Not FAILED or CANCELLED (succeeded, or still waiting or running):
    /// left as it is.
    NotRetryable(Job),
    /// The backlog is at its bound: left as it is.
    BacklogFull,
}

/// Which jobs the dispatcher may take now.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub now: Micros,
    /// At most this many jobs in all.
    pub limit: usize,
    /// Kinds that may run, each with how many more of it may start. Jobs of
    /// other kinds (saturated, or no longer configured) stay QUEUED.
    pub kinds: HashMap<String, usize>,
    /// Added to each job's timeout to form its lease.
    pub lease_slack: Duration,
    /// Ordering keys and rate limits of the kinds that set them.
    pub limits: HashMap<String, KindLimits>,
}

/// What a claim took, and which kinds its rate limit held back.
#[derive(Debug, Clone, Default)]
pub struct ClaimOutcome {
    pub jobs: Vec<Job>,
    /// Jobs the claim found past their start deadline: FAILED instead of
    /// started (they were QUEUED).
    pub expired: Vec<Job>,
    /// Kinds with jobs left QUEUED for want of tokens, each with when its
    /// bucket next holds one (the dispatcher claims again then).
    pub rate_limited: Vec<(String, Micros)>,
}

/// A page of ListJobs.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub ordering_key: Option<String>,
    /// Jobs after this id in the page order (the previous page's last id).
    pub after: Option<Uuid>,
    pub limit: usize,
    /// Newest first (descending id) instead of oldest first.
    pub newest_first: bool,
}

/// A transition some instance made, as a shared store announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Job `id` now has `sequence`.
    Job { id: Uuid, sequence: u64 },
    /// Announcements may have been missed (the feed reconnected or
    /// overflowed): re-read whatever is watched or running.
    Resync,
}

/// A schedule's stored state (the `schedules` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub id: String,
    /// The next fire not yet taken by any instance (µs, UTC).
    pub next_fire_at: Micros,
    pub paused: bool,
    /// The job of the last fire (for `overlap = "skip"` and ListSchedules).
    pub last_job_id: Option<Uuid>,
    /// A schedule created through the API: its definition (the engine's
    /// JSON of [`crate::config::ScheduleConfig`], opaque here). `None` for
    /// a config schedule's row.
    pub definition: Option<String>,
}

/// What [`Store::create_schedule`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateSchedule {
    Created,
    /// A schedule created through the API has this id already.
    Exists,
    /// `max` schedules created through the API are stored already.
    Full,
}

/// Number of jobs in each state.
pub type StateCounts = BTreeMap<JobState, u64>;

/// The store contract; `tests/it/store_contract.rs` runs the same suite
/// against every implementation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores new jobs atomically, all in one commit: when this returns, every
    /// `Created` job is durable. Idempotency keys are checked inside the same
    /// commit, and the backlog bound (QUEUED + RETRY_WAIT) per job.
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError>;
    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError>;
    /// Jobs in id (creation) order.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;
    /// QUEUED jobs that are due -> RUNNING, highest priority first, then
    /// oldest; each gets a new attempt number (its fencing token) and a lease.
    /// Kinds in `req.limits` are held to their ordering keys and rates
    /// inside the same commit (see [`limits`]).
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError>;
    /// Ends attempt `attempt` of a RUNNING job. `None` when the job is no
    /// longer RUNNING that attempt (cancelled, or a stale lease): fencing.
    async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
    ) -> Result<Option<Job>, StoreError>;
    /// Ends many attempts, each exactly as [`Store::finish`] would (same
    /// fencing), in as few commits as the store can: the engine's completion
    /// path hands outcomes over in groups so one durable commit serves many.
    /// Answers one result per item, in order; an item's error leaves the
    /// others stored. An outer error means none of them was stored.
    /// The default runs `finish` for all of them at once.
    async fn finish_many(&self, items: Vec<Finish>) -> Result<FinishResults, StoreError> {
        Ok(futures_util::future::join_all(
            items
                .into_iter()
                .map(|f| self.finish(f.id, f.attempt, f.outcome, f.now)),
        )
        .await)
    }
    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError>;
    /// Delayed QUEUED jobs whose `run_at` came become claimable (claims only
    /// look at jobs without a pending time, so delayed jobs never slow them).
    /// Returns how many.
    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError>;
    /// RETRY_WAIT jobs whose time came -> QUEUED.
    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// RUNNING jobs whose lease ran out -> QUEUED (or FAILED when that was
    /// the last attempt). The attempt counts: see [`transition::lease_lost`].
    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// At start: every RUNNING job is from a previous life of this daemon.
    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError>;
    /// The earliest time after `after` at which a delayed job, a retry or a
    /// lease becomes due, so the sweeper can sleep exactly until then.
    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError>;
    async fn counts(&self) -> Result<StateCounts, StoreError>;
    /// Unfinished jobs by state and kind (to start the metrics' gauges).
    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError>;
    /// Distinct ordering keys with QUEUED jobs, for each of `kinds` (a
    /// gauge of keys with work waiting).
    async fn keys_waiting(&self, kinds: &[String]) -> Result<Vec<(String, u64)>, StoreError>;
    /// FAILED jobs by kind (ListKinds; kept apart from [`Store::count_by_kind`],
    /// which the gauges re-read often, because dead jobs can be many).
    async fn count_failed_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Each FAILED or CANCELLED job in `ids` back to QUEUED with its attempts
    /// reset ([`transition::retry`]), one outcome per id in order. Each job's
    /// change is atomic and checked against the backlog bound like a submit.
    async fn retry(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<RetryOutcome>, StoreError>;
    /// Pauses or resumes a kind. Stored, so a pause survives restarts and
    /// holds for every instance on a shared store.
    async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
        now: Micros,
    ) -> Result<(), StoreError>;
    /// The kinds paused now.
    async fn paused_kinds(&self) -> Result<BTreeSet<String>, StoreError>;
    /// Adds a schedule's row with its first fire time unless it exists (a
    /// restart keeps the stored time, so missed fires are known).
    async fn init_schedule(&self, id: &str, next_fire_at: Micros) -> Result<(), StoreError>;
    /// Every schedule row, in id order (at most `config::MAX_SCHEDULES` are
    /// configured; rows of removed schedules stay and are ignored).
    async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError>;
    /// Takes the fire at `old`: moves `next_fire_at` from `old` to `new` only
    /// if it still is `old`. True when this call moved it, so of several
    /// instances only one submits a fire.
    async fn advance_schedule(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError>;
    /// Records the job of the last fire.
    async fn set_schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError>;
    /// Pauses or resumes a schedule; false when it has no row.
    async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError>;
    /// Stores a schedule created through the API: its row, holding
    /// `definition` and its first fire, unpaused. A row without a definition
    /// (left by a config schedule since removed) is taken over. At most
    /// `max` rows with a definition, checked in the same commit.
    async fn create_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Micros,
        max: usize,
    ) -> Result<CreateSchedule, StoreError>;
    /// Replaces the definition of a schedule created through the API, and
    /// its next fire when `next_fire_at` is given; false when there is no
    /// such schedule (config rows are never changed here).
    async fn update_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Option<Micros>,
    ) -> Result<bool, StoreError>;
    /// Deletes a schedule created through the API (row and definition);
    /// false when there is no such schedule.
    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes up to `limit` terminal jobs that finished before `before`.
    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError>;
    /// Stores `progress` as the job's latest if `attempt` is its running
    /// attempt, moving its sequence (an event with no state change);
    /// `None` (and nothing written) otherwise.
    async fn set_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: crate::job::Progress,
    ) -> Result<Option<Job>, StoreError>;
    /// Appends `lines` (written at `at`) to the job's log if `attempt` is
    /// its running attempt, keeping its newest `keep` lines; false (and
    /// nothing written) otherwise.
    async fn append_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
        at: Micros,
        keep: usize,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` jobs not started (QUEUED, RETRY_WAIT, WAITING) whose
    /// start deadline passed by `now`, ended FAILED ("expired: …").
    async fn expire_unstarted(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<deps::Moved>, StoreError>;
    /// Transitions this store made as consequences of others (children
    /// released or cancelled by their parents' ends, in finish, cancel,
    /// retry and the sweeps) since the last call, for the engine to
    /// publish. Each is handed out once.
    fn take_moved(&self) -> Vec<deps::Moved>;
    /// Up to `limit` WAITING jobs whose parents are all terminal (a
    /// release left undone) moved where their parents say.
    async fn release_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<deps::Moved>, StoreError>;
    /// Up to `limit` ids of the jobs that depend on `id`.
    async fn children(&self, id: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError>;
    /// Stores `checkpoint` as the job's (handed to its next attempt) if
    /// `attempt` is its running attempt; false (and nothing written)
    /// otherwise. Durable when it returns true.
    async fn set_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: bytes::Bytes,
    ) -> Result<bool, StoreError>;
    /// Pushes the lease of `(id, attempt)` to at least `until` while that
    /// attempt runs (a worker's Touch moved its deadline); false when it no
    /// longer runs. Stores whose leases are renewed while the attempt runs
    /// (PostgreSQL) need not write anything.
    async fn extend_lease(&self, id: Uuid, attempt: u32, until: Micros)
        -> Result<bool, StoreError>;
    /// Up to `limit` of the job's log lines with `seq` above `after`,
    /// oldest first.
    async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError>;
    /// Flushes and closes; later calls fail with `Unavailable`.
    async fn close(&self) -> Result<(), StoreError>;

    /// Several instances share this store: only the store knows every
    /// transition and every count.
    fn is_shared(&self) -> bool {
        false
    }
    /// Shared stores: a feed of every transition any instance makes. `None`
    /// for single-instance stores (the engine publishes its own).
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }
    /// Shared stores: job `id`'s snapshots after sequence `after`, oldest
    /// first, from a short event history (WatchStatus across instances).
    async fn events_since(&self, _id: Uuid, _after: u64) -> Result<Vec<Job>, StoreError> {
        Ok(Vec::new())
    }
    /// Called several times a second with the jobs whose attempts run here: shared
    /// stores renew their leases (and only theirs: a job whose result could
    /// not be written must still time out and run elsewhere). When it
    /// renewed, returns the ids it renewed: a running id missing from them is
    /// no longer this instance's to run.
    async fn heartbeat(
        &self,
        _now: Micros,
        _running: &[Uuid],
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        Ok(None)
    }
    /// Whether the store answers now (drives health for remote stores).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A small durable write, to learn whether a store that refused writes
    /// (a full disk) takes them again. Default: [`Store::ping`].
    async fn probe_write(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}

pub type SharedStore = Arc<dyn Store>;

pub use crate::config::StoreUrl;

/// Opens the store a URL names: `memory:`, `sqlite:PATH`, `postgres://...`
/// (with default PostgreSQL settings).
pub async fn open(url: &str) -> Result<SharedStore, StoreError> {
    open_with(url, &crate::config::PostgresConfig::default()).await
}

/// Opens the store a URL names, with the `[postgres]` settings.
pub async fn open_with(
    url: &str,
    pg: &crate::config::PostgresConfig,
) -> Result<SharedStore, StoreError> {
    open_bounded(url, pg, crate::config::DEFAULT_MAX_MEMORY_BYTES).await
}

/// Opens the store the config names, with all its settings.
pub async fn open_for(config: &crate::config::Config) -> Result<SharedStore, StoreError> {
    open_bounded(
        &config.store,
        &config.postgres,
        config.queue.max_memory_bytes,
    )
    .await
}

/// `max_memory_bytes`: the payload and result bytes `memory:` may hold.
async fn open_bounded(
    url: &str,
    pg: &crate::config::PostgresConfig,
    max_memory_bytes: u64,
) -> Result<SharedStore, StoreError> {
    let parsed = StoreUrl::parse(url)
        .map_err(|e| StoreError::Internal(Detail::new(e.to_string()).because(e)))?;
    match parsed {
        StoreUrl::Memory => Ok(Arc::new(memory::MemoryStore::with_max_bytes(
            max_memory_bytes,
        ))),
        StoreUrl::Sqlite(path) => sqlite::SqliteStore::open(path)
            .await
            .map(|s| Arc::new(s) as SharedStore),
        StoreUrl::Postgres(url) => postgres::PostgresStore::open(&url, pg)
            .await
            .map(|s| Arc::new(s) as SharedStore),
    }
}
