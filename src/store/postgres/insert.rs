//! Submits: a batch in one transaction and one INSERT, whatever its size.
//! Jobs with parents (depends_on) also read their parents' states, locked
//! `FOR SHARE` so none can end unseen before the child is committed (see
//! [`super::deps`]), and write their `job_deps` rows; a batch without any
//! pays nothing for that.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::{dedup as held, deps, pooled, sql, PostgresStore, Tx, Writer};
use crate::job::{now_micros, Job, JobState, NewJob};
use crate::store::dedup::{self, DedupOutcome};
use crate::store::deps::Standing;
use crate::store::{idempotent, transition, InsertOutcome, StoreError};

/// Edges of the jobs just inserted.
const INSERT_EDGES: &str = "INSERT INTO job_deps (parent, child) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING";

/// Jobs of this batch that could not be stored after all (a parent of
/// theirs in the batch lost its idempotency key to a concurrent submit).
const DELETE_JOBS: &str = "DELETE FROM jobs WHERE id = ANY($1)";

/// Times a batch runs again after losing a dedup key to a concurrent
/// submit (each run finds the winner committed and merges into it).
const DEDUP_RACE_RUNS: usize = 5;

/// What a batch stores: the answers known before the INSERT, the jobs to
/// insert (each with its entry's index), and the stored jobs merged into
/// (dedup REPLACE or DEBOUNCE).
struct Plan {
    out: Vec<Option<InsertOutcome>>,
    fresh: Vec<(usize, Job)>,
    merged: Vec<Job>,
}

impl PostgresStore {
    pub(super) async fn insert_jobs(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        for _ in 0..DEDUP_RACE_RUNS {
            let out = self
                .run(async {
                    let mut c = pooled(&self.pool).await?;
                    let tx = c.transaction().await?;
                    let plan = plan(&self.w, &tx, &jobs, max_backlog).await?;
                    // None: a dedup key was lost; the transaction rolls back.
                    let Some((out, waiting)) = store(&self.w, &tx, plan).await? else {
                        return Ok(None);
                    };
                    tx.commit().await?;
                    self.w.waiting.fetch_add(waiting, Ordering::AcqRel);
                    Ok(Some(out))
                })
                .await?;
            if out.is_none() {
                tracing::debug!("a dedup key was taken by a concurrent submit; submitting again");
            }
            if let Some(out) = out {
                return out
                    .into_iter()
                    .map(|o| o.ok_or_else(|| StoreError::Internal("submit without outcome".into())))
                    .collect();
            }
        }
        Err(StoreError::Unavailable(
            "dedup key contended by concurrent submits; try again".into(),
        ))
    }
}

/// The jobs a batch's entries have been answered with so far: entries
/// planned as new jobs, stored jobs they merged into, and the states of
/// the parents named.
#[derive(Default)]
struct Seen {
    /// Entry id -> the job that answered it (`$N` naming it means that job).
    aliases: HashMap<Uuid, Uuid>,
    /// Index into `fresh` of the job taking each idempotency key.
    batch_keys: HashMap<String, usize>,
    /// Index into `fresh` of the new job holding each (kind, dedup key).
    batch_dedup: HashMap<(String, String), usize>,
    /// Stored holders found, by (kind, dedup key): the job, and whether a
    /// merge changed it.
    holders: HashMap<(String, String), (Job, bool)>,
}

