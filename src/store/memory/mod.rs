//! In-memory store: for tests and throwaway use. Nothing survives a restart.
//! A single mutex guards everything; every operation is short and never
//! awaits while holding it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::limits::Bucket;
use super::{
    transition, CancelOutcome, ClaimOutcome, ClaimRequest, CreateSchedule, InsertOutcome,
    ListQuery, Outcome, RetryOutcome, ScheduleRow, StateCounts, Store, StoreError,
};
use crate::job::{Job, JobState, Micros, NewJob};

mod claim;
mod deps;
mod insert;
mod schedules;

pub struct MemoryStore {
    inner: Mutex<Inner>,
    closed: AtomicBool,
    /// Payload and result bytes held at most (`queue.max_memory_bytes`):
    /// every job lives in RAM here, so the job-count bound alone would let
    /// 1,000 jobs of 1 MiB take 1 GiB. Past it Submit is RESOURCE_EXHAUSTED.
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_max_bytes(crate::config::DEFAULT_MAX_MEMORY_BYTES)
    }
}

struct Entry {
    job: Job,
    /// Insertion order: the FIFO tie-breaker within a priority.
    seq: u64,
    /// The job's newest log lines (at most the `keep` of the last append).
    logs: std::collections::VecDeque<crate::job::LogLine>,
}

/// The jobs plus indexes derived from them; `unindex`/`index` keep the
/// indexes in step around every change.
#[derive(Default)]
struct Inner {
    jobs: BTreeMap<Uuid, Entry>,
    next_seq: u64,
    /// Due QUEUED jobs per kind, in claim order (priority, then submit
    /// order): a claim reads each kind only as far as its budget.
    ready: HashMap<String, BTreeSet<(Reverse<i32>, u64, Uuid)>>,
    delayed: BTreeSet<(Micros, Uuid)>,
    retries: BTreeSet<(Micros, Uuid)>,
    leases: BTreeSet<(Micros, Uuid)>,
    idempotency: HashMap<String, Uuid>,
    /// The job last given each (kind, dedup key); it holds the key only
    /// while `dedup::holds_key` says so.
    dedup: HashMap<(String, String), Uuid>,
    counts: StateCounts,
    /// Payload and result bytes of every job held.
    bytes: u64,
    paused: BTreeSet<String>,
    schedules: BTreeMap<String, ScheduleRow>,
    /// Unfinished jobs per (kind, ordering key), for the claim's key check.
    by_key: HashMap<(String, String), KeyJobs>,
    /// Rated kinds' token buckets.
    buckets: HashMap<String, Bucket>,
    /// Due QUEUED jobs per kind and fairness key, in claim order: a
    /// round_robin claim reads each key's heads (see `claim.rs`).
    fair: HashMap<String, claim::ByKey>,
    /// Each round_robin kind's key served last.
    cursors: HashMap<String, String>,
    /// Each fairness key's bucket (`key_rate`).
    key_buckets: super::fairness::KeyBuckets,
    /// Who depends on whom: children by parent.
    children: HashMap<Uuid, Vec<Uuid>>,
    /// WAITING jobs, for the sweeper's re-check.
    waiting_jobs: BTreeSet<Uuid>,
    /// Start deadlines of jobs not started (QUEUED, RETRY_WAIT, WAITING).
    deadlines: BTreeSet<(Micros, Uuid)>,
    /// Children moved by their parents' ends, not yet taken by the engine.
    moved: Vec<super::deps::Moved>,
}

/// The unfinished jobs of one ordering key.
#[derive(Default)]
struct KeyJobs {
    /// RUNNING or RETRY_WAIT: each holds a place.
    busy: usize,
    /// QUEUED, by submit order.
    queued: BTreeSet<u64>,
}

