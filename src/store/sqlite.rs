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
use super::sqlite_checkpoint::{Checkpointer, WRITER_BOUND};
use super::{
    transition, CancelOutcome, ClaimOutcome, ClaimRequest, Finish, FinishResults, InsertOutcome,
    ListQuery, Outcome, RetryOutcome, ScheduleRow, StateCounts, Store, StoreError,
};
use crate::job::{now_micros, Job, JobState, Micros, NewJob};

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

/// Queries name their partial index (`INDEXED BY`): without statistics the
/// planner would pick `jobs_state_id` and sort every QUEUED row per claim.
/// Once applied, a migration is never edited: changes are new entries.
///
/// One kind's claimable jobs (`?1` kind, `?2` rows).
const CLAIM_KIND: &str = "SELECT priority, seq, id FROM jobs INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 \
     ORDER BY priority DESC, seq LIMIT ?2";

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// Whether kind `?1` has a job ready to claim (a new job is then not
/// started ahead of it; see `NewJob::start`).
const KIND_HAS_READY: &str = "SELECT 1 FROM jobs INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 LIMIT 1";

/// [`CLAIM_KIND`] for a kind with ordering keys: a keyed job is claimable
/// while its key's places held (RUNNING and RETRY_WAIT jobs, then QUEUED
/// ones submitted before it) are fewer than `?3`. Each count stops at `?3`
/// rows of `jobs_key`, so a long key costs no more than a short one.
const CLAIM_KEYED: &str = "SELECT priority, seq, id FROM jobs AS j INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 AND (ordering_key IS NULL OR \
       (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS p INDEXED BY jobs_key WHERE p.kind = ?1 \
          AND p.ordering_key = j.ordering_key AND p.state IN (1, 2) LIMIT ?3)) \
     + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS p INDEXED BY jobs_key WHERE p.kind = ?1 \
          AND p.ordering_key = j.ordering_key AND p.state = 0 AND p.seq < j.seq LIMIT ?3)) < ?3) \
     ORDER BY priority DESC, seq LIMIT ?2";

/// Schema versions, applied in order; `PRAGMA user_version` says how many
/// have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               BLOB NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    state            INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    idempotency_key  TEXT UNIQUE,
    request_hash     BLOB NOT NULL,
    labels           BLOB NOT NULL,
    payload          BLOB NOT NULL,
    result           BLOB NOT NULL,
    timeout_us       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    next_attempt_at  INTEGER,
    lease_expires_at INTEGER,
    last_error       TEXT NOT NULL,
    sequence         INTEGER NOT NULL
);
-- Claim order: claimable QUEUED jobs (no pending run_at) by priority, then age.
CREATE INDEX jobs_ready ON jobs (priority DESC, seq) WHERE state = 0 AND next_attempt_at IS NULL;
CREATE INDEX jobs_delayed ON jobs (next_attempt_at) WHERE state = 0 AND next_attempt_at IS NOT NULL;
CREATE INDEX jobs_retry ON jobs (next_attempt_at) WHERE state = 2;
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 1;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state >= 3;
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_kind_id ON jobs (kind, id);
"#,
    r#"
-- v2: claims read each kind's own queue, so kinds at their bound (or no
-- longer configured) can never crowd others out of a claim.
CREATE INDEX jobs_ready_kind ON jobs (kind, priority DESC, seq) WHERE state = 0 AND next_attempt_at IS NULL;
DROP INDEX jobs_ready;
"#,
    r#"
-- v3: ListJobs filtered by kind and state seeks instead of scanning every
-- job of that state.
CREATE INDEX jobs_kind_state_id ON jobs (kind, state, id);
"#,
    r#"
-- v4: one row that health probes rewrite, to learn whether a store that
-- refused writes (a full disk) takes them again.
CREATE TABLE jobd_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
"#,
    r#"
-- v5: kinds an operator paused (PauseKind); a row per paused kind.
CREATE TABLE kind_pauses (kind TEXT PRIMARY KEY, paused_at INTEGER NOT NULL);
"#,
    r#"
