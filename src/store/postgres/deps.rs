//! Workflows on PostgreSQL: a job's end moves its WAITING children in the
//! same transaction ([`cascade`]), RetryJobs re-counts and re-places
//! ([`reopen`], [`retry_states`]), and the sweeper's re-check.
//!
//! Several instances write at once, so every decision about a child is
//! made under locks that order it against the others:
//! - a child is decided with its row locked `FOR UPDATE` (re-read at its
//!   latest version once the lock is granted), so two instances ending two
//!   parents of one child each see the other's decrement: it is released
//!   exactly once;
//! - a child being inserted (or retried, or re-checked) holds its parents
//!   `FOR SHARE`; a parent's end locks it `FOR UPDATE` first, so either the
//!   end waits and then finds the child's `job_deps` rows, or the child
//!   waits and then reads the parent's final state. Locks go parents first,
//!   then children, each set in id order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{pooled, rows, sql, PostgresStore, Tx, Writer};
use crate::job::{Job, JobState, Micros};
use crate::store::codec::COLS;
use crate::store::deps::{self, Moved};
use crate::store::{transition, RetryOutcome, StoreError};

/// The WAITING children of the jobs in `$1`, locked in id order.
static LOCK_CHILDREN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLS} FROM jobs WHERE state = 6 AND id IN \
         (SELECT child FROM job_deps WHERE parent = ANY($1)) ORDER BY id FOR UPDATE"
    )
});

/// Jobs `$1`, locked in id order, against their own end while a job that
/// depends on them is decided.
const SHARE_STATES: &str = "SELECT id, state FROM jobs WHERE id = ANY($1) ORDER BY id FOR SHARE";

/// A child's count of unfinished parents, when a parent's end moved only
/// that (no state change, so no event).
const SET_WAITING_ON: &str = "UPDATE jobs j SET waiting_on = x.n \
     FROM unnest($1::uuid[], $2::int4[]) AS x(id, n) WHERE j.id = x.id";

/// The jobs in `$1` left a terminal state: their WAITING children count
/// one unfinished parent more per such parent (locked in id order).
const REOPEN: &str = "WITH d AS (SELECT child, count(*)::int4 AS n FROM job_deps \
       WHERE parent = ANY($1) GROUP BY child), \
     l AS (SELECT j.id, d.n FROM jobs j JOIN d ON d.child = j.id WHERE j.state = 6 \
       ORDER BY j.id FOR UPDATE OF j) \
     UPDATE jobs SET waiting_on = jobs.waiting_on + l.n FROM l WHERE jobs.id = l.id";

/// WAITING jobs none of whose parents is unfinished (a parent pruned
/// counts as finished), with their parents.
const STRANDED: &str = "SELECT j.id, j.parents FROM jobs j WHERE j.state = 6 AND NOT EXISTS \
     (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent \
      WHERE d.child = j.id AND p.state NOT IN (3, 4, 5)) LIMIT $1";

/// [`STRANDED`]'s jobs locked, those no other instance holds.
static LOCK_STRANDED: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {COLS} FROM jobs WHERE state = 6 AND id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED")
});

/// The states of jobs `ids` (those that exist), locked `FOR SHARE`: none
/// of them can end (or come back) until this transaction does.
pub(super) async fn share_states(
    tx: &Tx<'_>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, JobState>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let st = tx.prepare_cached(SHARE_STATES).await?;
    tx.query(&st, &[&ids])
        .await?
        .iter()
        .map(|r| Ok((rows::col(r, 0)?, rows::state(r, 1)?)))
        .collect()
}

