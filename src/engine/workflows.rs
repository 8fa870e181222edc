//! Workflows on the engine side: publishing the children a parent's end
//! moved (released or cancelled in the store, in the parent's own write),
//! the sweeper's re-check of WAITING jobs, the parents' results an attempt
//! receives, and the bounded graph of GetJobGraph.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

use super::{Engine, EngineError};
use crate::handlers::ParentResult;
use crate::job::{Job, JobState, Micros};

/// Steps each way GetJobGraph walks when not told.
pub const DEFAULT_GRAPH_DEPTH: u32 = 3;
/// Steps each way GetJobGraph walks at most.
pub const MAX_GRAPH_DEPTH: u32 = 10;
/// Jobs one graph holds at most.
pub const MAX_GRAPH_JOBS: usize = 1000;
/// WAITING jobs the sweeper re-checks per sweep.
const RECHECK_BATCH: usize = 1000;

/// A job's neighbourhood in the dependency graph.
#[derive(Debug, Default)]
pub struct Graph {
    /// The asked job first.
    pub jobs: Vec<Job>,
    /// (parent, child).
    pub edges: Vec<(Uuid, Uuid)>,
    pub truncated: bool,
}

impl Engine {
    /// Announces the transitions the store made as consequences (children
    /// released or cancelled by their parents' ends); a released child
    /// wakes the dispatcher.
    pub(super) fn publish_moved(&self) {
        let moved = self.store.take_moved();
        let mut released = false;
        for m in &moved {
            self.changed(Some(m.prev), &m.job);
            released |= m.job.state == JobState::Queued;
        }
        if released {
            self.hint();
        }
    }

    /// Jobs that passed their start deadline before starting (found by a
    /// claim, or by the sweeper): announced and counted; then the children
    /// their ends moved, once for all of them.
    pub(super) fn expired(&self, prev: JobState, jobs: &[Job]) {
        for j in jobs {
            self.expired_one(prev, j);
        }
        if !jobs.is_empty() {
            self.publish_moved();
        }
    }

    fn expired_one(&self, prev: JobState, j: &Job) {
        tracing::debug!(job = %j.id, kind = %j.kind, "job expired before it started");
        self.changed(Some(prev), j);
        self.metrics.job_expired(&j.kind);
    }

    /// The sweeper's pass over start deadlines.
    pub(super) async fn expire_unstarted(&self, now: Micros) {
        match self.store.expire_unstarted(now, RECHECK_BATCH).await {
            Ok(moved) => {
                for m in &moved {
                    self.expired_one(m.prev, &m.job);
                }
                if !moved.is_empty() {
                    self.publish_moved();
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiring jobs past their start deadline failed"),
        }
    }

    /// The sweeper's safety net: WAITING jobs whose parents are all
    /// terminal (a release a crash or a bug left undone) move on.
    pub(super) async fn release_waiting(&self, now: Micros) {
        match self.store.release_waiting(now, RECHECK_BATCH).await {
            Ok(moved) => {
                for m in &moved {
                    tracing::warn!(job = %m.job.id, state = %m.job.state, "a waiting job's parents had all finished; moved on by the sweeper");
                    self.changed(Some(m.prev), &m.job);
                }
                self.publish_moved();
            }
            Err(e) => tracing::warn!(error = %e, "re-checking waiting jobs failed"),
        }
    }

    /// The parents' outcomes `job`'s attempt receives (results inlined up
    /// to the bound); a parent that no longer exists (pruned) is left out.
    pub(super) async fn parent_results(&self, job: &Job) -> Vec<ParentResult> {
        let mut found = Vec::with_capacity(job.parents.len());
        for id in &job.parents {
            match self.store.get(*id).await {
                Ok(Some(p)) => found.push(p),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(job = %job.id, parent = %id, error = %e, "parent not read")
                }
            }
        }
        ParentResult::from_jobs(found)
    }

    /// Job `id`'s ancestors and descendants, `depth` steps each way (0:
    /// the default), at most [`MAX_GRAPH_JOBS`] jobs.
    pub async fn graph(&self, id: Uuid, depth: u32) -> Result<Graph, EngineError> {
        let depth = match depth {
            0 => DEFAULT_GRAPH_DEPTH,
            d => d.min(MAX_GRAPH_DEPTH),
        };
        let root = self.get(id).await?;
        let mut g = Graph::default();
        let mut seen: HashSet<Uuid> = HashSet::from([id]);
        let mut edges: HashSet<(Uuid, Uuid)> = HashSet::new();
        // Up (parents) and down (children) from the root, breadth first.
        for up in [true, false] {
            let mut queue = VecDeque::from([(root.clone(), 0u32)]);
            while let Some((job, d)) = queue.pop_front() {
                if d == depth {
                    g.truncated |= if up {
                        !job.parents.is_empty()
                    } else {
                        !self.store.children(job.id, 1).await?.is_empty()
                    };
                    continue;
                }
                let next = if up {
                    job.parents.clone()
                } else {
                    self.store.children(job.id, MAX_GRAPH_JOBS + 1).await?
                };
                for n in next {
                    edges.insert(if up { (n, job.id) } else { (job.id, n) });
                    if !seen.insert(n) {
                        continue;
                    }
                    if seen.len() > MAX_GRAPH_JOBS {
                        g.truncated = true;
                        break;
                    }
                    if let Some(j) = self.store.get(n).await? {
                        g.jobs.push(j.clone());
                        queue.push_back((j, d + 1));
                    }
                }
            }
        }
        g.jobs.insert(0, root);
        let present: HashSet<Uuid> = g.jobs.iter().map(|j| j.id).collect();
        g.edges = edges
            .into_iter()
            .filter(|(p, c)| present.contains(p) && present.contains(c))
            .collect();
        g.edges.sort();
        Ok(g)
    }
}
