//! Workflows in memory: a parent's end moves its WAITING children (and
//! theirs) under the store's one lock, like every other change here.

use uuid::Uuid;

use super::Inner;
use crate::job::{Job, JobState, Micros};
use crate::store::deps::{self, Moved};
use crate::store::transition;

impl Inner {
    /// Each parent's id and state; `None` when one does not exist.
    pub(super) fn parent_states(&self, parents: &[Uuid]) -> Option<Vec<(Uuid, JobState)>> {
        parents
            .iter()
            .map(|p| self.jobs.get(p).map(|e| (*p, e.job.state)))
            .collect()
    }

    /// `job` just became terminal: its WAITING children move (released,
    /// cancelled, or one parent fewer), and so on down the graph.
    pub(super) fn ended(&mut self, job: &Job, now: Micros) {
        let mut ended = vec![(job.id, job.state)];
        while let Some((parent, state)) = ended.pop() {
            let children = self.children.get(&parent).cloned().unwrap_or_default();
            for child in children {
                let waits = self
                    .jobs
                    .get(&child)
                    .is_some_and(|e| e.job.state == JobState::Waiting);
                if !waits {
                    continue;
                }
                let moved = self.update(child, |c| {
                    crate::store::deps::parent_ended(c, parent, state, now)
                });
                if let Some((true, c)) = moved {
                    if c.state.is_terminal() {
                        ended.push((c.id, c.state));
                    }
                    let prev = JobState::Waiting;
                    self.moved.push(crate::store::deps::Moved { prev, job: c });
                }
            }
        }
    }

    /// `job` left a terminal state (RetryJobs): children that still wait
    /// count it as unfinished again.
    pub(super) fn reopened(&mut self, id: Uuid) {
        for child in self.children.get(&id).cloned().unwrap_or_default() {
            if let Some(e) = self
                .jobs
                .get_mut(&child)
                .filter(|e| e.job.state == JobState::Waiting)
            {
                e.job.waiting_on += 1;
            }
        }
    }

    /// Up to `limit` WAITING jobs whose parents all ended, moved on.
    pub(super) fn release_waiting(&mut self, now: Micros, limit: usize) -> Vec<Moved> {
        let mut out = Vec::new();
        let waiting: Vec<Uuid> = self.waiting_jobs.iter().copied().collect();
        for id in waiting {
            if out.len() >= limit {
                break;
            }
            let parents = self.jobs[&id].job.parents.clone();
            let states = self.parent_states(&parents).unwrap_or_default();
            if states.iter().any(|(_, s)| !s.is_terminal()) {
                continue;
            }
            if let Some((true, job)) = self.update(id, |j| deps::recheck(j, states, now)) {
                if job.state.is_terminal() {
                    self.ended(&job, now);
                }
                out.push(Moved {
                    prev: JobState::Waiting,
                    job,
                });
            }
        }
        out
    }

    /// Up to `limit` jobs not started whose start deadline passed, ended
    /// FAILED (from the deadline index: no scan of every job).
    pub(super) fn expire_unstarted(&mut self, now: Micros, limit: usize) -> Vec<Moved> {
        let due = Inner::due(&self.deadlines, now, limit);
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            let prev = self.jobs[&id].job.state;
            if let Some((_, job)) = self.update(id, |j| transition::expire(j, now)) {
                self.ended(&job, now);
                out.push(Moved { prev, job });
            }
        }
        out
    }
}
