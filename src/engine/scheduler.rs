//! Cron schedules: the scheduler task and the AdminService actions on
//! schedules. Each schedule's next fire time is stored, so downtime is seen
//! as missed fires on restart: those older than the schedule's `catchup`
//! are counted, the others run. Every fire is a job with idempotency key
//! `schedule:{id}:{fire time RFC 3339 UTC}`, so no fire runs twice, across
//! restarts and instances. A fire is submitted before the next fire time is
//! stored (with a compare-and-set on a shared store), so a crash between the
//! two never loses a fire: it is submitted again and deduplicated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Engine, EngineError};
use crate::config::{rfc3339, Overlap, Schedule};
use crate::job::{add_micros, now_micros, Job, JobState, Micros, NewJob};
use crate::store::{InsertOutcome, ScheduleRow};

/// The scheduler re-reads the rows at least this often (pauses, and fires
/// other instances took).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A fire taken this late is still on time (the loop's own lateness), so
/// `catchup = "0s"` does not count a busy moment as a miss.
const ON_TIME_GRACE: Duration = Duration::from_secs(1);
/// Missed fires counted one by one at most per round; past it the count is
/// a lower bound and the walk jumps ahead (an every-second schedule down
/// for a week).
const MAX_MISSED_WALK: u64 = 100_000;
/// Fires submitted per schedule per round, so catching up is done in
/// bounded steps.
const MAX_FIRES_PER_ROUND: usize = 100;
/// Stored next fire of a schedule that never matches again.
pub(super) const NEVER: Micros = Micros::MAX;

/// A schedule as ListSchedules shows it.
#[derive(Debug, Clone)]
pub struct ScheduleStatus {
    pub schedule: Schedule,
    /// `None` when the expression never matches again.
    pub next_fire_at: Option<Micros>,
    pub paused: bool,
    pub last_job_id: Option<Uuid>,
    /// `[[schedules]]` in the config (read-only through the API), or
    /// created through the API and stored.
    pub from_config: bool,
}

impl ScheduleStatus {
    /// `s` with its stored row; without a row (a config schedule that has
    /// not fired yet) its next fire is computed from `now`.
    pub(super) fn of(
        s: Schedule,
        row: Option<&ScheduleRow>,
        from_config: bool,
        now: Micros,
    ) -> Self {
        let next = row.map_or_else(|| s.next_after(now).unwrap_or(NEVER), |r| r.next_fire_at);
        ScheduleStatus {
            schedule: s,
            next_fire_at: (next != NEVER).then_some(next),
            paused: row.is_some_and(|r| r.paused),
            last_job_id: row.and_then(|r| r.last_job_id),
            from_config,
        }
    }
}

