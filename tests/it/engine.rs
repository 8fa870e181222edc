//! The engine's completion path, driven directly (no gRPC): outcomes are
//! committed in groups after the worker slot is freed, a stalled store
//! holds the pool back instead of piling outcomes up, and drain waits for
//! outcomes not yet committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use jobd::config::Config;
use jobd::engine::{Engine, EngineTasks};
use jobd::handlers::{Handler, HandlerError, JobContext, Output, Registry};
use jobd::job::{now_micros, Job, JobState, Micros, NewJob};
use jobd::metrics::Metrics;
use jobd::store::memory::MemoryStore;
use jobd::store::{
    CancelOutcome, ClaimOutcome, ClaimRequest, Finish, FinishResults, InsertOutcome, ListQuery,
    Outcome, SharedStore, StateCounts, Store, StoreError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The memory store, except that writing outcomes waits while the gate is
/// closed (a store stalled on its disk), and the size of every group of
/// outcomes it is handed is recorded.
struct GatedStore {
    inner: MemoryStore,
    open: watch::Sender<bool>,
    groups: Mutex<Vec<usize>>,
    /// Inserts answer UNAVAILABLE while set (a full disk).
    refuse_inserts: std::sync::atomic::AtomicBool,
}

impl GatedStore {
    fn new(open: bool) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: MemoryStore::new(),
            open: watch::channel(open).0,
            groups: Mutex::default(),
            refuse_inserts: Default::default(),
        })
    }

    async fn gate(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|o| *o).await;
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        if self
            .refuse_inserts
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Unavailable("disk full".into()));
        }
        self.inner.insert(jobs, max_backlog).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        self.inner.list(query).await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.inner.claim(req).await
    }
    async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
    ) -> Result<Option<Job>, StoreError> {
        self.gate().await;
        self.groups.lock().unwrap().push(1);
        self.inner.finish(id, attempt, outcome, now).await
    }
    async fn finish_many(&self, items: Vec<Finish>) -> Result<FinishResults, StoreError> {
        self.gate().await;
        self.groups.lock().unwrap().push(items.len());
        self.inner.finish_many(items).await
    }
    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError> {
        self.inner.cancel(id, now).await
    }
    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError> {
        self.inner.release_delayed(now, limit).await
    }
    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.promote_due(now, limit).await
    }
    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.expire_leases(now, limit).await
    }
    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError> {
        self.inner.recover(now).await
    }
    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError> {
        self.inner.next_due_at(after).await
    }
    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.inner.counts().await
    }
    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError> {
        self.inner.count_by_kind().await
    }
    async fn keys_waiting(&self, kinds: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.keys_waiting(kinds).await
    }
    async fn count_failed_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.count_failed_by_kind().await
    }
    async fn retry(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<jobd::store::RetryOutcome>, StoreError> {
        self.inner.retry(ids, now, max_backlog).await
    }
    async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
        now: Micros,
    ) -> Result<(), StoreError> {
        self.inner.set_kind_paused(kind, paused, now).await
    }
    async fn paused_kinds(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.inner.paused_kinds().await
    }
    async fn init_schedule(&self, id: &str, at: Micros) -> Result<(), StoreError> {
        self.inner.init_schedule(id, at).await
    }
    async fn schedules(&self) -> Result<Vec<jobd::store::ScheduleRow>, StoreError> {
        self.inner.schedules().await
    }
    async fn advance_schedule(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        self.inner.advance_schedule(id, old, new).await
    }
    async fn set_schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        self.inner.set_schedule_last_job(id, job).await
    }
    async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        self.inner.set_schedule_paused(id, paused).await
    }
    async fn create_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Micros,
        max: usize,
    ) -> Result<jobd::store::CreateSchedule, StoreError> {
        self.inner
            .create_schedule(id, definition, next_fire_at, max)
            .await
    }
    async fn update_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Option<Micros>,
    ) -> Result<bool, StoreError> {
        self.inner
            .update_schedule(id, definition, next_fire_at)
            .await
    }
    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_schedule(id).await
    }
    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError> {
        self.inner.prune(before, limit).await
    }
    async fn set_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: jobd::job::Progress,
    ) -> Result<Option<Job>, StoreError> {
        self.inner.set_progress(id, attempt, progress).await
    }
    async fn append_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
        at: Micros,
        keep: usize,
    ) -> Result<bool, StoreError> {
        self.inner.append_logs(id, attempt, lines, at, keep).await
    }
    async fn expire_unstarted(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<jobd::store::deps::Moved>, StoreError> {
        self.inner.expire_unstarted(now, limit).await
    }
    fn take_moved(&self) -> Vec<jobd::store::deps::Moved> {
        self.inner.take_moved()
    }
    async fn release_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<jobd::store::deps::Moved>, StoreError> {
        self.inner.release_waiting(now, limit).await
    }
    async fn children(&self, id: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.inner.children(id, limit).await
    }
    async fn set_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        self.inner.set_checkpoint(id, attempt, checkpoint).await
    }
    async fn extend_lease(
        &self,
        id: Uuid,
        attempt: u32,
        until: Micros,
    ) -> Result<bool, StoreError> {
        self.inner.extend_lease(id, attempt, until).await
    }
    async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<jobd::job::LogLine>, StoreError> {
        self.inner.logs(id, after, limit).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

/// Counts how often each job's handler ran.
#[derive(Default)]
struct Counting {
    runs: Mutex<HashMap<Uuid, u32>>,
}

impl Counting {
    fn total(&self) -> u32 {
        self.runs.lock().unwrap().values().sum()
    }
}

#[async_trait]
impl Handler for Counting {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        *self.runs.lock().unwrap().entry(job.id).or_default() += 1;
        Ok(Output::default())
    }
}