impl Inner {
    fn keys(&mut self, e: &Entry, add: bool) {
        let j = &e.job;
        fn set<T: Ord>(s: &mut BTreeSet<T>, k: T, add: bool) {
            if add {
                s.insert(k);
            } else {
                s.remove(&k);
            }
        }
        match j.state {
            // A delayed job waits in `delayed` only: claims read `ready`.
            JobState::Queued => match j.next_attempt_at {
                Some(t) => set(&mut self.delayed, (t, j.id), add),
                None => {
                    let k = (Reverse(j.priority), e.seq, j.id);
                    self.fair_index(j, k, add);
                    // The kind's name is copied once, not at every change.
                    match self.ready.get_mut(&j.kind) {
                        Some(ready) => set(ready, k, add),
                        None if add => {
                            self.ready.insert(j.kind.clone(), BTreeSet::from([k]));
                        }
                        None => {}
                    }
                }
            },
            JobState::RetryWait => {
                if let Some(t) = j.next_attempt_at {
                    set(&mut self.retries, (t, j.id), add);
                }
            }
            JobState::Running => {
                if let Some(t) = j.lease_expires_at {
                    set(&mut self.leases, (t, j.id), add);
                }
            }
            JobState::Waiting => set(&mut self.waiting_jobs, j.id, add),
            _ => {}
        }
        if let Some(t) = j.start_before.filter(|_| j.state.is_waiting()) {
            set(&mut self.deadlines, (t, j.id), add);
        }
        if let Some(key) = j.ordering_key.as_ref().filter(|_| !j.state.is_terminal()) {
            let slot = (j.kind.clone(), key.clone());
            let k = self.by_key.entry(slot.clone()).or_default();
            match (j.state, add) {
                (JobState::Queued, true) => {
                    k.queued.insert(e.seq);
                }
                (JobState::Queued, false) => {
                    k.queued.remove(&e.seq);
                }
                (_, true) => k.busy += 1,
                (_, false) => k.busy -= 1,
            }
            if k.busy == 0 && k.queued.is_empty() {
                self.by_key.remove(&slot);
            }
        }
        let c = self.counts.entry(j.state).or_default();
        let size = (j.payload.len() + j.result.len()) as u64;
        if add {
            *c += 1;
            self.bytes += size;
        } else {
            *c -= 1;
            self.bytes -= size;
        }
    }

    /// Runs `f` on one job with its index entries kept in step.
    fn update<R>(&mut self, id: Uuid, f: impl FnOnce(&mut Job) -> R) -> Option<(R, Job)> {
        let mut e = self.jobs.remove(&id)?;
        self.keys(&e, false);
        let r = f(&mut e.job);
        self.keys(&e, true);
        let snapshot = e.job.clone();
        self.jobs.insert(id, e);
        Some((r, snapshot))
    }

    fn waiting(&self) -> u64 {
        [JobState::Queued, JobState::RetryWait, JobState::Waiting]
            .iter()
            .map(|s| self.counts.get(s).copied().unwrap_or(0))
            .sum()
    }

    /// An attempt's outcome, if it still holds the job; a terminal one
    /// moves the job's children.
    fn finish(
        &mut self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
        worker: &str,
    ) -> Option<Job> {
        match self.update(id, |j| {
            transition::finish_on(j, attempt, outcome, now, worker)
        }) {
            Some((true, job)) => {
                if job.state.is_terminal() {
                    self.ended(&job, now);
                }
                Some(job)
            }
            _ => None,
        }
    }

