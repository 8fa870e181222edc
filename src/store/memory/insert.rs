//! Submits into the memory store: idempotency keys first, then dedup keys
//! (`store::dedup`), then the backlog bound and the parents.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Entry, Inner};
use crate::job::{now_micros, NewJob};
use crate::store::dedup::{self, DedupOutcome};
use crate::store::InsertOutcome;

impl Inner {
    /// Every entry of a batch, in order, under the store's one lock.
    pub(super) fn insert(
        &mut self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
        max_bytes: u64,
    ) -> Vec<InsertOutcome> {
        let mut out = Vec::with_capacity(jobs.len());
        // Entries answered by an existing job: `$N` naming them means it.
        let mut aliases: HashMap<Uuid, Uuid> = HashMap::new();
        for mut new in jobs {
            for p in new.parents.iter_mut() {
                *p = aliases.get(p).copied().unwrap_or(*p);
            }
            if let Some(o) = self.existing(&new, max_bytes) {
                if let InsertOutcome::Deduplicated(j) | InsertOutcome::Merged { job: j, .. } = &o {
                    aliases.insert(new.id, j.id);
                }
                out.push(o);
                continue;
            }
            if self.waiting() >= max_backlog || self.bytes + new.payload.len() as u64 > max_bytes {
                out.push(InsertOutcome::BacklogFull);
                continue;
            }
            let Some(parents) = self.parent_states(&new.parents) else {
                let missing = new.parents.iter().find(|p| !self.jobs.contains_key(p));
                out.push(InsertOutcome::UnknownParent(
                    *missing.expect("one is missing"),
                ));
                continue;
            };
            let standing = crate::store::deps::standing(new.on_parent_failure, parents);
            let job = crate::store::transition::create(new, now_micros(), standing, |kind| {
                self.ready.get(kind).is_some_and(|r| !r.is_empty())
            });
            for p in &job.parents {
                self.children.entry(*p).or_default().push(job.id);
            }
            if let Some(key) = &job.idempotency_key {
                self.idempotency.insert(key.clone(), job.id);
            }
            if let Some(key) = &job.dedup_key {
                self.dedup.insert((job.kind.clone(), key.clone()), job.id);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let e = Entry {
                job: job.clone(),
                seq,
                logs: Default::default(),
            };
            self.keys(&e, true);
            self.jobs.insert(job.id, e);
            out.push(InsertOutcome::Created(job));
        }
        out
    }

    /// The answer of an existing job: its idempotency key (checked first),
    /// or a job of the kind holding its dedup key, merged into.
    fn existing(&mut self, new: &NewJob, max_bytes: u64) -> Option<InsertOutcome> {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.idempotency.get(key).and_then(|id| self.jobs.get(id)) {
                return Some(crate::store::idempotent(&existing.job, &new.request_hash));
            }
        }
        let d = new.dedup.as_ref()?;
        let id = *self.dedup.get(&(new.kind.clone(), d.key.clone()))?;
        let held = self.jobs.get(&id).filter(|e| dedup::holds_key(&e.job))?;
        let (merged, outcome) = dedup::merge(&held.job, new, now_micros());
        let job = match merged {
            None => held.job.clone(),
            Some(m) => {
                // `update` moves `bytes` (its index step counts payloads).
                let after = self.bytes.saturating_sub(held.job.payload.len() as u64)
                    + m.payload.len() as u64;
                if after > max_bytes {
                    return Some(InsertOutcome::BacklogFull);
                }
                self.update(id, |j| *j = m)?.1
            }
        };
        debug_assert!(outcome != DedupOutcome::Created);
        Some(InsertOutcome::Merged { job, outcome })
    }
}
