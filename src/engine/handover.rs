//! Hand-over at submit: when a worker slot is free as a job is submitted,
//! the engine holds the slot and asks the store to write the job RUNNING in
//! the insert's own commit, so an idle daemon runs it after one commit
//! (insert) instead of two (insert, then claim) before the handler starts.
//!
//! The rules stay those of the claim: the reply still comes after the
//! commit; the job carries attempt 1 and a lease, so a crash before its
//! outcome is committed reruns it (at least once); a kind with a job ready
//! before it, a paused, remote, keyed or rated kind, a delayed job and a
//! shared store never take this path, so order within a kind and every
//! limit are kept by the claim as before.

use tokio::sync::OwnedSemaphorePermit;

use super::Engine;
use crate::job::{Job, NewJob};
use crate::store::{transition, Outcome};

/// The worker slot and kind slot held for one submitted job.
pub(super) struct Slots {
    global: OwnedSemaphorePermit,
    kind: OwnedSemaphorePermit,
}

/// A job the store started in its insert's commit, on its way to the
/// dispatcher, which runs it among its workers (so drain waits for it).
pub(super) struct Handed {
    pub job: Job,
    pub global: OwnedSemaphorePermit,
    pub kind: OwnedSemaphorePermit,
}

impl Engine {
    /// Holds a free slot for each job that may start in its insert's commit
    /// and marks it so (`NewJob::start`); `None` for the others.
    pub(super) fn hold_slots(&self, jobs: &mut [NewJob]) -> Vec<Option<Slots>> {
        if self.settings.shared {
            return Vec::new();
        }
        let slack = self.lease_slack();
        jobs.iter_mut()
            .map(|j| {
                if j.run_at.is_some_and(|t| t > j.created_at) || self.limits.contains_key(&j.kind) {
                    return None;
                }
                let k = self.kinds.get(&j.kind).filter(|k| !k.remote)?;
                if self.is_paused(&j.kind) {
                    return None;
                }
                let global = self.dispatch.workers.clone().try_acquire_owned().ok()?;
                let kind = k.slots.clone().try_acquire_owned().ok()?;
                j.start = Some(slack);
                Some(Slots { global, kind })
            })
            .collect()
    }

    /// Runs a job the store started at insert, with the slots held for it.
    /// Once the dispatcher has stopped (drain), the job goes back to the
    /// queue instead, its attempt not counted.
    pub(super) async fn hand_over(&self, job: Job, slots: Slots) {
        self.metrics.started(&job);
        // Two transitions in one commit (creation, then the claim):
        // watchers and the state gauges see both.
        self.changed(None, &transition::before_claim(&job));
        self.changed(Some(crate::job::JobState::Queued), &job);
        let handed = Handed {
            job,
            global: slots.global,
            kind: slots.kind,
        };
        // Each message holds a worker slot, so the channel (one place per
        // worker) is never full; it is closed once the dispatcher stopped.
        if let Err(e) = self.dispatch.handed.try_send(handed) {
            let Handed { job, .. } = e.into_inner();
            let reason = format!(
                "attempt {} was submitted as the daemon stopped and was given back; not counted",
                job.attempt
            );
            self.complete(job, Outcome::Requeue { reason }, String::new())
                .await;
        }
    }
}