-- v6: cron schedules: the next fire no instance took yet, the operator's
-- pause, and the job of the last fire.
CREATE TABLE schedules (id TEXT PRIMARY KEY, next_fire_at INTEGER NOT NULL,
  paused INTEGER NOT NULL DEFAULT 0, last_job_id TEXT);
"#,
    r#"
-- v7: ordering keys. A claim checks a keyed job against the unfinished
-- jobs of its key (kind, key): jobs_key finds those few rows by key, in
-- submit order, without touching the rest of the queue. jobs_key_id serves
-- ListJobs filtered by key.
ALTER TABLE jobs ADD COLUMN ordering_key TEXT;
CREATE INDEX jobs_key ON jobs (kind, ordering_key, state, seq) WHERE ordering_key IS NOT NULL;
CREATE INDEX jobs_key_id ON jobs (ordering_key, id) WHERE ordering_key IS NOT NULL;
"#,
    r#"
-- v8: the submitter's W3C trace context, handed to every attempt.
ALTER TABLE jobs ADD COLUMN trace TEXT;
"#,
];

fn state_code(s: JobState) -> i64 {
    codec::state_code(s).into()
}

fn state_from(code: i64) -> rusqlite::Result<JobState> {
    codec::state_from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(2, code))
}

/// A stored value jobd would not have written; [`map_err`] makes it
/// [`StoreError::Corrupt`].
fn bad_value(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Blob,
        format!("bad {what}").into(),
    )
}

fn row_to_job(r: &Row<'_>) -> rusqlite::Result<Job> {
    let id: Vec<u8> = r.get(0)?;
    let hash: Vec<u8> = r.get(7)?;
    let labels: Vec<u8> = r.get(8)?;
    let payload: Vec<u8> = r.get(9)?;
    let result: Vec<u8> = r.get(10)?;
    Ok(Job {
        id: Uuid::from_slice(&id).map_err(|_| bad_value(0, "id"))?,
        kind: r.get(1)?,
        state: state_from(r.get(2)?)?,
        attempt: r.get(3)?,
        max_attempts: r.get(4)?,
        priority: r.get(5)?,
        idempotency_key: r.get(6)?,
        request_hash: hash.try_into().map_err(|_| bad_value(7, "request hash"))?,
        labels: decode_labels(&labels),
        payload: Bytes::from(payload),
        result: Bytes::from(result),
        timeout: Duration::from_micros(r.get::<_, i64>(11)?.max(0) as u64),
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        next_attempt_at: r.get(16)?,
        lease_expires_at: r.get(17)?,
        last_error: r.get(18)?,
        sequence: r.get::<_, i64>(19)? as u64,
        ready_at: None,
        ordering_key: r.get(20)?,
        trace: codec::decode_trace(r.get(21)?),
    })
}

/// SQLite's errors sorted into what the caller can do about them.
fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull
            | C::ReadOnly
            | C::CannotOpen
            | C::SystemIoFailure
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::PermissionDenied
            | C::OutOfMemory => StoreError::Unavailable(e.to_string()),
            C::NotADatabase | C::DatabaseCorrupt => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        },
        // A stored value that does not decode: SQLite columns take any
        // type, so a damaged or hand-edited file shows up here.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("sqlite writer has stopped".into())
}