/// The ids a batch of jobs names as parents, each once.
pub(super) fn parents_of<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = jobs
        .into_iter()
        .flat_map(|j| j.parents.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Each of `job`'s parents with its state from `states`; a parent that
/// is gone (pruned, so it had finished) is left out.
pub(super) fn parent_states(job: &Job, states: &HashMap<Uuid, JobState>) -> Vec<(Uuid, JobState)> {
    job.parents
        .iter()
        .filter_map(|p| states.get(p).map(|s| (*p, *s)))
        .collect()
}

/// `ended` just became terminal in `tx` (saved): their WAITING children
/// move per [`deps::parent_ended`], saved with their events, and the
/// children that this ended in turn, down the graph. One query per level
/// of the graph; jobs without children cost that one query, nothing more.
/// Returns the moves, for [`Writer::publish`] once `tx` committed.
pub(super) async fn cascade<'a>(
    w: &Writer,
    tx: &Tx<'_>,
    ended: impl IntoIterator<Item = &'a Job>,
) -> Result<Vec<Moved>, StoreError> {
    let mut level: HashMap<Uuid, (JobState, Micros)> = ended
        .into_iter()
        .filter(|j| j.state.is_terminal())
        .map(|j| (j.id, (j.state, j.updated_at)))
        .collect();
    let mut out = Vec::new();
    while !level.is_empty() {
        let ids: Vec<Uuid> = level.keys().copied().collect();
        let children = sql::select(tx, &LOCK_CHILDREN, &[&ids]).await?;
        let (mut moved, mut counted) = (Vec::new(), Vec::new());
        for mut c in children {
            let before = c.waiting_on;
            let mut changed = false;
            for p in c.parents.clone() {
                let Some((state, now)) = level.get(&p) else {
                    continue;
                };
                changed = deps::parent_ended(&mut c, p, *state, *now);
                if changed {
                    break;
                }
            }
            if changed {
                moved.push(c);
            } else if c.waiting_on != before {
                counted.push(c);
            }
        }
        set_waiting_on(tx, &counted).await?;
        let old: Vec<(JobState, u32)> = moved
            .iter()
            .map(|j| (JobState::Waiting, j.attempt))
            .collect();
        sql::save(w, tx, &moved, &old).await?;
        level = moved
            .iter()
            .filter(|j| j.state.is_terminal())
            .map(|j| (j.id, (j.state, j.updated_at)))
            .collect();
        out.extend(moved.into_iter().map(|job| Moved {
            prev: JobState::Waiting,
            job,
        }));
    }
    Ok(out)
}

async fn set_waiting_on(tx: &Tx<'_>, jobs: &[Job]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let n: Vec<i32> = jobs.iter().map(|j| sql::to_i32(j.waiting_on)).collect();
    let st = tx.prepare_cached(SET_WAITING_ON).await?;
    tx.execute(&st, &[&ids, &n]).await?;
    Ok(())
}

/// RetryJobs put `retried` (in this order) back in the queue, to be saved
/// in `tx` after this: WAITING children already stored count them as
/// unfinished again, and so does a job of `retried` placed WAITING before a
/// parent of it was retried (it counted that parent as finished then).
pub(super) async fn reopen(tx: &Tx<'_>, retried: &mut [Job]) -> Result<(), StoreError> {
    if retried.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = retried.iter().map(|j| j.id).collect();
    // Before the save: the retried jobs themselves are still terminal in
    // the table, so this touches only children outside the batch.
    let st = tx.prepare_cached(REOPEN).await?;
    tx.execute(&st, &[&ids]).await?;
    let order: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for (i, j) in retried.iter_mut().enumerate() {
        if j.state == JobState::Waiting {
            let later = j.parents.iter().filter(|p| order.get(p) > Some(&i));
            j.waiting_on += later.count() as u32;
        }
    }
    Ok(())
}

impl Writer {
    /// Hands committed moves to [`take_moved`](crate::store::Store::take_moved).
    /// Only after the commit: a rolled-back move never happened.
    pub(super) fn publish(&self, moved: Vec<Moved>) {
        if moved.is_empty() {
            return;
        }
        let mut m = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        m.extend(moved);
    }