fn start(store: SharedStore, workers: usize) -> (Arc<Engine>, EngineTasks, Arc<Counting>) {
    let mut config = Config::default().with_default_kinds();
    config.queue.workers = workers;
    let kinds = config.validate().unwrap();
    let remote = jobd::handlers::remote::Workers::new(Duration::from_secs(5), 1);
    let mut registry = Registry::from_kinds(&kinds, &remote).unwrap();
    let counting = Arc::new(Counting::default());
    registry.register("echo", counting.clone());
    let (engine, tasks) = Engine::start(
        &config,
        kinds,
        registry,
        store,
        Arc::new(Metrics::new()),
        Default::default(),
    );
    (engine, tasks, counting)
}

fn echo_job() -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: "echo".into(),
        max_attempts: 3,
        priority: 0,
        idempotency_key: None,
        labels: BTreeMap::new(),
        payload: Bytes::new(),
        timeout: Duration::from_secs(10),
        run_at: None,
        request_hash: [0; 32],
        created_at: now_micros(),
        ordering_key: None,
        trace: None,
        start: None,
        parents: Vec::new(),
        on_parent_failure: Default::default(),
        start_before: None,
        dedup: None,
        fairness_key: String::new(),
    }
}

async fn submit(engine: &Engine, n: usize) -> Vec<Uuid> {
    let jobs: Vec<NewJob> = (0..n).map(|_| echo_job()).collect();
    let ids = jobs.iter().map(|j| j.id).collect();
    for o in engine.submit(jobs).await.unwrap() {
        assert!(matches!(o, InsertOutcome::Created(_)), "{o:?}");
    }
    ids
}

/// Polls `cond` every few milliseconds for up to 10 s.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn count(store: &SharedStore, s: JobState) -> u64 {
    store.counts().await.unwrap().get(&s).copied().unwrap_or(0)
}