/// What the writer keeps between transactions.
struct WriterState {
    /// QUEUED + RETRY_WAIT, kept here so the backlog check on every submit
    /// does not count rows. Recounted after a failed commit.
    waiting: i64,
    /// Rated kinds' token buckets (one process claims from this file, so
    /// they live here; a restart starts them full).
    buckets: HashMap<String, Bucket>,
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write request's body: run on the group's transaction, or handed the
/// error when the group could not start. Returns the reply and whether the
/// request failed (its changes are then undone and the writer's counter
/// restored).
type WorkFn = Box<
    dyn FnOnce(Result<(&Transaction<'_>, &mut WriterState), StoreError>) -> (Reply, bool) + Send,
>;

struct Work {
    run: WorkFn,
    /// The request changes at most one row, in its last statement. SQLite
    /// undoes a failed statement by itself, so such a request needs no
    /// savepoint; others get one, which copies every page they change into
    /// a sub-journal (13% of the writer during unary submits, perf).
    single_change: bool,
}

enum Request {
    Work(Work),
    Close(oneshot::Sender<()>),
}

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// [`MAX_READERS`] places; a read takes one for its whole run.
    read_slots: Arc<Semaphore>,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced on every commit, so an acknowledged submit
    // survives power loss, not just a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 16 MiB of page cache (default 2 MiB): claims and transitions touch
    // the same hot index pages over and over.
    conn.pragma_update(None, "cache_size", -16384)?;
    // Each request of a group runs in a savepoint, whose sub-journal keeps
    // the pages it changes until the group commits. In a temporary file
    // that was a pwrite per page (39% of the writer's time in a burn-down,
    // perf); in memory it is a copy. It only serves a rollback inside the
    // open transaction, so durability is unchanged (a crash drops the
    // uncommitted transaction either way).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (`sqlite_checkpoint`); the
    // writer's own is only the bound.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_BOUND)?;
    configure_statements(conn)
}

/// Statement settings of every connection, the writer's and the readers'.
fn configure_statements(conn: &Connection) -> rusqlite::Result<()> {
    // Plans never depend on bound values. Without this, SQLite checks a
    // bound `state = ?` (or `= ?` on a column a partial index tests) against
    // each partial index's predicate and marks the statement stale whenever
    // that value changes, so cached statements were parsed again on nearly
    // every use (8% of the writer during unary submits, perf). Every
    // partial index jobd uses is named with literals in the query itself.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Room for every statement the writer runs (rusqlite keeps 16 by
    // default, fewer than the writer's ~30, so busy paths re-parsed SQL).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this jobd knows ({known}); \
             run a newer jobd"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(map_err)?;
        tx.execute_batch(sql).map_err(map_err)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

fn count_waiting(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM jobs WHERE state IN (0, 2)", [], |r| {
        r.get(0)
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (conn, waiting, ckpt) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut conn = Connection::open(&p).map_err(map_err)?;
                configure(&conn).map_err(map_err)?;
                migrate(&mut conn)?;
                let waiting = count_waiting(&conn).map_err(map_err)?;
                let ckpt = Checkpointer::connect(&p).map_err(map_err)?;
                let ckpt = Checkpointer::start(ckpt).map_err(|e| {
                    StoreError::Internal(format!("cannot start checkpoint thread: {e}"))
                })?;
                Ok((conn, waiting, ckpt))
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
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
                    },
                )
            })
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(Semaphore::new(MAX_READERS)),
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
        let work = Work { run, single_change };
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
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn writer_loop(
    mut conn: Connection,
    ckpt: Checkpointer,
    mut rx: mpsc::Receiver<Request>,
    mut st: WriterState,
) {
    let mut batch: Vec<Work> = Vec::with_capacity(GROUP_MAX);
    let mut close: Option<oneshot::Sender<()>> = None;
    while close.is_none() {
        match rx.blocking_recv() {
            Some(Request::Work(w)) => batch.push(w),
            Some(Request::Close(c)) => close = Some(c),
            None => break,
        }
        while batch.len() < GROUP_MAX && close.is_none() {
            match rx.try_recv() {
                Ok(Request::Work(w)) => batch.push(w),
                Ok(Request::Close(c)) => close = Some(c),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_group(&mut conn, &mut batch, &mut st);
            ckpt.committed();
        }
    }
    rx.close();
    // Requests that raced the close get an error, not silence.
    while let Ok(r) = rx.try_recv() {
        if let Request::Work(w) = r {
            (w.run)(Err(gone())).0(Err(gone()));
        }
    }
    // The checkpoint thread stops first, so this one is not kept waiting.
    drop(ckpt);
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    drop(conn);
    if let Some(c) = close {
        let _ = c.send(());
    }
}

fn run_group(conn: &mut Connection, batch: &mut Vec<Work>, st: &mut WriterState) {
    let before = st.waiting;
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = map_err(e);
            tracing::warn!(error = %e, "cannot begin store transaction");
            for w in batch.drain(..) {
                let err = || StoreError::Unavailable(e.to_string());
                (w.run)(Err(err())).0(Err(err()));
            }
            return;
        }
    };
    let mut replies = Vec::with_capacity(batch.len());
    // Set when SQLite rolled the whole transaction back by itself (it does
    // on some I/O errors): nothing of this group can be committed then.
    let mut lost: Option<StoreError> = None;
    for w in batch.drain(..) {
        if let Some(e) = &lost {
            let err = StoreError::Unavailable(e.to_string());
            replies.push((w.run)(Err(err)).0);
            continue;
        }
        let savepoint = !w.single_change;
        if savepoint {
            if let Err(e) = exec_cached(&tx, "SAVEPOINT w") {
                replies.push((w.run)(Err(map_err(e))).0);
                continue;
            }
        }
        let waiting = st.waiting;
        let (reply, failed) = (w.run)(Ok((&tx, &mut *st)));
        replies.push(reply);
        if failed {
            // Undo only this request, so the rest of the group still commits
            // (a single change was undone by SQLite with its statement).
            st.waiting = waiting;
            if savepoint {
                let _ = exec_cached(&tx, "ROLLBACK TO w");
            }
        }
        if tx.is_autocommit() {
            lost = Some(StoreError::Unavailable(
                "the store rolled the transaction back".into(),
            ));
        } else if savepoint {
            let _ = exec_cached(&tx, "RELEASE w");
        }
    }
    let commit = match lost {
        Some(e) => {
            drop(tx);
            Err(e)
        }
        None => tx.commit().map_err(map_err),
    };
    if let Err(e) = &commit {
        tracing::warn!(error = %e, "store commit failed; nothing in this group was stored");
        st.waiting = count_waiting(conn).unwrap_or(before);
    }
    for r in replies {
        r(commit
            .as_ref()
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string())));
    }
}

