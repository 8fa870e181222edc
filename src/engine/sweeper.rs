//! The sweeper: promotes retries whose time came, takes back RUNNING jobs
//! whose lease ran out, prunes finished jobs past retention, and wakes the
//! dispatcher for delayed jobs that became due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::job::{add_micros, now_micros, JobState, Micros};

/// Store-failure warnings of this site, rate-limited (see [`crate::log_limit`]).
static SWEEP_LOG: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

/// The sweeper runs at least this often, so nothing waits on a lost hint
/// for longer.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Rows touched per store call, so one sweep never holds the writer long.
const SWEEP_BATCH: usize = 1000;
/// Pruning runs this often, in batches of `SWEEP_BATCH`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// With a shared store, the state gauges are re-read from it this often
/// (other instances' transitions move them too); the ordering-key gauge
/// too, on every store.
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// Start deadlines and WAITING jobs are looked at this often at most
/// (each pass is a query over an index, whatever the load).
const DEADLINES_EVERY: Duration = Duration::from_millis(500);

impl Engine {
    pub(super) async fn sweep_loop(self: Arc<Self>) {
        let mut next_prune = now_micros();
        let mut next_gauges = now_micros();
        let mut next_deadlines = now_micros();
        loop {
            let now = now_micros();
            if self.settings.shared {
                // Another instance may have paused or resumed a kind.
                self.refresh_paused().await;
            }
            self.sweep_once(now).await;
            if now >= next_deadlines {
                self.expire_unstarted(now).await;
                self.release_waiting(now).await;
                next_deadlines = add_micros(now, DEADLINES_EVERY);
            }
            if now >= next_prune {
                self.prune(now).await;
                next_prune = add_micros(now, PRUNE_EVERY);
            }
            if now >= next_gauges {
                if self.settings.shared {
                    self.refresh_gauges().await;
                }
                self.refresh_keys_waiting().await;
                next_gauges = add_micros(now, GAUGES_EVERY);
            }
            let sleep_until = match self.store.next_due_at(now).await {
                Ok(Some(t)) => t.min(add_micros(now, MAX_SLEEP)),
                _ => add_micros(now, MAX_SLEEP),
            };
            let wait =
                Duration::from_micros(sleep_until.saturating_sub(now_micros()).max(0) as u64);
            tokio::select! {
                _ = self.stops.stop_dispatch.cancelled() => return,
                _ = self.sweeper_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn sweep_once(&self, now: Micros) {
        loop {
            match self.store.release_delayed(now, SWEEP_BATCH).await {
                Ok(n) if n == SWEEP_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    if let Some(held_back) = SWEEP_LOG.admit() {
                        tracing::warn!(held_back, error = %e, "releasing delayed jobs failed");
                    }
                    break;
                }
            }
        }
        loop {
            let promoted = match self.store.promote_due(now, SWEEP_BATCH).await {
                Ok(j) => j,
                Err(e) => {
                    if let Some(held_back) = SWEEP_LOG.admit() {
                        tracing::warn!(held_back, error = %e, "promoting due retries failed");
                    }
                    break;
                }
            };
            for j in &promoted {
                self.changed(Some(JobState::RetryWait), j);
            }
            self.metrics.requeued("retry_due", promoted.len());
            if promoted.len() < SWEEP_BATCH {
                break;
            }
        }
        match self.store.expire_leases(now, SWEEP_BATCH).await {
            Ok(expired) => {
                for j in &expired {
                    tracing::warn!(job = %j.id, state = %j.state, "lease expired; job taken back");
                    self.changed(Some(JobState::Running), j);
                }
                self.metrics.requeued("lease_expired", expired.len());
                self.publish_moved();
            }
            Err(e) => {
                if let Some(held_back) = SWEEP_LOG.admit() {
                    tracing::warn!(held_back, error = %e, "expiring leases failed");
                }
            }
        }
        // Due delayed jobs, promoted retries, or a hint that was dropped:
        // one claim attempt a sweep covers them all.
        self.hint();
    }

    /// Shared stores: renews the leases of the attempts running here, on a
    /// task of its own (a long sweep or a drain must not let them lapse),
    /// and stops attempts whose job is no longer this instance's: cancelled
    /// elsewhere while the change feed was down, or taken back.
    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(super::HEARTBEAT_EVERY) => {}
                _ = self.stops.stop_heartbeat.cancelled() => return,
            }
            let running: Vec<(uuid::Uuid, u32)> = self.lock_running().keys().copied().collect();
            let ids: Vec<uuid::Uuid> = running.iter().map(|(id, _)| *id).collect();
            let renewed = match self.store.heartbeat(now_micros(), &ids).await {
                Ok(Some(r)) => r.into_iter().collect::<std::collections::HashSet<_>>(),
                Ok(None) => continue,
                Err(e) => {
                    if let Some(held_back) = SWEEP_LOG.admit() {
                        tracing::warn!(held_back, error = %e, "renewing leases failed");
                    }
                    continue;
                }
            };
            let lock = self.lock_running();
            for key in running.iter().filter(|(id, _)| !renewed.contains(id)) {
                if let Some(r) = lock.get(key).filter(|r| !r.stop.is_cancelled()) {
                    tracing::info!(job = %key.0, attempt = key.1, "job is no longer this instance's; stopping its attempt");
                    r.stop.cancel();
                }
            }
        }
    }

    /// Sets the gauge of ordering keys with work waiting, for the kinds
    /// that have ordering keys.
    async fn refresh_keys_waiting(&self) {
        let kinds: Vec<String> = self
            .limits
            .iter()
            .filter(|(_, l)| l.key_concurrency.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if kinds.is_empty() {
            return;
        }
        match self.store.keys_waiting(&kinds).await {
            Ok(rows) => {
                for (kind, n) in rows {
                    self.metrics.set_keys_waiting(&kind, n);
                }
            }
            Err(e) => tracing::debug!(error = %e, "counting ordering keys failed"),
        }
    }

    /// Sets every state gauge from the store's counts.
    async fn refresh_gauges(&self) {
        let rows = match self.store.count_by_kind().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "reading job counts failed");
                return;
            }
        };
        let mut counts: HashMap<(JobState, String), u64> = self
            .kinds
            .keys()
            .flat_map(|k| {
                [
                    JobState::Queued,
                    JobState::Running,
                    JobState::RetryWait,
                    JobState::Waiting,
                ]
                .map(|s| ((s, k.clone()), 0))
            })
            .collect();
        for (state, kind, n) in rows {
            counts.insert((state, kind), n);
        }
        for ((state, kind), n) in counts {
            self.metrics.set_state_count(state, &kind, n);
        }
    }

    async fn prune(&self, now: Micros) {
        let before =
            now.saturating_sub(self.settings.retention.as_micros().min(i64::MAX as u128) as i64);
        loop {
            match self.store.prune(before, SWEEP_BATCH).await {
                Ok(n) if n as usize == SWEEP_BATCH => tokio::task::yield_now().await,
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(pruned = n, "pruned finished jobs past retention");
                    }
                    return;
                }
                Err(e) => {
                    if let Some(held_back) = SWEEP_LOG.admit() {
                        tracing::warn!(held_back, error = %e, "pruning failed");
                    }
                    return;
                }
            }
        }
    }
}