    fn due(set: &BTreeSet<(Micros, Uuid)>, now: Micros, limit: usize) -> Vec<Uuid> {
        set.iter()
            .take_while(|(t, _)| *t <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_max_bytes(max_bytes: u64) -> Self {
        MemoryStore {
            inner: Mutex::default(),
            closed: AtomicBool::new(false),
            max_bytes,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        self.inner
            .lock()
            .map_err(|_| StoreError::Internal("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut g = self.lock()?;
        Ok(g.insert(jobs, max_backlog, self.max_bytes))
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        Ok(self.lock()?.jobs.get(&id).map(|e| e.job.clone()))
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let g = self.lock()?;
        let range = match q.after {
            Some(a) if q.newest_first => (Bound::Unbounded, Bound::Excluded(a)),
            Some(a) => (Bound::Excluded(a), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let jobs = g.jobs.range(range);
        let jobs: Box<dyn Iterator<Item = (&Uuid, &Entry)>> = if q.newest_first {
            Box::new(jobs.rev())
        } else {
            Box::new(jobs)
        };
        Ok(jobs
            .map(|(_, e)| &e.job)
            .filter(|j| q.state.is_none_or(|s| j.state == s))
            .filter(|j| q.kind.as_ref().is_none_or(|k| &j.kind == k))
            .filter(|j| {
                q.ordering_key
                    .as_ref()
                    .is_none_or(|k| j.ordering_key.as_ref() == Some(k))
            })
            .take(q.limit)
            .cloned()
            .collect())
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        Ok(self.lock()?.claim(req))
    }

    async fn expire_unstarted(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<super::deps::Moved>, StoreError> {
        Ok(self.lock()?.expire_unstarted(now, limit))
    }

    async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
    ) -> Result<Option<Job>, StoreError> {
        Ok(self.lock()?.finish(id, attempt, outcome, now, ""))
    }

    async fn finish_many(
        &self,
        items: Vec<super::Finish>,
    ) -> Result<super::FinishResults, StoreError> {
        let mut g = self.lock()?;
        Ok(items
            .into_iter()
            .map(|f| Ok(g.finish(f.id, f.attempt, f.outcome, f.now, &f.worker)))
            .collect())
    }

    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError> {
        let mut g = self.lock()?;
        let Some(state) = g.jobs.get(&id).map(|e| e.job.state) else {
            return Ok(CancelOutcome::NotFound);
        };
        let job = || g.jobs[&id].job.clone();
        Ok(match state {
            JobState::Cancelled => CancelOutcome::AlreadyCancelled(job()),
            JobState::Succeeded | JobState::Failed => CancelOutcome::AlreadyFinished(job()),
            prev => {
                let (_, job) = g
                    .update(id, |j| transition::cancel(j, now))
                    .expect("job present");
                g.ended(&job, now);
                CancelOutcome::Cancelled { job, prev }
            }
        })
    }

    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let ids = Inner::due(&g.delayed, now, limit);
        for id in &ids {
            g.update(*id, |j| transition::release(j, now));
        }
        Ok(ids.len())
    }

    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut g = self.lock()?;
        let ids = Inner::due(&g.retries, now, limit);
        Ok(ids
            .into_iter()
            .filter_map(|id| g.update(id, |j| transition::promote(j, now)))
            .map(|(_, j)| j)
            .collect())
    }

    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut g = self.lock()?;
        let ids = Inner::due(&g.leases, now, limit);
        let lost: Vec<Job> = ids
            .into_iter()
            .filter_map(|id| g.update(id, |j| transition::lease_lost(j, now, "lease expired")))
            .map(|(_, j)| j)
            .collect();
        for j in lost.iter().filter(|j| j.state.is_terminal()) {
            g.ended(j, now);
        }
        Ok(lost)
    }

    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError> {
        let mut g = self.lock()?;
        let ids: Vec<Uuid> = g.leases.iter().map(|(_, id)| *id).collect();
        let lost: Vec<Job> = ids
            .into_iter()
            .filter_map(|id| g.update(id, |j| transition::lease_lost(j, now, "daemon stopped")))
            .map(|(_, j)| j)
            .collect();
        for j in lost.iter().filter(|j| j.state.is_terminal()) {
            g.ended(j, now);
        }
        Ok(lost)
    }

    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError> {
        let g = self.lock()?;
        let from = (after.saturating_add(1), Uuid::nil());
        Ok([&g.delayed, &g.retries, &g.leases]
            .iter()
            .filter_map(|s| s.range(from..).next().map(|(t, _)| *t))
            .min())
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        Ok(self.lock()?.counts.clone())
    }

    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError> {
        let g = self.lock()?;
        let mut m: BTreeMap<(JobState, String), u64> = BTreeMap::new();
        for e in g.jobs.values().filter(|e| !e.job.state.is_terminal()) {
            *m.entry((e.job.state, e.job.kind.clone())).or_default() += 1;
        }
        Ok(m.into_iter().map(|((s, k), n)| (s, k, n)).collect())
    }

    async fn keys_waiting(&self, kinds: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let g = self.lock()?;
        let mut m: BTreeMap<String, u64> = kinds.iter().map(|k| (k.clone(), 0)).collect();
        for ((kind, _), k) in &g.by_key {
            if let Some(n) = m.get_mut(kind).filter(|_| !k.queued.is_empty()) {
                *n += 1;
            }
        }
        Ok(m.into_iter().collect())
    }

    async fn count_failed_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let g = self.lock()?;
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for e in g.jobs.values().filter(|e| e.job.state == JobState::Failed) {
            *m.entry(e.job.kind.clone()).or_default() += 1;
        }
        Ok(m.into_iter().collect())
    }

    async fn retry(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<RetryOutcome>, StoreError> {
        let mut g = self.lock()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let found = g.jobs.get(id).map(|e| e.job.clone());
            let room = g.waiting() < max_backlog;
            out.push(match transition::decide_retry(found, room, now) {
                transition::RetryDecision::Skip(skipped) => skipped,
                transition::RetryDecision::Retry { mut job, prev, .. } => {
                    let parents = g.parent_states(&job.parents).unwrap_or_default();
                    if !super::deps::replace(&mut job, parents, now) {
                        out.push(RetryOutcome::NotRetryable(g.jobs[id].job.clone()));
                        continue;
                    }
                    // Stored through `update`, which keeps the indexes in step.
                    g.update(*id, |j| *j = job.clone());
                    g.reopened(*id);
                    RetryOutcome::Retried { job, prev }
                }
            });
        }
        Ok(out)
    }

    async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
        _now: Micros,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if paused {
            g.paused.insert(kind.to_string());
        } else {
            g.paused.remove(kind);
        }
        Ok(())
    }

    async fn paused_kinds(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self.lock()?.paused.clone())
    }

    async fn init_schedule(&self, id: &str, next_fire_at: Micros) -> Result<(), StoreError> {
        self.lock().map(|mut g| g.init_schedule(id, next_fire_at))
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        Ok(self.lock()?.schedules.values().cloned().collect())
    }

    async fn advance_schedule(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        Ok(self.lock()?.advance_schedule(id, old, new))
    }

    async fn set_schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        self.lock().map(|mut g| g.set_schedule_last_job(id, job))
    }

