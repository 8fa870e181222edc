//! Operators' actions on the engine (AdminService): pausing kinds and
//! retrying dead jobs. The pause is kept in the store, so it survives a
//! restart and holds for every instance on a shared store; each instance
//! keeps a copy the dispatcher reads without a store call.

use std::collections::{BTreeSet, HashSet};

use uuid::Uuid;

use super::{Engine, EngineError};
use crate::config::KindSettings;
use crate::job::now_micros;
use crate::store::RetryOutcome;

impl Engine {
    /// The configured kinds (in no particular order).
    pub fn kinds(&self) -> impl Iterator<Item = &KindSettings> {
        self.kinds.values().map(|k| &k.settings)
    }

    /// Whether an operator paused `kind` (as this instance last read it).
    pub fn is_paused(&self, kind: &str) -> bool {
        self.lock_paused().contains(kind)
    }

    /// The paused kinds, as this instance last read them.
    pub fn paused(&self) -> BTreeSet<String> {
        self.lock_paused().iter().cloned().collect()
    }

    /// Pauses or resumes a kind in the store, then here. A kind must be
    /// configured to be paused; one still paused but no longer configured
    /// may be resumed, so a stale pause can be cleared.
    pub async fn set_paused(&self, kind: &str, paused: bool) -> Result<(), EngineError> {
        if !self.kinds.contains_key(kind) && (paused || !self.is_paused(kind)) {
            return Err(EngineError::UnknownKind(kind.to_string()));
        }
        self.store
            .set_kind_paused(kind, paused, now_micros())
            .await?;
        {
            let mut p = self.lock_paused();
            if paused {
                p.insert(kind.to_string());
            } else {
                p.remove(kind);
            }
        }
        self.metrics.set_kind_paused(kind, paused);
        tracing::info!(
            kind,
            paused,
            "kind {}",
            if paused { "paused" } else { "resumed" }
        );
        if !paused {
            self.hint();
        }
        Ok(())
    }

    /// Shared stores: re-reads the paused set, as another instance may have
    /// changed it. A failed read keeps the last one.
    pub(super) async fn refresh_paused(&self) {
        let now = match self.store.paused_kinds().await {
            Ok(p) => p.into_iter().collect::<HashSet<_>>(),
            Err(e) => {
                tracing::debug!(error = %e, "reading paused kinds failed");
                return;
            }
        };
        let mut p = self.lock_paused();
        if *p != now {
            for k in p.symmetric_difference(&now) {
                self.metrics.set_kind_paused(k, now.contains(k));
            }
            *p = now;
        }
    }

    /// RetryJobs: each FAILED or CANCELLED job among `ids` back to QUEUED,
    /// announced like any transition so watchers see it come back.
    pub async fn retry(&self, ids: &[Uuid]) -> Result<Vec<RetryOutcome>, EngineError> {
        let out = self
            .store
            .retry(ids, now_micros(), self.intake.max_backlog)
            .await?;
        let mut any = false;
        for o in &out {
            if let RetryOutcome::Retried { job, prev } = o {
                self.changed(Some(*prev), job);
                any = true;
            }
        }
        self.publish_moved();
        if any {
            self.hint();
        }
        Ok(out)
    }

    fn lock_paused(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }
}