impl Engine {
    pub(super) async fn schedule_loop(self: Arc<Self>) {
        let config_ids: HashSet<&str> = self
            .settings
            .schedules
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        let mut stored = StoredCache::default();
        let mut rows_ready = false;
        loop {
            let now = now_micros();
            if !rows_ready {
                rows_ready = self.init_schedules(now).await;
            }
            let mut wake = add_micros(now, MAX_SLEEP);
            match self.store.schedules().await {
                Ok(rows) => {
                    let rows: BTreeMap<_, _> =
                        rows.into_iter().map(|r| (r.id.clone(), r)).collect();
                    for s in self.settings.schedules.iter() {
                        let Some(row) = rows.get(&s.id) else {
                            // Its row is gone (deleted through another
                            // instance, whose config lacks it): add it
                            // again, so this config's schedule goes on.
                            rows_ready = false;
                            continue;
                        };
                        wake = wake.min(self.due_or_next(s, row, now).await);
                    }
                    // Schedules created through the API, on any instance:
                    // re-read every round. A config schedule of the same
                    // id (another instance's config) wins here.
                    stored.forget_missing(&rows);
                    for row in rows.values() {
                        if config_ids.contains(row.id.as_str()) {
                            continue;
                        }
                        if let Some(s) = stored.get(&self, row) {
                            wake = wake.min(self.due_or_next(&s, row, now).await);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading schedules failed"),
            }
            let wait = Duration::from_micros(wake.saturating_sub(now_micros()).max(0) as u64);
            tokio::select! {
                _ = self.stops.stop_dispatch.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fires `s` if due; its next fire time.
    async fn due_or_next(&self, s: &Schedule, row: &ScheduleRow, now: Micros) -> Micros {
        if row.next_fire_at <= now {
            self.fire_due(s, row, now).await
        } else {
            row.next_fire_at
        }
    }

    /// Adds missing rows with the first fire after now. False if the store
    /// failed (tried again next round).
    async fn init_schedules(&self, now: Micros) -> bool {
        for s in self.settings.schedules.iter() {
            let first = s.next_after(now).unwrap_or(NEVER);
            if let Err(e) = self.store.init_schedule(&s.id, first).await {
                tracing::warn!(schedule = s.id, error = %e, "storing schedule failed");
                return false;
            }
        }
        true
    }

    /// Handles the fires of `s` due by `now`; returns its next fire time.
    async fn fire_due(&self, s: &Schedule, row: &ScheduleRow, now: Micros) -> Micros {
        let cut = now
            .saturating_sub(s.catchup.as_micros() as i64)
            .saturating_sub(ON_TIME_GRACE.as_micros() as i64);
        let mut fire = row.next_fire_at;
        let mut missed = 0u64;
        while fire < cut && missed < MAX_MISSED_WALK {
            missed += 1;
            fire = s.next_after(fire).unwrap_or(NEVER);
        }
        if fire < cut {
            fire = s.next_after(cut - 1).unwrap_or(NEVER);
        }
        let mut due = Vec::new();
        while fire <= now && due.len() < MAX_FIRES_PER_ROUND {
            due.push(fire);
            fire = s.next_after(fire).unwrap_or(NEVER);
        }
        // Submit first, then store the next fire: a crash (or a failed
        // submit) in between cannot lose a fire, since the next round submits
        // it again and its key dedups it. On a shared store several instances
        // may submit the same fire; the key makes it one job, and only the
        // instance whose compare-and-set advances the row moves on.
        if missed > 0 && !row.paused {
            self.metrics.schedule_missed(&s.id, missed);
            tracing::warn!(
                schedule = s.id,
                missed,
                catchup = ?s.catchup,
                "schedule fires missed by more than catchup: not run"
            );
        }
        let mut last = row.last_job_id;
        if !row.paused {
            for at in due {
                if s.overlap == Overlap::Skip && self.unfinished(last).await {
                    tracing::info!(
                        schedule = s.id,
                        fire = rfc3339(at),
                        "previous job unfinished: fire skipped"
                    );
                    continue;
                }
                let key = format!("schedule:{}:{}", s.id, rfc3339(at));
                match self.submit_fire(s, key).await {
                    Ok(job) => last = Some(job.id),
                    Err(e) => {
                        tracing::warn!(schedule = s.id, fire = rfc3339(at), error = %e, "schedule fire not submitted");
                        // Not advanced: tried again next round.
                        return add_micros(now, MAX_SLEEP);
                    }
                }
            }
        }
        if let Err(e) = self
            .store
            .advance_schedule(&s.id, row.next_fire_at, fire)
            .await
        {
            tracing::warn!(schedule = s.id, error = %e, "storing the next fire failed");
            return add_micros(now, MAX_SLEEP);
        }
        fire
    }

    /// Whether job `id` exists and has not finished.
    async fn unfinished(&self, id: Option<Uuid>) -> bool {
        let Some(id) = id else { return false };
        match self.store.get(id).await {
            Ok(Some(j)) => matches!(
                j.state,
                JobState::Queued | JobState::RetryWait | JobState::Running
            ),
            Ok(None) => false,
            // Unknown: do not start another beside it.
            Err(_) => true,
        }
    }

    /// Submits one fire of `s` with idempotency key `key` and records it as
    /// the schedule's last job.
    async fn submit_fire(&self, s: &Schedule, key: String) -> Result<Job, EngineError> {
        let kind = self
            .kind(&s.kind)
            .ok_or_else(|| EngineError::UnknownKind(s.kind.clone()))?;
        let mut labels = s.labels.clone();
        labels.insert("schedule".into(), s.id.clone());
        // The same for every instance, so another instance's submit of this
        // fire deduplicates instead of conflicting.
        let mut h = Sha256::new();
        for part in [s.kind.as_bytes(), key.as_bytes(), s.payload.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for (k, v) in &labels {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
        let job = NewJob {
            id: Uuid::now_v7(),
            kind: s.kind.clone(),
            max_attempts: kind.max_attempts,
            priority: 0,
            idempotency_key: Some(key),
            labels,
            payload: Bytes::from(s.payload.clone()),
            timeout: kind.timeout,
            run_at: None,
            request_hash: h.finalize().into(),
            created_at: now_micros(),
            ordering_key: None,
            trace: None,
            start: None,
            parents: Vec::new(),
            on_parent_failure: Default::default(),
            start_before: None,
            dedup: None,
            fairness_key: String::new(),
        };
        let out = self.submit(vec![job]).await?.pop();
        let job = match out {
            Some(InsertOutcome::Created(j)) => {
                self.metrics.schedule_fired(&s.id);
                j
            }
            Some(InsertOutcome::Deduplicated(j) | InsertOutcome::Merged { job: j, .. }) => j,
            Some(InsertOutcome::UnknownParent(id)) => return Err(EngineError::UnknownParent(id)),
            Some(InsertOutcome::BacklogFull) => {
                return Err(EngineError::BacklogFull {
                    max: self.intake.max_backlog,
                })
            }
            Some(InsertOutcome::Conflict { existing_id }) => {
                // A client used the key for another request.
                return Err(EngineError::KeyConflict {
                    key: format!("schedule:{}", s.id),
                    existing_id,
                });
            }
            None => return Err(EngineError::UnknownSchedule(s.id.clone())),
        };
        self.store.set_schedule_last_job(&s.id, job.id).await?;
        Ok(job)
    }

    /// The schedule `id`, from the config or else the store; whether it is
    /// the config's.
    pub(super) async fn find_schedule(&self, id: &str) -> Result<(Schedule, bool), EngineError> {
        if let Some(s) = self.settings.schedules.iter().find(|s| s.id == id) {
            return Ok((s.clone(), true));
        }
        let row = self.stored_row(id).await?;
        match row.as_ref().and_then(|r| r.definition.as_deref()) {
            Some(d) => self
                .decode_schedule(d)
                .map(|s| (s, false))
                .map_err(|why| EngineError::ScheduleUnusable(id.to_string(), why)),
            None => Err(EngineError::UnknownSchedule(id.to_string())),
        }
    }

    /// ListSchedules: every configured schedule with its stored state, then
    /// every stored one (those whose definition no longer checks, e.g. its
    /// kind is gone from this instance's config, are left out and logged).
    pub async fn list_schedules(&self) -> Result<Vec<ScheduleStatus>, EngineError> {
        let rows: BTreeMap<_, _> = self
            .store
            .schedules()
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let now = now_micros();
        let mut out: Vec<ScheduleStatus> = self
            .settings
            .schedules
            .iter()
            .map(|s| ScheduleStatus::of(s.clone(), rows.get(&s.id), true, now))
            .collect();
        for row in rows.values() {
            let Some(d) = &row.definition else { continue };
            if self.is_config_schedule(&row.id) {
                continue;
            }
            match self.decode_schedule(d) {
                Ok(s) => out.push(ScheduleStatus::of(s, Some(row), false, now)),
                Err(e) => {
                    tracing::warn!(schedule = row.id, error = %e, "stored schedule not usable")
                }
            }
        }
        Ok(out)
    }

    /// TriggerSchedule: one fire now, whatever the cron expression, pause
    /// or overlap say (an operator asked for it).
    pub async fn trigger_schedule(&self, id: &str) -> Result<Job, EngineError> {
        let (s, from_config) = self.find_schedule(id).await?;
        if from_config {
            self.store
                .init_schedule(&s.id, s.next_after(now_micros()).unwrap_or(NEVER))
                .await?;
        }
        let key = format!("schedule:{}:manual:{}", s.id, rfc3339(now_micros()));
        self.submit_fire(&s, key).await
    }

    /// PauseSchedule / ResumeSchedule, stored. While paused, fires pass
    /// without a job and without counting as missed.
    pub async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<(), EngineError> {
        let (s, from_config) = self.find_schedule(id).await?;
        if from_config {
            self.store
                .init_schedule(&s.id, s.next_after(now_micros()).unwrap_or(NEVER))
                .await?;
        }
        if !self.store.set_schedule_paused(id, paused).await? {
            return Err(EngineError::UnknownSchedule(id.to_string()));
        }
        tracing::info!(
            schedule = id,
            paused,
            "schedule {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }
}

/// Stored definitions as the scheduler last decoded them, kept while the
/// text is the same, so a round does not parse every cron expression
/// again. `None`: the definition does not check here (logged once).
#[derive(Default)]
struct StoredCache {
    by_id: HashMap<String, (String, Option<Arc<Schedule>>)>,
}

impl StoredCache {
    /// The schedule of a stored row; `None` for a config row, or a
    /// definition that does not check here.
    fn get(&mut self, engine: &Engine, row: &ScheduleRow) -> Option<Arc<Schedule>> {
        let text = row.definition.as_deref()?;
        if let Some((t, s)) = self.by_id.get(&row.id) {
            if t == text {
                return s.clone();
            }
        }
        let s = match engine.decode_schedule(text) {
            Ok(s) => Some(Arc::new(s)),
            Err(why) => {
                tracing::warn!(schedule = row.id, error = %why, "stored schedule not run here");
                None
            }
        };
        self.by_id
            .insert(row.id.clone(), (text.to_string(), s.clone()));
        s
    }

    /// Drops what was deleted.
    fn forget_missing(&mut self, rows: &BTreeMap<String, ScheduleRow>) {
        self.by_id.retain(|id, _| rows.contains_key(id));
    }
}