    async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        Ok(self.lock()?.set_schedule_paused(id, paused))
    }

    async fn create_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Micros,
        max: usize,
    ) -> Result<CreateSchedule, StoreError> {
        let mut g = self.lock()?;
        Ok(g.create_schedule(id, definition, next_fire_at, max))
    }

    async fn update_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Option<Micros>,
    ) -> Result<bool, StoreError> {
        Ok(self.lock()?.update_schedule(id, definition, next_fire_at))
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock()?.delete_schedule(id))
    }

    async fn set_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: crate::job::Progress,
    ) -> Result<Option<Job>, StoreError> {
        let mut g = self.lock()?;
        let Some(e) = g.jobs.get_mut(&id) else {
            return Ok(None);
        };
        if e.job.state != JobState::Running || e.job.attempt != attempt {
            return Ok(None);
        }
        e.job.updated_at = e.job.updated_at.max(progress.updated_at);
        e.job.progress = Some(progress);
        e.job.sequence += 1;
        Ok(Some(e.job.clone()))
    }

    async fn set_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        Ok(match g.jobs.get_mut(&id) {
            Some(e) if e.job.state == JobState::Running && e.job.attempt == attempt => {
                e.job.checkpoint = checkpoint;
                true
            }
            _ => false,
        })
    }

    async fn append_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
        at: Micros,
        keep: usize,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let Some(e) = g.jobs.get_mut(&id) else {
            return Ok(false);
        };
        if e.job.state != JobState::Running || e.job.attempt != attempt {
            return Ok(false);
        }
        let first = e.logs.back().map_or(0, |l| l.seq) + 1;
        for (seq, text) in (first..).zip(lines) {
            e.logs.push_back(crate::job::LogLine {
                seq,
                attempt,
                at,
                text,
            });
        }
        while e.logs.len() > keep {
            e.logs.pop_front();
        }
        Ok(true)
    }

    async fn extend_lease(
        &self,
        id: Uuid,
        attempt: u32,
        until: Micros,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let Some(e) = g.jobs.remove(&id) else {
            return Ok(false);
        };
        let running = e.job.state == JobState::Running && e.job.attempt == attempt;
        let e = if running && e.job.lease_expires_at.is_some_and(|t| t < until) {
            // Re-indexed: the lease index holds (time, id).
            g.keys(&e, false);
            let mut e = e;
            e.job.lease_expires_at = Some(until);
            g.keys(&e, true);
            e
        } else {
            e
        };
        g.jobs.insert(id, e);
        Ok(running)
    }

    async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError> {
        let g = self.lock()?;
        Ok(g.jobs.get(&id).map_or_else(Vec::new, |e| {
            e.logs
                .iter()
                .filter(|l| l.seq > after)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let ids: Vec<Uuid> = g
            .jobs
            .values()
            .filter(|e| e.job.state.is_terminal() && e.job.finished_at.is_some_and(|t| t < before))
            .take(limit)
            .map(|e| e.job.id)
            .collect();
        for id in &ids {
            if let Some(e) = g.jobs.remove(id) {
                g.keys(&e, false);
                g.children.remove(id);
                if let Some(k) = &e.job.dedup_key {
                    let k = (e.job.kind.clone(), k.clone());
                    if g.dedup.get(&k) == Some(&e.job.id) {
                        g.dedup.remove(&k);
                    }
                }
                if let Some(k) = &e.job.idempotency_key {
                    g.idempotency.remove(k);
                }
            }
        }
        Ok(ids.len() as u64)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn take_moved(&self) -> Vec<super::deps::Moved> {
        self.lock()
            .map(|mut g| std::mem::take(&mut g.moved))
            .unwrap_or_default()
    }

    async fn release_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<super::deps::Moved>, StoreError> {
        Ok(self.lock()?.release_waiting(now, limit))
    }

    async fn children(&self, id: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let g = self.lock()?;
        Ok(g.children
            .get(&id)
            .map(|c| c.iter().take(limit).copied().collect())
            .unwrap_or_default())
    }
}