/// Runs a parameterless statement through the statement cache: the
/// savepoints around each request would otherwise be parsed every time.
fn exec_cached(tx: &Transaction<'_>, sql: &str) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql).and_then(|mut s| s.execute([]))
}

fn load(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Job>, StoreError> {
    tx.prepare_cached(&format!("SELECT {COLS} FROM jobs WHERE id = ?1"))
        .and_then(|mut s| {
            s.query_row([id.as_bytes().as_slice()], row_to_job)
                .optional()
        })
        .map_err(map_err)
}

/// Writes back a job changed by a transition, fenced on the state and
/// attempt it was read with.
fn save(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    job: &Job,
    old_state: JobState,
    old_attempt: u32,
) -> Result<(), StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?2, attempt = ?3, result = ?4, updated_at = ?5, \
             started_at = ?6, finished_at = ?7, next_attempt_at = ?8, lease_expires_at = ?9, \
             last_error = ?10, sequence = ?11 \
             WHERE id = ?1 AND state = ?12 AND attempt = ?13",
        )
        .and_then(|mut s| {
            s.execute(params![
                job.id.as_bytes().as_slice(),
                state_code(job.state),
                job.attempt,
                job.result.as_ref(),
                job.updated_at,
                job.started_at,
                job.finished_at,
                job.next_attempt_at,
                job.lease_expires_at,
                job.last_error,
                job.sequence as i64,
                state_code(old_state),
                old_attempt,
            ])
        })
        .map_err(map_err)?;
    if n != 1 {
        return Err(StoreError::Internal(format!(
            "job {} changed under the writer",
            job.id
        )));
    }
    st.waiting += i64::from(job.state.is_waiting()) - i64::from(old_state.is_waiting());
    Ok(())
}

