//! The dispatcher: claims due jobs from the store in batches, as many as the
//! global and per-kind bounds allow, and runs each on a worker task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Engine, CLAIM_BATCH, LEASE_SLACK};
use crate::job::now_micros;
use crate::store::ClaimRequest;

/// Pause after a failed claim, so a broken store is not hammered.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_millis(200);

impl Engine {
    /// Runs until drain; returns the workers still running so the drain can
    /// wait for them.
    pub(super) async fn dispatch_loop(
        self: Arc<Self>,
        mut hints: mpsc::Receiver<()>,
    ) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        loop {
            if self.stop_dispatch.is_cancelled() {
                break;
            }
            while let Some(r) = workers.try_join_next() {
                if let Err(e) = r {
                    tracing::error!(error = %e, "worker task failed");
                }
            }
            let (wanted, got) = match self.claim_and_spawn(&mut workers).await {
                Ok(n) => n,
                Err(()) => {
                    tokio::select! {
                        _ = tokio::time::sleep(CLAIM_ERROR_PAUSE) => {}
                        _ = self.stop_dispatch.cancelled() => break,
                    }
                    continue;
                }
            };
            if wanted > 0 && got == wanted {
                // A full batch: there may be more waiting.
                continue;
            }
            tokio::select! {
                biased;
                _ = self.stop_dispatch.cancelled() => break,
                Some(r) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "worker task failed");
                    }
                }
                h = hints.recv() => {
                    if h.is_none() {
                        break;
                    }
                    // Coalesce: one claim answers every hint queued so far.
                    while hints.try_recv().is_ok() {}
                }
            }
        }
        workers
    }

    /// One claim: returns (jobs asked for, jobs started).
    async fn claim_and_spawn(
        self: &Arc<Self>,
        workers: &mut JoinSet<()>,
    ) -> Result<(usize, usize), ()> {
        let free = self.workers.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            return Ok((0, 0));
        }
        let kinds: HashMap<String, usize> = self
            .kinds
            .iter()
            .map(|(name, k)| (name.clone(), k.slots.available_permits()))
            .filter(|(_, n)| *n > 0)
            .collect();
        if kinds.is_empty() {
            return Ok((0, 0));
        }
        let req = ClaimRequest {
            now: now_micros(),
            limit: free,
            kinds,
            lease_slack: LEASE_SLACK,
        };
        let jobs = match self.store.claim(&req).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming jobs failed; will retry");
                return Err(());
            }
        };
        let got = jobs.len();
        for job in jobs {
            self.metrics
                .transition(Some(crate::job::JobState::Queued), &job);
            if let (Some(ready), Some(started)) = (job.ready_at, job.started_at) {
                self.metrics
                    .queue_wait_seconds
                    .get_or_create(&vec![("kind", job.kind.clone())])
                    .observe(started.saturating_sub(ready).max(0) as f64 / 1e6);
            }
            self.events.publish(&job);
            // Only the dispatcher takes permits, and the claim respected the
            // counts read above, so these cannot fail.
            let global = self.workers.clone().try_acquire_owned();
            let kind = self.kinds[&job.kind].slots.clone().try_acquire_owned();
            match (global, kind) {
                (Ok(g), Ok(k)) => {
                    workers.spawn(self.clone().run_attempt(job, g, k));
                }
                _ => {
                    tracing::error!(job = %job.id, "no worker permit for a claimed job; its lease will expire");
                }
            }
        }
        Ok((free, got))
    }
}
