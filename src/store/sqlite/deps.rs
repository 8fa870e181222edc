//! Workflows on SQLite: a job's parents checked and its edges written at
//! insert, and a parent's end moving its WAITING children (released,
//! cancelled, one parent fewer) inside the same write ([`after_save`], run
//! by every transition's `save`), down the graph.

use super::*;
use crate::store::deps::{self, Moved};

/// Each parent's id and state; `Err(id)` for the first that does not exist.
pub(super) fn parent_states(
    tx: &Transaction<'_>,
    parents: &[Uuid],
) -> Result<Result<Vec<(Uuid, JobState)>, Uuid>, StoreError> {
    let mut s = tx
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")
        .map_err(map_err)?;
    let mut out = Vec::with_capacity(parents.len());
    for p in parents {
        let state: Option<i64> = s
            .query_row([p.as_bytes().as_slice()], |r| r.get(0))
            .optional()
            .map_err(map_err)?;
        match state {
            Some(code) => out.push((*p, state_from(code).map_err(map_err)?)),
            None => return Ok(Err(*p)),
        }
    }
    Ok(Ok(out))
}

/// Where a new job with these parents stands; `Err(id)` for a parent that
/// does not exist.
pub(super) fn standing(
    tx: &Transaction<'_>,
    new: &NewJob,
) -> Result<Result<deps::Standing, Uuid>, StoreError> {
    if new.parents.is_empty() {
        return Ok(Ok(deps::Standing::Ready));
    }
    Ok(parent_states(tx, &new.parents)?.map(|p| deps::standing(new.on_parent_failure, p)))
}

/// Writes the edges of a job just inserted.
pub(super) fn insert_edges(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    job: &Job,
) -> Result<(), StoreError> {
    if job.parents.is_empty() {
        return Ok(());
    }
    st.has_deps = true;
    let mut s = tx
        .prepare_cached("INSERT OR IGNORE INTO job_deps (parent, child) VALUES (?1, ?2)")
        .map_err(map_err)?;
    for p in &job.parents {
        s.execute(params![
            p.as_bytes().as_slice(),
            job.id.as_bytes().as_slice()
        ])
        .map_err(map_err)?;
    }
    Ok(())
}

fn children(tx: &Transaction<'_>, id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    ids(
        tx,
        "SELECT child FROM job_deps WHERE parent = ?1",
        [id.as_bytes().as_slice()],
    )
}

/// After `job` was saved from `old_state`: a parent's end moves its WAITING
/// children (and theirs, through their own saves); a parent put back in
/// the queue (RetryJobs) counts as unfinished again for children that
/// still wait.
pub(super) fn after_save(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    job: &Job,
    old_state: JobState,
) -> Result<(), StoreError> {
    if !st.has_deps || job.state.is_terminal() == old_state.is_terminal() {
        return Ok(());
    }
    if !job.state.is_terminal() {
        tx.prepare_cached(
            "UPDATE jobs SET waiting_on = waiting_on + 1 WHERE state = 6 AND id IN \
             (SELECT child FROM job_deps WHERE parent = ?1)",
        )
        .and_then(|mut s| s.execute([job.id.as_bytes().as_slice()]))
        .map_err(map_err)?;
        return Ok(());
    }
    for child in children(tx, job.id)? {
        let Some(mut c) = load(tx, child)? else {
            continue;
        };
        if c.state != JobState::Waiting {
            continue;
        }
        let attempt = c.attempt;
        if deps::parent_ended(&mut c, job.id, job.state, job.updated_at) {
            save(tx, st, &c, JobState::Waiting, attempt)?;
            st.moved.push(Moved {
                prev: JobState::Waiting,
                job: c,
            });
        } else {
            save(tx, st, &c, JobState::Waiting, attempt)?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// WAITING jobs whose parents are all terminal, found on a read
    /// connection, then each re-checked and moved in the writer.
    pub(super) async fn recheck_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<Moved>, StoreError> {
        let found: Vec<Vec<u8>> = self
            .read(move |c| {
                let mut s = c.prepare_cached(
                    "SELECT j.id FROM jobs j INDEXED BY jobs_waiting WHERE j.state = 6 AND NOT EXISTS \
                     (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent \
                      WHERE d.child = j.id AND p.state NOT IN (3, 4, 5)) LIMIT ?1",
                )?;
                let rows = s.query_map([limit as i64], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        let found: Vec<Uuid> = found
            .iter()
            .filter_map(|b| Uuid::from_slice(b).ok())
            .collect();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |tx, st| {
            let mut out = Vec::new();
            for id in found {
                let Some(mut job) = load(tx, id)? else {
                    continue;
                };
                if job.state != JobState::Waiting {
                    continue;
                }
                let states = match parent_states(tx, &job.parents)? {
                    Ok(s) => s,
                    // A parent pruned: it had finished.
                    Err(_) => continue,
                };
                if states.iter().any(|(_, s)| !s.is_terminal()) {
                    continue;
                }
                let attempt = job.attempt;
                if deps::recheck(&mut job, states, now) {
                    save(tx, st, &job, JobState::Waiting, attempt)?;
                    out.push(Moved {
                        prev: JobState::Waiting,
                        job,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn children_of(
        &self,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<Vec<u8>> = self
            .read(move |c| {
                let mut s =
                    c.prepare_cached("SELECT child FROM job_deps WHERE parent = ?1 LIMIT ?2")?;
                let rows = s.query_map(params![id.as_bytes().as_slice(), limit as i64], |r| {
                    r.get(0)
                })?;
                rows.collect()
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|b| Uuid::from_slice(b).ok())
            .collect())
    }
}