/// Decides each entry: deduplicated, merged, over the backlog bound, an
/// unknown parent, or a job to insert (placed where its parents say).
async fn plan(
    w: &Writer,
    tx: &Tx<'_>,
    jobs: &[NewJob],
    max_backlog: u64,
) -> Result<Plan, StoreError> {
    let keys: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.idempotency_key.as_deref())
        .collect();
    let existing = sql::by_keys(tx, &keys).await?;
    let with_parents = jobs.iter().any(|j| !j.parents.is_empty());
    let mut stored = match with_parents {
        true => deps::share_states(tx, &outside_parents(jobs)).await?,
        false => HashMap::new(),
    };
    held::lock_holders(tx, jobs).await?;
    let mut placed: HashMap<Uuid, JobState> = HashMap::new();
    let mut room =
        (max_backlog.min(i64::MAX as u64) as i64).saturating_sub(w.waiting.load(Ordering::Acquire));
    let mut out: Vec<Option<InsertOutcome>> = vec![None; jobs.len()];
    let mut seen = Seen::default();
    let mut fresh: Vec<(usize, Job)> = Vec::new();
    let now = now_micros();
    for (i, new) in jobs.iter().enumerate() {
        let aliased;
        let new = if new.parents.iter().any(|p| seen.aliases.contains_key(p)) {
            let mut n = new.clone();
            for p in n.parents.iter_mut() {
                *p = seen.aliases.get(p).copied().unwrap_or(*p);
            }
            // A job answering an earlier entry is a stored job: its state,
            // locked like the other parents'.
            let unknown: Vec<Uuid> = n
                .parents
                .iter()
                .filter(|p| !placed.contains_key(p) && !stored.contains_key(p))
                .copied()
                .collect();
            stored.extend(deps::share_states(tx, &unknown).await?);
            aliased = n;
            &aliased
        } else {
            new
        };
        if let Some(o) = answered(tx, new, &existing, &mut fresh, &mut seen, now).await? {
            if let InsertOutcome::Deduplicated(j) | InsertOutcome::Merged { job: j, .. } = &o {
                seen.aliases.insert(new.id, j.id);
            }
            out[i] = Some(o);
            continue;
        }
        if room <= 0 {
            out[i] = Some(InsertOutcome::BacklogFull);
            continue;
        }
        // `start` is declined here: instances share the queue, so a job
        // always goes through the claim (see `NewJob::start`).
        let job = if new.parents.is_empty() {
            new.clone().into_job()
        } else {
            match standing(new, &placed, &stored) {
                Ok(s) => transition::create(new.clone(), now, s, |_| true),
                Err(p) => {
                    out[i] = Some(InsertOutcome::UnknownParent(p));
                    continue;
                }
            }
        };
        room -= 1;
        if let Some(k) = &new.idempotency_key {
            seen.batch_keys.insert(k.clone(), fresh.len());
        }
        if let Some(k) = &job.dedup_key {
            seen.batch_dedup
                .insert((job.kind.clone(), k.clone()), fresh.len());
        }
        if with_parents {
            placed.insert(job.id, job.state);
        }
        fresh.push((i, job));
    }
    let merged = seen
        .holders
        .into_values()
        .filter_map(|(j, changed)| changed.then_some(j))
        .collect();
    Ok(Plan { out, fresh, merged })
}

/// The answer of an existing job, if one answers `new`: its idempotency
/// key (checked first), or the job of its kind holding its dedup key (an
/// earlier entry of the batch, or a stored job, locked), merged into.
async fn answered(
    tx: &Tx<'_>,
    new: &NewJob,
    existing: &HashMap<String, Job>,
    fresh: &mut [(usize, Job)],
    seen: &mut Seen,
    now: i64,
) -> Result<Option<InsertOutcome>, StoreError> {
    if let Some(k) = &new.idempotency_key {
        if let Some(e) = existing.get(k) {
            return Ok(Some(idempotent(e, &new.request_hash)));
        }
        if let Some(&f) = seen.batch_keys.get(k) {
            return Ok(Some(idempotent(&fresh[f].1, &new.request_hash)));
        }
    }
    let Some(d) = &new.dedup else {
        return Ok(None);
    };
    let key = (new.kind.clone(), d.key.clone());
    // Several merges in one commit are one change: one sequence step.
    let merge = |into: &mut Job, changed: &mut bool| {
        let (m, outcome) = dedup::merge(into, new, now);
        if let Some(mut m) = m {
            if *changed {
                m.sequence = into.sequence;
            }
            *into = m;
            *changed = true;
        }
        InsertOutcome::Merged {
            job: into.clone(),
            outcome,
        }
    };
    if let Some(&f) = seen.batch_dedup.get(&key) {
        // Not stored yet: its first event is still to come.
        return Ok(Some(merge(&mut fresh[f].1, &mut true)));
    }
    if !seen.holders.contains_key(&key) {
        match held::holder(tx, &new.kind, &d.key).await? {
            Some(h) => seen.holders.insert(key.clone(), (h, false)),
            None => return Ok(None),
        };
    }
    let (job, changed) = seen.holders.get_mut(&key).expect("just found");
    let o = merge(job, changed);
    debug_assert!(!matches!(
        o,
        InsertOutcome::Merged {
            outcome: DedupOutcome::Created,
            ..
        }
    ));
    Ok(Some(o))
}