/// A store that stops taking outcomes holds the pool back at the documented
/// bound (pending outcomes: 4 × workers but at least 256, plus one finished
/// attempt per worker waiting for room); jobs stay RUNNING and unannounced until their
/// outcome is committed; then everything finishes exactly once, in groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_store_holds_the_pool_back() {
    const WORKERS: usize = 2;
    let gated = GatedStore::new(false);
    let store: SharedStore = gated.clone();
    let (engine, tasks, counting) = start(store.clone(), WORKERS);
    let bound = engine.pending_bound();
    assert_eq!(bound, 256);
    const N: usize = 400;
    let ids = submit(&engine, N).await;

    until("the pool to fill up", async || {
        counting.total() as usize == bound + WORKERS
    })
    .await;
    assert_eq!(engine.pending_outcomes(), bound);
    // Nothing more starts while the store stalls. (Absence needs a wait;
    // the dispatcher and sweeper would claim within milliseconds.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counting.total() as usize, bound + WORKERS);
    assert_eq!(engine.pending_outcomes(), bound);
    // Jobs claimed ahead of free slots are RUNNING too, without a handler.
    let ahead = engine.claimed_ahead();
    assert!(ahead <= 256, "{ahead}");
    assert_eq!(
        count(&store, JobState::Running).await as usize,
        bound + WORKERS + ahead
    );
    assert_eq!(count(&store, JobState::Succeeded).await, 0);
    // A job whose handler returned is still RUNNING for its watchers.
    let ran = *counting.runs.lock().unwrap().keys().next().unwrap();
    let (snapshot, sub) = engine.watch(ran).await.unwrap();
    assert_eq!(snapshot.state, JobState::Running);

    gated.open.send_replace(true);
    until("every job to succeed", async || {
        count(&store, JobState::Succeeded).await == N as u64
    })
    .await;
    loop {
        let j = sub.next().await.expect("the watch stays open");
        if j.state != JobState::Running {
            assert_eq!(j.state, JobState::Succeeded);
            break;
        }
    }
    let runs = counting.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), N);
    assert!(ids.iter().all(|id| runs[id] == 1), "each job ran once");
    let groups = gated.groups.lock().unwrap().clone();
    assert_eq!(groups.iter().sum::<usize>(), N, "each outcome written once");
    assert!(
        groups.iter().any(|&n| n > 1),
        "outcomes are written in groups: {groups:?}"
    );
    engine
        .drain(tasks, Duration::from_secs(5), &CancellationToken::new())
        .await;
}

/// Drain returns only once every outcome handed to the completion path is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_pending_outcomes() {
    let gated = GatedStore::new(false);
    let store: SharedStore = gated.clone();
    let (engine, tasks, counting) = start(store.clone(), 2);
    submit(&engine, 5).await;
    until("five outcomes pending", async || {
        engine.pending_outcomes() == 5
    })
    .await;
    assert_eq!(counting.total(), 5);

    let e = engine.clone();
    let drain = tokio::spawn(async move {
        e.drain(tasks, Duration::from_secs(5), &CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!drain.is_finished(), "drain waits for the store");
    assert_eq!(count(&store, JobState::Running).await, 5);

    gated.open.send_replace(true);
    let stopped = tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain ends once outcomes are written")
        .unwrap();
    assert_eq!(stopped, 0);
    assert_eq!(engine.pending_outcomes(), 0);
    assert_eq!(count(&store, JobState::Succeeded).await, 5);
    assert_eq!(count(&store, JobState::Running).await, 0);
}

/// A submit that finds the worker free holds its slot through the insert.
/// When the store refuses the insert, the slot goes back: with one worker,
/// a slot kept would leave every later job waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_insert_gives_back_the_slot_it_held() {
    let gated = GatedStore::new(true);
    let store: SharedStore = gated.clone();
    let (engine, tasks, counting) = start(store.clone(), 1);
    gated
        .refuse_inserts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        assert!(engine.submit(vec![echo_job()]).await.is_err());
    }
    gated
        .refuse_inserts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let out = engine.submit(vec![echo_job()]).await.unwrap();
    // Started at insert, or QUEUED when the dispatcher's claim (woken by
    // the slots given back) held the worker just then: either way it runs.
    assert!(matches!(out[0], InsertOutcome::Created(_)), "{out:?}");
    until("the job ran", async || counting.total() == 1).await;
    until("its outcome is stored", async || {
        count(&store, JobState::Succeeded).await == 1
    })
    .await;
    engine
        .drain(tasks, Duration::from_secs(5), &CancellationToken::new())
        .await;
}

/// Through the real SQLite store (group commit): many short jobs, every
/// outcome committed once, none lost, none run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outcomes_are_neither_lost_nor_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let store = jobd::store::open(&format!("sqlite:{}/t.db", dir.path().display()))
        .await
        .unwrap();
    let (engine, tasks, counting) = start(store.clone(), 16);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(submit(&engine, 300).await);
    }
    until("every job to succeed", async || {
        count(&store, JobState::Succeeded).await == 3000
    })
    .await;
    engine
        .drain(tasks, Duration::from_secs(5), &CancellationToken::new())
        .await;
    let runs = counting.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 3000);
    assert!(ids.iter().all(|id| runs[id] == 1), "each job ran once");
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), 3000, "{counts:?}");
    store.close().await.unwrap();
}