    pub(super) fn take_moved(&self) -> Vec<Moved> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl PostgresStore {
    /// RetryJobs: each FAILED or CANCELLED job back to the queue, or, when
    /// it has parents, where they say now ([`deps::replace`]: WAITING
    /// again, or refused while a failed parent still cancels it). Parents
    /// are held `FOR SHARE` while deciding; a job retried here counts for
    /// the jobs after it in `ids` as it is now.
    pub(super) async fn retry_jobs(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<RetryOutcome>, StoreError> {
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            let mut found: HashMap<Uuid, Job> = sql::select(&tx, &sql::LOCK_IDS, &[&ids])
                .await?
                .into_iter()
                .map(|j| (j.id, j))
                .collect();
            let parents = parents_of(found.values().filter(|j| transition::retryable(j.state)));
            let mut states = share_states(&tx, &parents).await?;
            // Like submits, against this instance's count of waiting jobs.
            let mut room = (max_backlog.min(i64::MAX as u64) as i64)
                .saturating_sub(self.w.waiting.load(Ordering::Acquire));
            let mut out = Vec::with_capacity(ids.len());
            let (mut changed, mut old, mut slots) = (Vec::new(), Vec::new(), Vec::new());
            for id in ids {
                let before = found.get(id).filter(|j| !j.parents.is_empty()).cloned();
                out.push(
                    match transition::decide_retry(found.remove(id), room > 0, now) {
                        transition::RetryDecision::Skip(skipped) => skipped,
                        transition::RetryDecision::Retry {
                            mut job,
                            prev,
                            attempt,
                        } => {
                            let ps = parent_states(&job, &states);
                            if !deps::replace(&mut job, ps, now) {
                                RetryOutcome::NotRetryable(before.unwrap_or(job))
                            } else {
                                room -= 1;
                                states.insert(job.id, job.state);
                                slots.push((out.len(), prev));
                                old.push((prev, attempt));
                                changed.push(job);
                                // Answered below, once counted.
                                RetryOutcome::NotFound
                            }
                        }
                    },
                );
            }
            reopen(&tx, &mut changed).await?;
            for ((slot, prev), job) in slots.into_iter().zip(&changed) {
                out[slot] = RetryOutcome::Retried {
                    job: job.clone(),
                    prev,
                };
            }
            sql::save(&self.w, &tx, &changed, &old).await?;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// The sweeper's re-check: WAITING jobs whose parents all ended (a
    /// release that should not have been missed), moved where their parents
    /// say, each under its lock with its parents held `FOR SHARE`; the
    /// cascades of those that end go to `take_moved`.
    pub(super) async fn recheck_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<Moved>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let found = self
            .with_statement(STRANDED, async |c, st| Ok(c.query(st, &[&limit]).await?))
            .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(found.len());
        let mut parents = Vec::new();
        for r in &found {
            ids.push(rows::col::<Uuid>(r, 0)?);
            parents.extend(rows::col::<Option<Vec<Uuid>>>(r, 1)?.unwrap_or_default());
        }
        parents.sort_unstable();
        parents.dedup();
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            // Parents first, then children: the order every writer takes.
            let states = share_states(&tx, &parents).await?;
            let params: [&(dyn ToSql + Sync); 1] = [&ids];
            let mut jobs = sql::select(&tx, &LOCK_STRANDED, &params).await?;
            jobs.retain_mut(|j| {
                let ps = parent_states(j, &states);
                !ps.iter().any(|(_, s)| !s.is_terminal()) && deps::recheck(j, ps, now)
            });
            let old: Vec<(JobState, u32)> = jobs
                .iter()
                .map(|j| (JobState::Waiting, j.attempt))
                .collect();
            sql::save(&self.w, &tx, &jobs, &old).await?;
            let cascaded = cascade(&self.w, &tx, &jobs).await?;
            tx.commit().await?;
            self.w.publish(cascaded);
            Ok(jobs
                .into_iter()
                .map(|job| Moved {
                    prev: JobState::Waiting,
                    job,
                })
                .collect())
        })
        .await
    }
}
