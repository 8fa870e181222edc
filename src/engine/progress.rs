//! Long-running jobs: a worker's progress (coalesced: at most one stored
//! write per job every [`PROGRESS_EVERY`], never refused for its rate) and
//! log lines, written for the attempt that holds the job only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Engine, EngineError};
use crate::job::{now_micros, JobState, LogLine, Progress};

/// One stored progress value per job at most this often; what comes in
/// between is kept (the latest only) and written when the time is up.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Log lines kept per job (the newest).
pub const DEFAULT_LOG_LINES: usize = 1000;
/// Gates kept for jobs with no write for this long are forgotten.
const GATE_IDLE: Duration = Duration::from_secs(10);
/// Gates held before idle ones are swept out.
const GATES_SWEEP_AT: usize = 1024;

/// Per-job progress gates.
#[derive(Debug, Default)]
pub(super) struct ProgressGates {
    /// A std mutex: held for a map lookup, never across an await.
    jobs: Mutex<HashMap<Uuid, Gate>>,
}

#[derive(Debug)]
struct Gate {
    last_write: Instant,
    /// The latest value that came too soon, and its attempt.
    pending: Option<(u32, Progress)>,
    /// A delayed write is scheduled.
    flushing: bool,
}

impl ProgressGates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Gate>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine {
    /// A worker's progress for `(id, attempt)`: stored now, or (coalesced)
    /// at most [`PROGRESS_EVERY`] after the last write of this job.
    pub fn progress(self: &Arc<Self>, id: Uuid, attempt: u32, mut p: Progress) {
        p.updated_at = now_micros();
        self.heard(id, attempt);
        let now = Instant::now();
        // The value waits in its gate until written (at once, or when the
        // window opens), so the attempt's end can still take it first.
        let delay = {
            let mut gates = self.attempts.progress.lock();
            if gates.len() >= GATES_SWEEP_AT {
                gates.retain(|_, g| g.flushing || now.duration_since(g.last_write) < GATE_IDLE);
            }
            let g = gates.entry(id).or_insert(Gate {
                last_write: now.checked_sub(PROGRESS_EVERY).unwrap_or(now),
                pending: None,
                flushing: false,
            });
            g.pending = Some((attempt, p));
            if g.flushing {
                return;
            }
            g.flushing = true;
            PROGRESS_EVERY.saturating_sub(now.duration_since(g.last_write))
        };
        let engine = self.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let taken = {
                let mut gates = engine.attempts.progress.lock();
                gates.get_mut(&id).and_then(|g| {
                    g.flushing = false;
                    g.last_write = Instant::now();
                    g.pending.take()
                })
            };
            if let Some((attempt, p)) = taken {
                engine.write_progress(id, attempt, p).await;
            }
        });
    }

    /// The attempt `(id, attempt)` running here said something: its
    /// heartbeat timeout starts again.
    fn heard(&self, id: Uuid, attempt: u32) {
        if let Some(r) = self.lock_running().get(&(id, attempt)) {
            r.heard
                .store(now_micros(), std::sync::atomic::Ordering::Release);
        }
    }

    /// Until the attempt's deadline (moved by Touch), or `timeout` when it
    /// has none.
    pub(super) async fn until_deadline(
        deadline: Option<Arc<std::sync::atomic::AtomicI64>>,
        timeout: Duration,
    ) {
        let Some(deadline) = deadline else {
            return tokio::time::sleep(timeout).await;
        };
        loop {
            let at = deadline.load(std::sync::atomic::Ordering::Acquire);
            let left = at.saturating_sub(now_micros());
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_micros(left as u64)).await;
        }
    }

    /// A worker's Touch of `(id, attempt)`: its deadline goes to
    /// `extend_by` from now (never earlier than it was, never past the
    /// kind's `max_timeout` from the attempt's start), the store's lease
    /// with it. The deadline now; `None` when the attempt does not run here.
    pub async fn touch(&self, id: Uuid, attempt: u32, extend_by: Duration) -> Option<i64> {
        self.heard(id, attempt);
        let job_kind_max = {
            let running = self.lock_running();
            let r = running.get(&(id, attempt))?;
            r.deadline.clone()
        };
        let job = self.store.get(id).await.ok().flatten()?;
        if job.state != JobState::Running || job.attempt != attempt {
            return None;
        }
        let max = self.kind(&job.kind).map_or(job.timeout, |k| k.max_timeout);
        let started = job.started_at.unwrap_or_else(now_micros);
        let cap = crate::job::add_micros(started, max);
        let wanted = crate::job::add_micros(now_micros(), extend_by).min(cap);
        let now_deadline = job_kind_max
            .fetch_max(wanted, std::sync::atomic::Ordering::AcqRel)
            .max(wanted);
        let lease = crate::job::add_micros(now_deadline, self.lease_slack());
        if let Err(e) = self.store.extend_lease(id, attempt, lease).await {
            tracing::warn!(job = %id, error = %e, "lease not extended after a touch");
        }
        Some(now_deadline)
    }

    /// Stores the checkpoint of `(id, attempt)` for the job's next attempt;
    /// false when that attempt no longer holds the job or the write failed
    /// (the worker is told its checkpoint was not kept).
    pub async fn save_checkpoint(&self, id: Uuid, attempt: u32, checkpoint: bytes::Bytes) -> bool {
        self.heard(id, attempt);
        match self.store.set_checkpoint(id, attempt, checkpoint).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::debug!(job = %id, error = %e, "checkpoint not written");
                false
            }
        }
    }

    /// Until the attempt has said nothing for `silence` (see [`Self::heard`]);
    /// never without a limit.
    pub(super) async fn silent_for(
        heard: Option<Arc<std::sync::atomic::AtomicI64>>,
        silence: Option<Duration>,
    ) {
        let (Some(heard), Some(silence)) = (heard, silence) else {
            return std::future::pending().await;
        };
        loop {
            let last = heard.load(std::sync::atomic::Ordering::Acquire);
            let quiet = Duration::from_micros(now_micros().saturating_sub(last).max(0) as u64);
            if quiet >= silence {
                return;
            }
            tokio::time::sleep(silence - quiet).await;
        }
    }

    /// Writes the progress value of `(id, attempt)` still waiting for its
    /// window, if any, now: before the attempt's outcome.
    pub(super) async fn flush_progress(&self, id: Uuid, attempt: u32) {
        let waiting = {
            let mut gates = self.attempts.progress.lock();
            let w = gates
                .get_mut(&id)
                .and_then(|g| g.pending.take_if(|(a, _)| *a == attempt));
            gates.remove(&id);
            w
        };
        if let Some((attempt, p)) = waiting {
            self.write_progress(id, attempt, p).await;
        }
    }

    async fn write_progress(&self, id: Uuid, attempt: u32, p: Progress) {
        match self.store.set_progress(id, attempt, p).await {
            // Each stored value is an event; the state did not change.
            Ok(Some(job)) => self.changed(Some(JobState::Running), &job),
            Ok(None) => {
                tracing::debug!(job = %id, attempt, "progress for an attempt that no longer runs")
            }
            Err(e) => tracing::debug!(job = %id, error = %e, "progress not written"),
        }
    }

    /// Appends a worker's log lines for `(id, attempt)`; false when that
    /// attempt no longer holds the job (nothing written).
    pub async fn append_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
    ) -> Result<bool, EngineError> {
        self.heard(id, attempt);
        let n = lines.len() as u64;
        let kind = self.store.get(id).await?.map(|j| j.kind);
        let keep = kind
            .as_deref()
            .and_then(|k| self.kind(k))
            .map_or(DEFAULT_LOG_LINES, |k| k.log_lines);
        let written = self
            .store
            .append_logs(id, attempt, lines, now_micros(), keep)
            .await?;
        if let (true, Some(kind)) = (written, kind) {
            self.metrics.log_lines(&kind, n);
        }
        Ok(written)
    }

    /// Up to `limit` of a job's log lines after `after`; NotFound for a job
    /// that does not exist.
    pub async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, EngineError> {
        let lines = self.store.logs(id, after, limit).await?;
        if lines.is_empty() {
            // Tell "no lines yet" from "no such job".
            self.get(id).await?;
        }
        Ok(lines)
    }
}
