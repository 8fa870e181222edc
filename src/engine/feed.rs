//! Shared stores only: the store's feed of transitions, made by any
//! instance, becomes WatchStatus events here (in order, none skipped) and
//! stops attempts running here that another instance cancelled.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::Engine;
use crate::job::JobState;
use crate::store::Change;

/// Jobs whose late notices are remembered at most.
const LATE_NOTICES: usize = 4096;

/// The latest sequence announced for jobs that were not running here when
/// their notice came, kept briefly: an attempt that starts just after its
/// job was cancelled on another instance then stops at once.
#[derive(Default)]
pub(super) struct LateNotices {
    sequence: HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

impl LateNotices {
    fn record(&mut self, id: Uuid, sequence: u64) {
        let s = self.sequence.entry(id).or_insert_with(|| {
            self.order.push_back(id);
            0
        });
        *s = (*s).max(sequence);
        if self.order.len() > LATE_NOTICES {
            if let Some(old) = self.order.pop_front() {
                self.sequence.remove(&old);
            }
        }
    }

    /// Whether job `id` changed after `sequence` (its claim).
    pub(super) fn moved_since(&self, id: &Uuid, sequence: u64) -> bool {
        self.sequence.get(id).is_some_and(|s| *s > sequence)
    }
}

impl Engine {
    pub(super) async fn feed_loop(self: Arc<Self>, mut feed: mpsc::Receiver<Change>) {
        // The last sequence handed to this instance's watchers, per watched job.
        let mut delivered: HashMap<Uuid, u64> = HashMap::new();
        while let Some(change) = feed.recv().await {
            match change {
                Change::Job { id, sequence } => {
                    self.stop_if_moved(id, sequence).await;
                    if !self.events.is_watched(&id) {
                        delivered.remove(&id);
                        continue;
                    }
                    let after = match delivered.get(&id) {
                        Some(&d) if sequence <= d => continue,
                        Some(&d) => d,
                        // Everything the short history has: streams skip
                        // what their snapshot already showed, and a missed
                        // notice cannot leave a gap.
                        None => 0,
                    };
                    self.catch_up(&mut delivered, id, after).await;
                }
                Change::Resync => {
                    delivered.retain(|id, _| self.events.is_watched(id));
                    for id in self.events.watched() {
                        let after = delivered.get(&id).copied().unwrap_or(0);
                        self.catch_up(&mut delivered, id, after).await;
                    }
                    let running: Vec<Uuid> =
                        self.lock_running().keys().map(|(id, _)| *id).collect();
                    for id in running {
                        self.stop_if_moved(id, u64::MAX).await;
                    }
                }
            }
        }
    }

    /// Delivers job `id`'s events after `after`; the current snapshot when
    /// the short history no longer has them (streams skip what they saw).
    async fn catch_up(&self, delivered: &mut HashMap<Uuid, u64>, id: Uuid, after: u64) {
        let mut events = match self.store.events_since(id, after).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "re-reading job events failed");
                return;
            }
        };
        if events.is_empty() {
            match self.store.get(id).await {
                Ok(Some(j)) if j.sequence > after => events.push(j),
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "re-reading job failed");
                    return;
                }
            }
        }
        for j in &events {
            self.events.deliver(j);
        }
        match events.last() {
            // Nothing follows a terminal state.
            Some(j) if j.state.is_terminal() => {
                delivered.remove(&id);
            }
            Some(j) => {
                delivered.insert(id, j.sequence);
            }
            None => {}
        }
    }

    /// An attempt running here whose job changed since its claim (by a
    /// cancel on another instance, or a lease taken back) is told to stop.
    async fn stop_if_moved(&self, id: Uuid, sequence: u64) {
        let candidates: Vec<(u32, tokio_util::sync::CancellationToken)> = {
            let running = self.lock_running();
            if !running.keys().any(|(job, _)| *job == id) {
                // Its worker may be about to start: it checks these.
                self.lock_late_notices().record(id, sequence);
                return;
            }
            running
                .iter()
                .filter(|((job, _), r)| {
                    *job == id && sequence > r.claimed_at_sequence && !r.stop.is_cancelled()
                })
                .map(|((_, attempt), r)| (*attempt, r.stop.clone()))
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let job = match self.store.get(id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "checking a running job failed");
                return;
            }
        };
        for (attempt, stop) in candidates {
            let ours = job
                .as_ref()
                .is_some_and(|j| j.state == JobState::Running && j.attempt == attempt);
            if !ours {
                tracing::info!(job = %id, attempt, "job changed on another instance; stopping its attempt here");
                stop.cancel();
            }
        }
    }
}