/// Loads, transitions and saves each job in `ids`.
fn transition_all(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    ids: Vec<Uuid>,
    mut f: impl FnMut(&mut Job) -> bool,
) -> Result<Vec<Job>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(mut job) = load(tx, id)? {
            let (s, a) = (job.state, job.attempt);
            if f(&mut job) {
                save(tx, st, &job, s, a)?;
                out.push(job);
            }
        }
    }
    Ok(out)
}

/// Applies one outcome of [`Store::finish_many`], fenced by its attempt.
fn finish_one(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    f: &Finish,
) -> Result<Option<Job>, StoreError> {
    transition_all(tx, st, vec![f.id], |j| {
        transition::finish(j, f.attempt, f.outcome.clone(), f.now)
    })
    .map(|mut jobs| jobs.pop())
}

fn ids(tx: &Transaction<'_>, sql: &str, p: impl rusqlite::Params) -> Result<Vec<Uuid>, StoreError> {
    let mut s = tx.prepare_cached(sql).map_err(map_err)?;
    let rows = s
        .query_map(p, |r| r.get::<_, Vec<u8>>(0))
        .map_err(map_err)?;
    let mut out = Vec::new();
    for r in rows {
        let b = r.map_err(map_err)?;
        out.push(Uuid::from_slice(&b).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(out)
}

fn insert_one(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    new: NewJob,
    max_backlog: u64,
) -> Result<InsertOutcome, StoreError> {
    if let Some(key) = &new.idempotency_key {
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLS} FROM jobs WHERE idempotency_key = ?1"
            ))
            .and_then(|mut s| s.query_row([key], row_to_job).optional())
            .map_err(map_err)?;
        if let Some(job) = existing {
            return Ok(if job.request_hash == new.request_hash {
                InsertOutcome::Deduplicated(job)
            } else {
                InsertOutcome::Conflict {
                    existing_id: job.id,
                }
            });
        }
    }
    if st.waiting >= max_backlog.min(i64::MAX as u64) as i64 {
        return Ok(InsertOutcome::BacklogFull);
    }
    let job = new.into_stored(now_micros(), |kind| {
        // An error here reads as "ready": the job is then simply QUEUED.
        tx.prepare_cached(KIND_HAS_READY)
            .and_then(|mut s| s.exists([kind]))
            .unwrap_or(true)
    });
    tx.prepare_cached(&format!(
        "INSERT INTO jobs ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            job.id.as_bytes().as_slice(),
            job.kind,
            state_code(job.state),
            job.attempt,
            job.max_attempts,
            job.priority,
            job.idempotency_key,
            job.request_hash.as_slice(),
            encode_labels(&job.labels),
            job.payload.as_ref(),
            job.result.as_ref(),
            job.timeout.as_micros() as i64,
            job.created_at,
            job.updated_at,
            job.started_at,
            job.finished_at,
            job.next_attempt_at,
            job.lease_expires_at,
            job.last_error,
            job.sequence as i64,
            job.ordering_key,
            codec::encode_trace(&job.trace),
        ])
    })
    .map_err(map_err)?;
    st.waiting += i64::from(job.state.is_waiting());
    Ok(InsertOutcome::Created(job))
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        // One job: at most its INSERT changes anything, as the last step.
        self.write_with(jobs.len() == 1, move |tx, st| {
            jobs.into_iter()
                .map(|j| insert_one(tx, st, j, max_backlog))
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
        self.write(move |tx, st| {
            // Stamped when the claim takes effect (after the writes queued
            // before it, such as the end of a key's previous job).
            let now = now_micros().max(req.now);
            // Each kind's own queue, up to its free slots (and tokens); then
            // the best `limit` of those by priority and age.
            let mut candidates = Vec::new();
            let mut budgets = Vec::new();
            for (kind, cap) in req.kinds.iter().filter(|(_, n)| **n > 0) {
                let limits = req.limits.get(kind).copied().unwrap_or_default();
                let b = KindBudget::new(
                    (*cap).min(req.limit),
                    limits,
                    st.buckets.get(kind).copied(),
                    now,
                );
                let row = |r: &Row<'_>| {
                    Ok((
                        r.get::<_, i32>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                };
                let read = b.to_read() as i64;
                let mut s;
                let rows = match limits.key_concurrency {
                    Some(max) => {
                        s = tx.prepare_cached(CLAIM_KEYED).map_err(map_err)?;
                        s.query_map(params![kind, read, max], row)
                    }
                    None => {
                        s = tx.prepare_cached(CLAIM_KIND).map_err(map_err)?;
                        s.query_map(params![kind, read], row)
                    }
                }
                .map_err(map_err)?;
                let mut found = 0;
                for r in rows {
                    let (prio, seq, id) = r.map_err(map_err)?;
                    found += 1;
                    if found <= b.allowed() {
                        candidates.push((prio, seq, kind.clone(), id));
                    }
                }
                budgets.push((kind.clone(), b, found));
            }
            let picked = limits::pick(candidates, req.limit)
                .into_iter()
                .map(|(_, id)| {
                    Uuid::from_slice(&id).map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let jobs = transition_all(tx, st, picked, |j| {
                transition::claim(j, now, req.lease_slack);
                true
            })?;
            let taken = limits::taken_per_kind(jobs.iter().map(|j| j.kind.as_str()));
            let mut rate_limited = Vec::new();
            for (kind, b, found) in budgets {
                let got = taken.get(&kind).copied().unwrap_or(0);
                let (bucket, wake) = b.settle(found, got, now);
                if let Some(at) = wake {
                    rate_limited.push((kind.clone(), at));
                }
                if let Some(bucket) = bucket {
                    st.buckets.insert(kind, bucket);
                }
            }
            Ok(ClaimOutcome { jobs, rate_limited })
        })
        .await
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
        // One write request for the whole group (one reply, one wake-up).
        // One failing outcome must not undo the others, but a savepoint per
        // outcome copies every page each outcome touches into a sub-journal
        // again (a fifth of the writer's time in a burn-down, perf). So all
        // outcomes go in one savepoint, and only if one fails is the group
        // redone with a savepoint per outcome.
        self.write(move |tx, st| {
            let sp = |sql: &str| exec_cached(tx, sql).map_err(map_err);
            let waiting = st.waiting;
            sp("SAVEPOINT fm")?;
            let fast: Result<Vec<_>, _> = items.iter().map(|f| finish_one(tx, st, f)).collect();
            if let Ok(jobs) = fast {
                sp("RELEASE fm")?;
                return Ok(jobs.into_iter().map(Ok).collect());
            }
            st.waiting = waiting;
            sp("ROLLBACK TO fm")?;
            sp("RELEASE fm")?;
            let mut out = Vec::with_capacity(items.len());
            for f in &items {
                sp("SAVEPOINT f")?;
                let waiting = st.waiting;
                let r = finish_one(tx, st, f);
                if r.is_err() {
                    st.waiting = waiting;
                    sp("ROLLBACK TO f")?;
                }
                sp("RELEASE f")?;
                out.push(r);
            }
            Ok(out)
        })
        .await
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
                "SELECT state, kind, COUNT(*) FROM jobs WHERE state IN (0, 1, 2) GROUP BY state, kind",
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
                        transition::RetryDecision::Retry { job, prev, attempt } => {
                            save(tx, st, &job, prev, attempt)?;
                            RetryOutcome::Retried { job, prev }
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
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO schedules (id, next_fire_at) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id, next_fire_at]))
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id, next_fire_at, paused, last_job_id FROM schedules ORDER BY id",
            )?;
            let rows = s.query_map([], |r| {
                let last: Option<String> = r.get(3)?;
                Ok(ScheduleRow {
                    id: r.get(0)?,
                    next_fire_at: r.get(1)?,
                    paused: r.get::<_, i64>(2)? != 0,
                    last_job_id: last.and_then(|s| Uuid::try_parse(&s).ok()),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn advance_schedule(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.prepare_cached(
                "UPDATE schedules SET next_fire_at = ?3 WHERE id = ?1 AND next_fire_at = ?2",
            )
            .and_then(|mut s| s.execute(params![id, old, new]))
            .map(|n| n == 1)
            .map_err(map_err)
        })
        .await
    }

    async fn set_schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.prepare_cached("UPDATE schedules SET last_job_id = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, job.to_string()]))
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn set_schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.prepare_cached("UPDATE schedules SET paused = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, paused as i64]))
                .map(|n| n == 1)
                .map_err(map_err)
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter ListJobs offers is answered by an index seek, never a
    /// scan of the table (a filter that matches nothing took 120 ms on
    /// 805k rows).
    #[test]
    fn list_filters_use_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&c).unwrap();
        migrate(&mut c).unwrap();
        let q = |state: bool, kind: bool, key: bool, newest_first: bool| ListQuery {
            state: state.then_some(JobState::Queued),
            kind: kind.then(|| "k".to_string()),
            ordering_key: key.then(|| "o".to_string()),
            newest_first,
            ..Default::default()
        };
        for (query, index) in [
            (
                q(false, false, false, false),
                "sqlite_autoindex_jobs_1 (id>?)",
            ),
            (
                q(false, false, false, true),
                "sqlite_autoindex_jobs_1 (id<?)",
            ),
            (
                q(true, false, false, false),
                "jobs_state_id (state=? AND id>?)",
            ),
            (
                q(true, false, false, true),
                "jobs_state_id (state=? AND id<?)",
            ),
            (
                q(false, true, false, false),
                "jobs_kind_id (kind=? AND id>?)",
            ),
            (
                q(true, true, false, false),
                "jobs_kind_state_id (kind=? AND state=? AND id>?)",
            ),
            (
                q(false, false, true, true),
                "jobs_key_id (ordering_key=? AND id<?)",
            ),
        ] {
            let sql = codec::list_sql(&query, |n| format!("?{n}"));
            let n = 2
                + query.state.is_some() as usize
                + query.kind.is_some() as usize
                + query.ordering_key.is_some() as usize;
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(
                    rusqlite::params_from_iter(vec![rusqlite::types::Value::Null; n]),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.starts_with("SEARCH"), "{sql}: {plan}");
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    /// Commits reach the database file through the checkpoint thread soon
    /// after they are made, not only once the WAL holds the writer's bound
    /// of 10,000 pages: a copy of the database file alone holds them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        for _ in 0..10 {
            let job = NewJob {
                id: Uuid::now_v7(),
                ..NewJob::example()
            };
            store.insert(vec![job], u64::MAX).await.unwrap();
        }
        let copy = dir.path().join("copy.db");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            std::fs::copy(&path, &copy).unwrap();
            let n: i64 = Connection::open(&copy)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
                .unwrap_or(0); // not even the schema copied yet
            let _ = std::fs::remove_file(dir.path().join("copy.db-wal"));
            if n == 10 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} of 10 jobs checkpointed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.close().await.unwrap();
    }

    /// A one-job insert runs without a savepoint: when its INSERT fails
    /// (here a duplicate id), SQLite undoes that statement, and the other
    /// requests of its group still commit, counted right.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_insert_does_not_sink_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("t.db")).await.unwrap());
        let taken = NewJob {
            id: Uuid::now_v7(),
            ..NewJob::example()
        };
        store.insert(vec![taken.clone()], u64::MAX).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let store = store.clone();
            let job = NewJob {
                id: if i % 2 == 0 { taken.id } else { Uuid::now_v7() },
                ..NewJob::example()
            };
            tasks.spawn(async move { (i, store.insert(vec![job], u64::MAX).await) });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, r) = r.unwrap();
            assert_eq!(r.is_err(), i % 2 == 0, "{i}: {r:?}");
        }
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.get(&JobState::Queued), Some(&33));
        // The backlog counter agrees: under a bound of 34, room for one.
        for expect_room in [true, false] {
            let job = NewJob {
                id: Uuid::now_v7(),
                ..NewJob::example()
            };
            let out = store.insert(vec![job], 34).await.unwrap();
            assert_eq!(matches!(out[0], InsertOutcome::Created(_)), expect_room);
        }
    }

    /// One outcome that cannot be applied (its row went bad) fails alone:
    /// the group's other outcomes are still committed.
    #[tokio::test]
    async fn a_failing_outcome_does_not_undo_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let j = NewJob {
                id: Uuid::now_v7(),
                ..NewJob::example()
            };
            ids.push(j.id);
            store.insert(vec![j], u64::MAX).await.unwrap();
        }
        let claimed = store
            .claim(&ClaimRequest {
                now: now_micros(),
                limit: 10,
                kinds: HashMap::from([("k".to_string(), 10)]),
                lease_slack: Duration::from_secs(30),
                limits: HashMap::new(),
            })
            .await
            .unwrap();
        assert_eq!(claimed.jobs.len(), 3);
        let raw = Connection::open(&path).unwrap();
        raw.busy_timeout(BUSY_TIMEOUT).unwrap();
        raw.execute(
            "UPDATE jobs SET kind = x'ff' WHERE id = ?1",
            [ids[1].as_bytes().as_slice()],
        )
        .unwrap();
        let done = |id: Uuid| Finish {
            id,
            attempt: 1,
            outcome: Outcome::Succeeded {
                result: Default::default(),
            },
            now: now_micros(),
        };
        let r = store
            .finish_many(ids.iter().map(|&id| done(id)).collect())
            .await
            .unwrap();
        assert!(matches!(r[1], Err(StoreError::Corrupt(_))), "{:?}", r[1]);
        for i in [0, 2] {
            let j = r[i].as_ref().unwrap().as_ref().unwrap();
            assert_eq!(j.state, JobState::Succeeded);
            let stored = store.get(ids[i]).await.unwrap().unwrap();
            assert_eq!(stored.state, JobState::Succeeded, "committed");
        }
    }

    /// A stored value jobd would not have written reads as Corrupt: not
    /// Internal, not a panic, not a made-up value.
    #[tokio::test]
    async fn bad_rows_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.busy_timeout(BUSY_TIMEOUT).unwrap();
        let good = [
            ("id", "x'0123456789abcdef0123456789abcdef'"),
            ("state", "0"),
            ("attempt", "0"),
            ("request_hash", "zeroblob(32)"),
            ("kind", "'k'"),
        ];
        let bad = [
            ("id", "x'01'"),
            ("state", "9"),
            ("attempt", "-1"),
            ("request_hash", "x'00'"),
            ("kind", "x'ff'"),
        ];
        for (column, value) in bad {
            let v = |c: &str| {
                if c == column {
                    value
                } else {
                    good.iter().find(|(g, _)| *g == c).unwrap().1
                }
            };
            raw.execute_batch(&format!(
                "DELETE FROM jobs; INSERT INTO jobs ({COLS}) VALUES ({}, {}, {}, {}, 1, 0, NULL, \
                 {}, x'', x'', x'', 0, 0, 0, NULL, NULL, NULL, NULL, '', 0, NULL, NULL)",
                v("id"),
                v("kind"),
                v("state"),
                v("attempt"),
                v("request_hash"),
            ))
            .unwrap();
            let e = store
                .list(&ListQuery {
                    limit: 10,
                    ..Default::default()
                })
                .await;
            assert!(matches!(e, Err(StoreError::Corrupt(_))), "{column}: {e:?}");
        }
        raw.execute_batch("UPDATE jobs SET state = 9").unwrap();
        let e = store.counts().await;
        assert!(matches!(e, Err(StoreError::Corrupt(_))), "{e:?}");
        store.close().await.unwrap();
    }
}
