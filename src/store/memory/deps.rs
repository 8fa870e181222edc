//! Workflows in memory: a parent's end moves its WAITING children (and
//! theirs) under the store's one lock, like every other change here.

use uuid::Uuid;

use super::Inner;
use crate::job::{Job, JobState, Micros};

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
}
