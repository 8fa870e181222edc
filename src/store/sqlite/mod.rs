//! The embedded default store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a commit is on disk before it is acknowledged.
//!
//! Writes go through one writer thread that groups every request waiting in
//! its queue into a single transaction (group commit): one fsync serves many
//! submits and transitions, and no async runtime thread ever waits on SQLite.
//! Each request runs inside its own savepoint, so one failing request does
//! not undo the others in its group. Reads use a small pool of read-only
//! connections on the blocking thread pool; WAL lets them run beside the
//! writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use super::codec::{self, decode_labels, encode_labels, COLS};
use super::limits::{self, Bucket, KindBudget};
mod checkpoint;
mod claim;
mod deadlines;
mod dedup;
mod deps;
mod outcomes;
mod progress;
mod rows;
mod schedules;
mod schema;
mod sql;
#[cfg(test)]
mod tests;
mod writer;

use super::{
    transition, CancelOutcome, ClaimOutcome, ClaimRequest, Detail, Finish, FinishResults,
    InsertOutcome, ListQuery, Outcome, RetryOutcome, ScheduleRow, StateCounts, Store, StoreError,
};
use crate::job::{now_micros, Job, JobState, Micros, NewJob};
use checkpoint::{Checkpointer, WRITER_BOUND};
use rows::*;
use schema::*;
use sql::*;
use writer::*;