/// The parents a batch names that are not entries of it, each once: they
/// are held `FOR SHARE` until the commit. (Entries may name earlier
/// entries of the batch, known from what was planned before them.)
fn outside_parents(jobs: &[NewJob]) -> Vec<Uuid> {
    let batch: HashSet<Uuid> = jobs.iter().map(|j| j.id).collect();
    let mut ids: Vec<Uuid> = jobs
        .iter()
        .flat_map(|j| j.parents.iter().copied())
        .filter(|p| !batch.contains(p))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Where `new` stands among its parents (earlier entries of the batch, or
/// stored jobs); `Err` names the first parent that is neither.
fn standing(
    new: &NewJob,
    placed: &HashMap<Uuid, JobState>,
    stored: &HashMap<Uuid, JobState>,
) -> Result<Standing, Uuid> {
    let mut states = Vec::with_capacity(new.parents.len());
    for p in &new.parents {
        let s = placed.get(p).or_else(|| stored.get(p)).ok_or(*p)?;
        states.push((*p, *s));
    }
    Ok(crate::store::deps::standing(new.on_parent_failure, states))
}

/// Inserts the planned jobs and their edges; answers every entry. Returns
/// the answers and how many stored jobs count against the backlog.
/// `None` when a job lost its dedup key to a concurrent submit (the batch
/// must run again, to merge into the winner).
async fn store(
    w: &Writer,
    tx: &Tx<'_>,
    plan: Plan,
) -> Result<Option<(Vec<Option<InsertOutcome>>, i64)>, StoreError> {
    let Plan {
        mut out,
        fresh,
        merged,
    } = plan;
    // Rows go in key order, so two batches racing on the same keys wait
    // for each other instead of deadlocking.
    let mut rows: Vec<&Job> = fresh.iter().map(|(_, j)| j).collect();
    rows.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    let inserted = sql::insert_rows(tx, &rows).await?;
    // A job missing from `inserted` lost its key to a concurrent submit
    // that committed first: answer with that job.
    let lost: Vec<&str> = fresh
        .iter()
        .filter(|(_, j)| !inserted.contains(&j.id))
        .filter_map(|(_, j)| j.idempotency_key.as_deref())
        .collect();
    let winners = sql::by_keys(tx, &lost).await?;
    // A job skipped without a winner by its idempotency key lost its dedup
    // key (the unique index) to a submit that committed first.
    let raced = fresh.iter().any(|(_, j)| {
        !inserted.contains(&j.id)
            && !j
                .idempotency_key
                .as_ref()
                .is_some_and(|k| winners.contains_key(k))
    });
    if raced {
        return Ok(None);
    }
    held::write(w, tx, &merged).await?;
    let orphans = orphans(&fresh, &inserted);
    if !orphans.is_empty() {
        let ids: Vec<Uuid> = orphans.keys().copied().collect();
        let st = tx.prepare_cached(DELETE_JOBS).await?;
        tx.execute(&st, &[&ids]).await?;
    }
    let mut waiting = 0;
    let (mut parents, mut children) = (Vec::new(), Vec::new());
    for (i, job) in &fresh {
        out[*i] = Some(if let Some(p) = orphans.get(&job.id) {
            InsertOutcome::UnknownParent(*p)
        } else if inserted.contains(&job.id) {
            waiting += i64::from(job.state.is_waiting());
            for p in &job.parents {
                parents.push(*p);
                children.push(job.id);
            }
            InsertOutcome::Created(job.clone())
        } else {
            let w = job
                .idempotency_key
                .as_ref()
                .and_then(|k| winners.get(k))
                .ok_or_else(|| {
                    StoreError::Internal(format!("job {} was not stored", job.id).into())
                })?;
            idempotent(w, &job.request_hash)
        });
    }
    if !parents.is_empty() {
        let st = tx.prepare_cached(INSERT_EDGES).await?;
        tx.execute(&st, &[&parents, &children]).await?;
    }
    Ok(Some((out, waiting)))
}

/// Jobs inserted whose parent in the batch was not (its key taken by a
/// concurrent submit), and theirs in turn: each with that parent.
fn orphans(fresh: &[(usize, Job)], inserted: &HashSet<Uuid>) -> HashMap<Uuid, Uuid> {
    let mut gone: HashSet<Uuid> = fresh
        .iter()
        .filter(|(_, j)| !inserted.contains(&j.id))
        .map(|(_, j)| j.id)
        .collect();
    let mut out = HashMap::new();
    if gone.is_empty() {
        return out;
    }
    // Parents come before their children in a batch.
    for (_, j) in fresh.iter().filter(|(_, j)| inserted.contains(&j.id)) {
        if let Some(p) = j.parents.iter().find(|p| gone.contains(p)) {
            out.insert(j.id, *p);
            gone.insert(j.id);
        }
    }
    out
}