/// Write requests queued for the writer at most; callers wait (async) when
/// it is full, which is the backpressure on submitters.
const WRITE_QUEUE: usize = 4096;
/// Requests in one transaction at most.
const GROUP_MAX: usize = 1024;
/// Reads running at once, and idle read connections kept. Each read holds
/// a blocking-pool thread and a connection (three descriptors with the WAL),
/// so reads past it wait for a place instead of growing the pool: 10,000
/// watch starts at once took 512 threads and ~150 descriptors unbounded.
const MAX_READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// [`MAX_READERS`] places; a read takes one for its whole run.
    read_slots: Arc<Semaphore>,
    /// Children moved by their parents' ends, committed, for the engine.
    moved: Arc<Mutex<Vec<crate::store::deps::Moved>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (conn, (waiting, has_deps), ckpt) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        let message = format!("cannot create {}: {e}", dir.display());
                        StoreError::Unavailable(Detail::new(message).because(e))
                    })?;
                }
                let mut conn = Connection::open(&p).map_err(map_err)?;
                configure(&conn).map_err(map_err)?;
                migrate(&mut conn)?;
                let waiting = count_waiting(&conn).map_err(map_err)?;
                let has_deps: bool = conn
                    .query_row("SELECT EXISTS (SELECT 1 FROM job_deps)", [], |r| r.get(0))
                    .map_err(map_err)?;
                let ckpt = Checkpointer::connect(&p).map_err(map_err)?;
                let ckpt = Checkpointer::start(ckpt).map_err(|e| {
                    let message = format!("cannot start checkpoint thread: {e}");
                    StoreError::Internal(Detail::new(message).because(e))
                })?;
                Ok((conn, (waiting, has_deps), ckpt))
            })
            .await
            .map_err(|e| StoreError::Internal(Detail::new(e.to_string()).because(e)))??;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let moved = Arc::new(Mutex::new(Vec::new()));
        let committed = moved.clone();
        std::thread::Builder::new()
            .name("jobd-sqlite-writer".into())
            .spawn(move || {
                writer_loop(
                    conn,
                    ckpt,
                    rx,
                    WriterState {
                        waiting,
                        buckets: HashMap::new(),
                        cursors: HashMap::new(),
                        key_buckets: Default::default(),
                        has_deps,
                        moved: Vec::new(),
                        committed,
                    },
                )
            })
            .map_err(|e| {
                let message = format!("cannot start writer thread: {e}");
                StoreError::Internal(Detail::new(message).because(e))
            })?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(Semaphore::new(MAX_READERS)),
            moved,
        })
    }

    /// Runs `f` in the writer's next group transaction, inside a savepoint
    /// of its own that is rolled back if `f` fails; returns once that
    /// transaction committed (or failed).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_with(false, f).await
    }

    /// [`Self::write`]; `single_change`: see [`Work::single_change`].
    async fn write_with<T: Send + 'static>(
        &self,
        single_change: bool,
        f: impl FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let run: WorkFn = Box::new(move |ctx| {
            let r = ctx.and_then(|(t, st)| f(t, st));
            let failed = r.is_err();
            let reply: Reply = Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(r));
            });
            (reply, failed)
        });
        let work = Work {
            run,
            single_change,
            outcomes: false,
        };
        self.writer
            .send(Request::Work(work))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Applies `f` to every job the query selects, in one write.
    async fn transition_selected(
        &self,
        sql: &'static str,
        params: impl rusqlite::Params + Send + 'static,
        f: impl Fn(&mut Job) + Send + 'static,
    ) -> Result<Vec<Job>, StoreError> {
        self.write(move |tx, st| {
            let due = ids(tx, sql, params)?;
            transition_all(tx, st, due, |j| {
                f(j);
                true
            })
        })
        .await
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.writer.is_closed() {
            return Err(gone());
        }
        let pool = self.readers.clone();
        let path = self.path.clone();
        // Never closed, so acquiring only fails if that changes.
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let conn = match pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(map_err)?;
                    c.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
                    configure_statements(&c).map_err(map_err)?;
                    c
                }
            };
            let r = f(&conn).map_err(map_err);
            let mut p = pool.lock().unwrap_or_else(|p| p.into_inner());
            if p.len() < MAX_READERS {
                p.push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::Internal(Detail::new(e.to_string()).because(e)))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        // One job without parents: at most its INSERT changes anything, as
        // the last step (a job with parents writes its edges too).
        let single = jobs.len() == 1 && jobs[0].parents.is_empty() && jobs[0].dedup.is_none();
        self.write_with(single, move |tx, st| {
            // Entries answered by an existing job: `$N` naming them means it.
            let mut aliases: HashMap<Uuid, Uuid> = HashMap::new();
            jobs.into_iter()
                .map(|mut j| {
                    for p in j.parents.iter_mut() {
                        *p = aliases.get(p).copied().unwrap_or(*p);
                    }
                    let id = j.id;
                    let o = insert_one(tx, st, j, max_backlog)?;
                    if let InsertOutcome::Deduplicated(e) | InsertOutcome::Merged { job: e, .. } =
                        &o
                    {
                        aliases.insert(id, e.id);
                    }
                    Ok(o)
                })
                .collect()
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLS} FROM jobs WHERE id = ?1"))?
                .query_row([id.as_bytes().as_slice()], row_to_job)
                .optional()
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let after = codec::list_start(&q).as_bytes().to_vec();
            let sql = codec::list_sql(&q, |n| format!("?{n}"));
            let mut s = c.prepare_cached(&sql)?;
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&after];
            let state = q.state.map(state_code);
            if let Some(st) = &state {
                params.push(st);
            }
            if let Some(k) = &q.kind {
                params.push(k);
            }
            if let Some(k) = &q.ordering_key {
                params.push(k);
            }
            let limit = q.limit as i64;
            params.push(&limit);
            let rows = s.query_map(params.as_slice(), row_to_job)?;
            rows.collect()
        })
        .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let req = req.clone();
        self.write(move |tx, st| claim::claim(tx, st, &req)).await
    }

    async fn expire_unstarted(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<crate::store::deps::Moved>, StoreError> {
        self.expire_due(now, limit).await
    }

    async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
    ) -> Result<Option<Job>, StoreError> {
        self.write(move |tx, st| {
            Ok(transition_all(tx, st, vec![id], |j| {
                transition::finish(j, attempt, outcome.clone(), now)
            })?
            .pop())
        })
        .await
    }

    async fn finish_many(&self, items: Vec<Finish>) -> Result<FinishResults, StoreError> {
        self.write_outcomes(items).await
    }

    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError> {
        self.write(move |tx, st| {
            let Some(mut job) = load(tx, id)? else {
                return Ok(CancelOutcome::NotFound);
            };
            Ok(match job.state {
                JobState::Cancelled => CancelOutcome::AlreadyCancelled(job),
                JobState::Succeeded | JobState::Failed => CancelOutcome::AlreadyFinished(job),
                prev => {
                    let a = job.attempt;
                    transition::cancel(&mut job, now);
                    save(tx, st, &job, prev, a)?;
                    CancelOutcome::Cancelled { job, prev }
                }
            })
        })
        .await
    }

    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached(
                "UPDATE jobs SET next_attempt_at = NULL, updated_at = ?1 WHERE seq IN \
                 (SELECT seq FROM jobs INDEXED BY jobs_delayed WHERE state = 0 AND next_attempt_at <= ?1 \
                  ORDER BY next_attempt_at LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![now, limit as i64]))
            .map_err(map_err)
        })
        .await
    }

    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.transition_selected(
            "SELECT id FROM jobs INDEXED BY jobs_retry WHERE state = 2 AND next_attempt_at <= ?1 \
             ORDER BY next_attempt_at LIMIT ?2",
            (now, limit as i64),
            move |j| transition::promote(j, now),
        )
        .await
    }

    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.transition_selected(
            "SELECT id FROM jobs INDEXED BY jobs_lease WHERE state = 1 AND lease_expires_at <= ?1 \
             ORDER BY lease_expires_at LIMIT ?2",
            (now, limit as i64),
            move |j| transition::lease_lost(j, now, "lease expired"),
        )
        .await
    }

    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError> {
        // Every RUNNING job is from a past life of this (single) daemon.
        self.transition_selected("SELECT id FROM jobs WHERE state = 1", (), move |j| {
            transition::lease_lost(j, now, "daemon stopped")
        })
        .await
    }

    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT MIN(t) FROM ( \
                 SELECT MIN(next_attempt_at) AS t FROM jobs INDEXED BY jobs_delayed WHERE state = 0 AND next_attempt_at > ?1 \
                 UNION ALL SELECT MIN(next_attempt_at) FROM jobs INDEXED BY jobs_retry WHERE state = 2 AND next_attempt_at > ?1 \
                 UNION ALL SELECT MIN(lease_expires_at) FROM jobs INDEXED BY jobs_lease WHERE state = 1 AND lease_expires_at > ?1)",
            )?
            .query_row([after], |r| r.get(0))
        })
        .await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.read(|c| {
            let mut s = c.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = s.query_map([], |r| {
                Ok((state_from(r.get(0)?)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
        .await
    }

    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT state, kind, COUNT(*) FROM jobs WHERE state IN (0, 1, 2, 6) GROUP BY state, kind",
            )?;
            let rows = s.query_map([], |r| {
                Ok((state_from(r.get(0)?)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })
        .await
    }

    async fn keys_waiting(&self, kinds: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let kinds = kinds.to_vec();
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT COUNT(DISTINCT ordering_key) FROM jobs INDEXED BY jobs_key \
                 WHERE kind = ?1 AND ordering_key IS NOT NULL AND state = 0",
            )?;
            kinds
                .into_iter()
                .map(|k| {
                    let n: i64 = s.query_row([&k], |r| r.get(0))?;
                    Ok((k, n as u64))
                })
                .collect()
        })
        .await
    }

    async fn count_failed_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            let mut s =
                c.prepare_cached("SELECT kind, COUNT(*) FROM jobs WHERE state = 4 GROUP BY kind")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    async fn retry(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<RetryOutcome>, StoreError> {
        let ids = ids.to_vec();
        let max = max_backlog.min(i64::MAX as u64) as i64;
        self.write(move |tx, st| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(
                    match transition::decide_retry(load(tx, id)?, st.waiting < max, now) {
                        transition::RetryDecision::Skip(skipped) => skipped,
                        transition::RetryDecision::Retry {
                            mut job,
                            prev,
                            attempt,
                        } => {
                            let parents = deps::parent_states(tx, &job.parents)?;
                            let parents = parents.unwrap_or_default();
                            if crate::store::deps::replace(&mut job, parents, now) {
                                save(tx, st, &job, prev, attempt)?;
                                RetryOutcome::Retried { job, prev }
                            } else {
                                RetryOutcome::NotRetryable(load(tx, id)?.unwrap_or(job))
                            }
                        }
                    },
                );
            }
            Ok(out)
        })
        .await
    }

    async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
        now: Micros,
    ) -> Result<(), StoreError> {
        let kind = kind.to_string();
        self.write(move |tx, _| {
            let r = if paused {
                tx.prepare_cached(
                    "INSERT INTO kind_pauses (kind, paused_at) VALUES (?1, ?2) \
                     ON CONFLICT (kind) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![kind, now]))
            } else {
                tx.prepare_cached("DELETE FROM kind_pauses WHERE kind = ?1")
                    .and_then(|mut s| s.execute(params![kind]))
            };
            r.map(|_| ()).map_err(map_err)
        })
        .await
    }

    async fn paused_kinds(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.read(|c| {
            let mut s = c.prepare_cached("SELECT kind FROM kind_pauses")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn init_schedule(&self, id: &str, next_fire_at: Micros) -> Result<(), StoreError> {
        self.schedule_init(id, next_fire_at).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.schedule_rows().await
    }

    async fn advance_schedule(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        self.schedule_advance(id, old, new).await
    }

    async fn set_schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        self.schedule_last_job(id, job).await
    }

    async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        self.schedule_paused(id, paused).await
    }

    async fn create_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Micros,
        max: usize,
    ) -> Result<crate::store::CreateSchedule, StoreError> {
        self.schedule_create(id, definition, next_fire_at, max)
            .await
    }

    async fn update_schedule(
        &self,
        id: &str,
        definition: &str,
        next_fire_at: Option<Micros>,
    ) -> Result<bool, StoreError> {
        self.schedule_update(id, definition, next_fire_at).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.schedule_delete(id).await
    }

    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_finished WHERE state >= 3 \
                 AND finished_at < ?1 ORDER BY finished_at LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![before, limit as i64]))
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }

    async fn set_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: crate::job::Progress,
    ) -> Result<Option<Job>, StoreError> {
        self.put_progress(id, attempt, progress).await
    }

    async fn append_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
        at: Micros,
        keep: usize,
    ) -> Result<bool, StoreError> {
        self.put_logs(id, attempt, lines, at, keep).await
    }

    fn take_moved(&self) -> Vec<crate::store::deps::Moved> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn release_waiting(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<crate::store::deps::Moved>, StoreError> {
        self.recheck_waiting(now, limit).await
    }

    async fn children(&self, id: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.children_of(id, limit).await
    }

    async fn set_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: Bytes,
    ) -> Result<bool, StoreError> {
        self.put_checkpoint(id, attempt, checkpoint).await
    }

    async fn extend_lease(
        &self,
        id: Uuid,
        attempt: u32,
        until: Micros,
    ) -> Result<bool, StoreError> {
        self.push_lease(id, attempt, until).await
    }

    async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError> {
        self.read_logs(id, after, limit).await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let now = crate::job::now_micros();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT OR REPLACE INTO jobd_probe (id, at) VALUES (1, ?1)")
                .and_then(|mut s| s.execute([now]))
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Request::Close(tx)).await.is_err() {
            return Ok(());
        }
        let _ = rx.await;
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}
