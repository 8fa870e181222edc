//! The shared store: several jobd instances on one PostgreSQL database.
//!
//! - Claims take due rows with `FOR UPDATE SKIP LOCKED`, so instances never
//!   wait on each other's picks and never take the same job.
//! - A RUNNING job carries a lease (`lease_expires_at`) and its claimer's
//!   name (`owner`). Each instance renews the leases of the attempts it is
//!   running every third of `lease_ttl` ([`Store::heartbeat`]); when an
//!   instance dies (or cannot write a result) the lease runs out and any
//!   instance's sweeper takes the job back. The attempt number
//!   stays the fencing token: a late write from a presumed-dead worker
//!   matches no row.
//! - Every transition also appends to `job_events` and sends
//!   `NOTIFY <channel>, 'id:sequence'`. Each instance LISTENs on a connection
//!   of its own and re-reads the events it needs ([`Store::events_since`]),
//!   so WatchStatus on one instance sees, in order, what a worker on another
//!   did. `job_events` is UNLOGGED: it only bridges the gap between a notice
//!   and its re-read; after a database crash watchers get the row itself.
//! - Idempotency keys are a UNIQUE column: concurrent submits of one key to
//!   different instances meet in the index and make one job.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::codec::{decode_labels, encode_labels, state_code, state_from_code};
use super::{
    transition, CancelOutcome, Change, ClaimRequest, InsertOutcome, ListQuery, Outcome,
    StateCounts, Store, StoreError,
};
use crate::config::PostgresConfig;
use crate::job::{add_micros, now_micros, Job, JobState, Micros, NewJob};

mod listen;
mod schema;

const COLS: &str = "id, kind, state, attempt, max_attempts, priority, idempotency_key, \
    request_hash, labels, payload, result, timeout_us, created_at, updated_at, started_at, \
    finished_at, next_attempt_at, lease_expires_at, last_error, sequence";

/// Writes back the jobs a transition changed, fenced on the state and
/// attempt each was read with; records each change in `job_events` and
/// announces it. One round trip for any number of jobs.
const SAVE: &str = "WITH x AS (
  SELECT * FROM unnest($1::uuid[], $2::int2[], $3::int4[], $4::bytea[], $5::int8[], $6::int8[],
    $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::int2[], $13::int4[])
  AS x(id, state, attempt, result, updated_at, started_at, finished_at, next_attempt_at,
    lease_expires_at, last_error, sequence, old_state, old_attempt)
), u AS (
  UPDATE jobs j SET state = x.state, attempt = x.attempt, result = x.result,
    updated_at = x.updated_at, started_at = x.started_at, finished_at = x.finished_at,
    next_attempt_at = x.next_attempt_at, lease_expires_at = x.lease_expires_at,
    last_error = x.last_error, sequence = x.sequence,
    owner = CASE WHEN x.state = 1 THEN $14 ELSE NULL END
  FROM x WHERE j.id = x.id AND j.state = x.old_state AND j.attempt = x.old_attempt
  RETURNING j.id, j.sequence, j.state, j.attempt, j.updated_at, j.started_at, j.finished_at,
    j.next_attempt_at, j.lease_expires_at, j.last_error
), e AS (
  INSERT INTO job_events (job_id, sequence, state, attempt, updated_at, started_at,
    finished_at, next_attempt_at, lease_expires_at, last_error)
  SELECT * FROM u
)
SELECT count(pg_notify($15, u.id::text || ':' || u.sequence::text)) FROM u";

const INSERT: &str = "INSERT INTO jobs (id, kind, state, attempt, max_attempts, priority,
    idempotency_key, request_hash, labels, payload, result, timeout_us, created_at, updated_at,
    next_attempt_at, last_error, sequence)
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int4[], $5::int4[], $6::int4[],
    $7::text[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[], $12::int8[], $13::int8[],
    $14::int8[], $15::int8[], $16::text[], $17::int8[])
  ON CONFLICT DO NOTHING RETURNING id";

/// Events are kept this long: a notice is re-read within milliseconds; a
/// watcher that reconnects later gets the current snapshot instead.
const EVENT_RETENTION: Duration = Duration::from_secs(600);
/// Notices waiting for the engine at most; past it they are dropped and a
/// `Resync` follows.
const FEED_BUFFER: usize = 4096;
/// How long a health ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Results written in one transaction at most.
const FINISH_BATCH: usize = 512;
/// Results waiting for the batcher at most; workers wait (async) past it.
const FINISH_QUEUE: usize = 4096;

pub struct PostgresStore {
    pool: Pool,
    /// For the LISTEN connection.
    pg: tokio_postgres::Config,
    /// Shared with the result batcher.
    w: Arc<Writer>,
    lease_ttl: Duration,
    timeout: Duration,
    last_renew: AtomicI64,
    last_count: AtomicI64,
    closed: AtomicBool,
    stop: CancellationToken,
    /// Results go to the batcher ([`finish_loop`]).
    finisher: mpsc::Sender<FinishRequest>,
    /// Health pings' own connection.
    ping_client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// One attempt's result, waiting for the batcher.
struct FinishRequest {
    id: Uuid,
    attempt: u32,
    outcome: Outcome,
    now: Micros,
    reply: oneshot::Sender<Result<Option<Job>, StoreError>>,
}

/// What writes need besides the transaction: who we are, where notices
/// go, and the backlog estimate to keep.
struct Writer {
    instance: String,
    channel: String,
    /// QUEUED + RETRY_WAIT as of the last count plus this instance's changes
    /// since: the backlog bound. Recounted every second, so other
    /// instances' submits are seen within a second.
    waiting: AtomicI64,
}

/// PostgreSQL's errors sorted into what the caller can do about them:
/// everything about reaching the server is UNAVAILABLE (and retried).
fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        None => StoreError::Unavailable(format!("postgres: {e}")),
        Some(db) => {
            let code = db.code().code();
            let transient = [
                "08", "53", "57P", "57014", "40001", "40P01", "55P03", "25006",
            ]
            .iter()
            .any(|p| code.starts_with(p));
            if transient {
                StoreError::Unavailable(format!("postgres: {}: {}", code, db.message()))
            } else {
                StoreError::Internal(format!("postgres: {}: {}", code, db.message()))
            }
        }
    }
}

/// A column that does not decode as jobd wrote it.
fn bad_row(e: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(format!("postgres row: {e}"))
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("postgres row has a bad {what}"))
}

fn row_to_job(r: &Row) -> Result<Job, StoreError> {
    let state: i16 = r.try_get(2).map_err(bad_row)?;
    let hash: Vec<u8> = r.try_get(7).map_err(bad_row)?;
    let labels: &[u8] = r.try_get(8).map_err(bad_row)?;
    Ok(Job {
        id: r.try_get(0).map_err(bad_row)?,
        kind: r.try_get(1).map_err(bad_row)?,
        state: state_from_code(state.into()).ok_or_else(|| corrupt("state"))?,
        attempt: r.try_get::<_, i32>(3).map_err(bad_row)?.max(0) as u32,
        max_attempts: r.try_get::<_, i32>(4).map_err(bad_row)?.max(0) as u32,
        priority: r.try_get(5).map_err(bad_row)?,
        idempotency_key: r.try_get(6).map_err(bad_row)?,
        request_hash: hash.try_into().map_err(|_| corrupt("request hash"))?,
        labels: decode_labels(labels),
        payload: Bytes::from(r.try_get::<_, Vec<u8>>(9).map_err(bad_row)?),
        result: Bytes::from(r.try_get::<_, Vec<u8>>(10).map_err(bad_row)?),
        timeout: Duration::from_micros(r.try_get::<_, i64>(11).map_err(bad_row)?.max(0) as u64),
        created_at: r.try_get(12).map_err(bad_row)?,
        updated_at: r.try_get(13).map_err(bad_row)?,
        started_at: r.try_get(14).map_err(bad_row)?,
        finished_at: r.try_get(15).map_err(bad_row)?,
        next_attempt_at: r.try_get(16).map_err(bad_row)?,
        lease_expires_at: r.try_get(17).map_err(bad_row)?,
        last_error: r.try_get(18).map_err(bad_row)?,
        sequence: r.try_get::<_, i64>(19).map_err(bad_row)?.max(0) as u64,
        ready_at: None,
    })
}

/// Each kind's own queue up to its free slots (`$1` kinds, `$2` slots),
/// then the best `$3` of those by priority and age.
static CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM unnest($1::text[], $2::int8[]) AS k(kind, n) \
         CROSS JOIN LATERAL (SELECT {COLS}, seq FROM jobs \
           WHERE state = 0 AND next_attempt_at IS NULL AND kind = k.kind \
           ORDER BY priority DESC, seq LIMIT k.n FOR UPDATE SKIP LOCKED) j \
         ORDER BY j.priority DESC, j.seq LIMIT $3",
        prefixed("j")
    )
});

/// [`COLS`] with a table alias, for queries that join.
fn prefixed(alias: &str) -> String {
    COLS.split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows_to_jobs(rows: &[Row]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(row_to_job).collect()
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

impl PostgresStore {
    /// Connects, migrates (under an advisory lock) and counts the backlog.
    pub async fn open(url: &str, cfg: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("bad postgres URL: {e}")))?;
        let schema = cfg.schema.clone();
        // Every connection resolves jobd's tables in its schema.
        let options = format!(
            "{} -c search_path={schema}",
            pg.get_options().unwrap_or_default()
        );
        pg.options(options.trim());
        pg.connect_timeout(cfg.timeout);
        pg.keepalives_idle(Duration::from_secs(10));
        pg.application_name("jobd");
        let mgr = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.timeout))
            .create_timeout(Some(cfg.timeout))
            .recycle_timeout(Some(cfg.timeout))
            .build()
            .map_err(|e| StoreError::Internal(format!("postgres pool: {e}")))?;
        let instance = cfg.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            format!("{host}-{}", Uuid::now_v7().simple())
        });
        let w = Arc::new(Writer {
            instance,
            channel: format!("jobd_{schema}"),
            waiting: AtomicI64::new(0),
        });
        let stop = CancellationToken::new();
        let (finisher, finish_rx) = mpsc::channel(FINISH_QUEUE);
        tokio::spawn(finish_loop(
            pool.clone(),
            w.clone(),
            cfg.timeout,
            finish_rx,
            stop.clone(),
        ));
        let store = PostgresStore {
            pool,
            pg,
            w,
            lease_ttl: cfg.lease_ttl,
            timeout: cfg.timeout,
            last_renew: AtomicI64::new(0),
            last_count: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            stop,
            finisher,
            ping_client: tokio::sync::Mutex::new(None),
        };
        store
            .run(async {
                let mut c = store.client().await?;
                schema::migrate(&mut c, &schema).await
            })
            .await?;
        store.count_waiting().await?;
        tracing::info!(instance = %store.w.instance, schema, "postgres store open");
        Ok(store)
    }

    /// This instance's name in the `owner` column.
    pub fn instance_id(&self) -> &str {
        &self.w.instance
    }

    /// Bounds a store call by `timeout`: past it the call is UNAVAILABLE.
    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("postgres store is closed".into()));
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "postgres did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))
    }

    async fn count_waiting(&self) -> Result<(), StoreError> {
        let n: i64 = self
            .run(async {
                let c = self.client().await?;
                let st = c
                    .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state IN (0, 2)")
                    .await
                    .map_err(map_err)?;
                Ok(c.query_one(&st, &[]).await.map_err(map_err)?.get(0))
            })
            .await?;
        self.w.waiting.store(n, Ordering::Release);
        Ok(())
    }

    /// Locks the rows `sql` selects, applies `f` to each, saves those it
    /// changed, all in one transaction.
    async fn transition_selected(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        mut f: impl FnMut(&mut Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        self.run(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(map_err)?;
            let mut jobs = select(&tx, sql, params).await?;
            let mut old = Vec::with_capacity(jobs.len());
            jobs.retain_mut(|j| {
                let before = (j.state, j.attempt);
                let changed = f(j);
                if changed {
                    old.push(before);
                }
                changed
            });
            save(&self.w, &tx, &jobs, &old).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(jobs)
        })
        .await
    }

    /// Up to `limit` jobs in `state` whose `time_column` is due, earliest
    /// first, skipping rows another instance holds, each changed by `f`.
    async fn transition_due(
        &self,
        state: JobState,
        time_column: &str,
        now: Micros,
        limit: usize,
        mut f: impl FnMut(&mut Job),
    ) -> Result<Vec<Job>, StoreError> {
        self.transition_selected(
            &format!(
                "SELECT {COLS} FROM jobs WHERE state = {} AND {time_column} <= $1 \
                 ORDER BY {time_column} LIMIT $2 FOR UPDATE SKIP LOCKED",
                state_code(state)
            ),
            &[&now, &(limit as i64)],
            |j| {
                f(j);
                true
            },
        )
        .await
    }

    /// Jobs already stored under these idempotency keys.
    async fn by_keys(tx: &Tx<'_>, keys: &[&str]) -> Result<HashMap<String, Job>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let jobs = select(
            tx,
            &format!("SELECT {COLS} FROM jobs WHERE idempotency_key = ANY($1)"),
            &[&keys],
        )
        .await?;
        Ok(jobs
            .into_iter()
            .filter_map(|j| j.idempotency_key.clone().map(|k| (k, j)))
            .collect())
    }

    async fn insert_rows(tx: &Tx<'_>, jobs: &[&Job]) -> Result<HashSet<Uuid>, StoreError> {
        if jobs.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let states: Vec<i16> = jobs.iter().map(|j| state_code(j.state)).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| to_i32(j.attempt)).collect();
        let max: Vec<i32> = jobs.iter().map(|j| to_i32(j.max_attempts)).collect();
        let prio: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.idempotency_key.as_deref()).collect();
        let hashes: Vec<&[u8]> = jobs.iter().map(|j| j.request_hash.as_slice()).collect();
        let labels: Vec<Vec<u8>> = jobs.iter().map(|j| encode_labels(&j.labels)).collect();
        let payloads: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_ref()).collect();
        let results: Vec<&[u8]> = jobs.iter().map(|j| j.result.as_ref()).collect();
        let timeouts: Vec<i64> = jobs
            .iter()
            .map(|j| j.timeout.as_micros().min(i64::MAX as u128) as i64)
            .collect();
        let created: Vec<i64> = jobs.iter().map(|j| j.created_at).collect();
        let updated: Vec<i64> = jobs.iter().map(|j| j.updated_at).collect();
        let next: Vec<Option<i64>> = jobs.iter().map(|j| j.next_attempt_at).collect();
        let errors: Vec<&str> = jobs.iter().map(|j| j.last_error.as_str()).collect();
        let seqs: Vec<i64> = jobs.iter().map(|j| j.sequence as i64).collect();
        let st = tx.prepare_cached(INSERT).await.map_err(map_err)?;
        let rows = tx
            .query(
                &st,
                &[
                    &ids, &kinds, &states, &attempts, &max, &prio, &keys, &hashes, &labels,
                    &payloads, &results, &timeouts, &created, &updated, &next, &errors, &seqs,
                ],
            )
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| r.try_get::<_, Uuid>(0).map_err(map_err))
            .collect()
    }
}

async fn select(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Job>, StoreError> {
    let st = tx.prepare_cached(sql).await.map_err(map_err)?;
    rows_to_jobs(&tx.query(&st, params).await.map_err(map_err)?)
}

/// Writes back `jobs` (changed from `old`) in one statement.
async fn save(
    w: &Writer,
    tx: &Tx<'_>,
    jobs: &[Job],
    old: &[(JobState, u32)],
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let states: Vec<i16> = jobs.iter().map(|j| state_code(j.state)).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| to_i32(j.attempt)).collect();
    let results: Vec<&[u8]> = jobs.iter().map(|j| j.result.as_ref()).collect();
    let updated: Vec<i64> = jobs.iter().map(|j| j.updated_at).collect();
    let started: Vec<Option<i64>> = jobs.iter().map(|j| j.started_at).collect();
    let finished: Vec<Option<i64>> = jobs.iter().map(|j| j.finished_at).collect();
    let next: Vec<Option<i64>> = jobs.iter().map(|j| j.next_attempt_at).collect();
    let lease: Vec<Option<i64>> = jobs.iter().map(|j| j.lease_expires_at).collect();
    // PostgreSQL text cannot hold NUL (a command's stderr may).
    let errors: Vec<std::borrow::Cow<'_, str>> = jobs
        .iter()
        .map(|j| match j.last_error.contains('\0') {
            true => j.last_error.replace('\0', "\u{fffd}").into(),
            false => j.last_error.as_str().into(),
        })
        .collect();
    let seqs: Vec<i64> = jobs.iter().map(|j| j.sequence as i64).collect();
    let old_states: Vec<i16> = old.iter().map(|(s, _)| state_code(*s)).collect();
    let old_attempts: Vec<i32> = old.iter().map(|(_, a)| to_i32(*a)).collect();
    let st = tx.prepare_cached(SAVE).await.map_err(map_err)?;
    let n: i64 = tx
        .query_one(
            &st,
            &[
                &ids,
                &states,
                &attempts,
                &results,
                &updated,
                &started,
                &finished,
                &next,
                &lease,
                &errors,
                &seqs,
                &old_states,
                &old_attempts,
                &w.instance,
                &w.channel,
            ],
        )
        .await
        .map_err(map_err)?
        .get(0);
    if n as usize != jobs.len() {
        // Rows are locked FOR UPDATE before a transition, so this is a bug.
        return Err(StoreError::Internal(format!(
            "{} of {} jobs changed under the store",
            jobs.len() - n as usize,
            jobs.len()
        )));
    }
    let delta: i64 = jobs
        .iter()
        .zip(old)
        .map(|(j, (s, _))| i64::from(j.state.is_waiting()) - i64::from(s.is_waiting()))
        .sum();
    w.waiting.fetch_add(delta, Ordering::AcqRel);
    Ok(())
}

/// Writes attempts' results in batches: every result waiting when a
/// transaction starts goes into it, so one commit (and one round of
/// NOTIFY, which PostgreSQL serializes across commits) serves many workers.
async fn finish_loop(
    pool: Pool,
    w: Arc<Writer>,
    timeout: Duration,
    mut rx: mpsc::Receiver<FinishRequest>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, FINISH_BATCH) => n,
            _ = stop.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        let requests: Vec<(Uuid, u32, Outcome, Micros)> = batch
            .iter()
            .map(|r| (r.id, r.attempt, r.outcome.clone(), r.now))
            .collect();
        let result = match tokio::time::timeout(timeout, finish_batch(&pool, &w, requests)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "postgres did not answer within {timeout:?}"
            ))),
        };
        match result {
            Ok(jobs) => {
                for (r, j) in batch.drain(..).zip(jobs) {
                    let _ = r.reply.send(Ok(j));
                }
            }
            Err(e) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The same error again, for every request of a failed batch.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

/// One transaction for a batch of results; each answer is the job after
/// its result, or `None` where fencing refused it.
async fn finish_batch(
    pool: &Pool,
    w: &Writer,
    requests: Vec<(Uuid, u32, Outcome, Micros)>,
) -> Result<Vec<Option<Job>>, StoreError> {
    let mut c = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("postgres: {e}")))?;
    let tx = c.transaction().await.map_err(map_err)?;
    let mut ids: Vec<Uuid> = requests.iter().map(|r| r.0).collect();
    // Locks in id order: batches never wait on each other in a cycle.
    ids.sort_unstable();
    ids.dedup();
    let mut jobs: HashMap<Uuid, (Job, (JobState, u32))> = select(
        &tx,
        &format!("SELECT {COLS} FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
        &[&ids],
    )
    .await?
    .into_iter()
    .map(|j| {
        let old = (j.state, j.attempt);
        (j.id, (j, old))
    })
    .collect();
    let mut answers = Vec::with_capacity(requests.len());
    let mut changed = HashSet::new();
    for (id, attempt, outcome, now) in requests {
        let answer = jobs.get_mut(&id).and_then(|(j, _)| {
            transition::finish(j, attempt, outcome, now).then(|| {
                changed.insert(id);
                j.clone()
            })
        });
        answers.push(answer);
    }
    let (done, old): (Vec<Job>, Vec<(JobState, u32)>) = jobs
        .into_values()
        .filter(|(j, _)| changed.contains(&j.id))
        .unzip();
    save(w, &tx, &done, &old).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(answers)
}

fn dedup(existing: &Job, hash: &[u8; 32]) -> InsertOutcome {
    if existing.request_hash == *hash {
        InsertOutcome::Deduplicated(existing.clone())
    } else {
        InsertOutcome::Conflict {
            existing_id: existing.id,
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let out = self
            .run(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(map_err)?;
                let keys: Vec<&str> = jobs
                    .iter()
                    .filter_map(|j| j.idempotency_key.as_deref())
                    .collect();
                let existing = Self::by_keys(&tx, &keys).await?;
                let mut room = (max_backlog.min(i64::MAX as u64) as i64)
                    .saturating_sub(self.w.waiting.load(Ordering::Acquire));
                let mut out: Vec<Option<InsertOutcome>> = vec![None; jobs.len()];
                // Index into `fresh` of the job taking each key in this batch.
                let mut batch_keys: HashMap<String, usize> = HashMap::new();
                let mut fresh: Vec<(usize, Job)> = Vec::new();
                for (i, new) in jobs.iter().enumerate() {
                    if let Some(k) = &new.idempotency_key {
                        if let Some(e) = existing.get(k) {
                            out[i] = Some(dedup(e, &new.request_hash));
                            continue;
                        }
                        if let Some(&f) = batch_keys.get(k) {
                            out[i] = Some(dedup(&fresh[f].1, &new.request_hash));
                            continue;
                        }
                    }
                    if room <= 0 {
                        out[i] = Some(InsertOutcome::BacklogFull);
                        continue;
                    }
                    room -= 1;
                    if let Some(k) = &new.idempotency_key {
                        batch_keys.insert(k.clone(), fresh.len());
                    }
                    fresh.push((i, new.clone().into_job()));
                }
                // Rows go in key order, so two batches racing on the same
                // keys wait for each other instead of deadlocking.
                let mut rows: Vec<&Job> = fresh.iter().map(|(_, j)| j).collect();
                rows.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
                let inserted = Self::insert_rows(&tx, &rows).await?;
                // A job missing from `inserted` lost its key to a concurrent
                // submit that committed first: answer with that job.
                let lost: Vec<&str> = fresh
                    .iter()
                    .filter(|(_, j)| !inserted.contains(&j.id))
                    .filter_map(|(_, j)| j.idempotency_key.as_deref())
                    .collect();
                let winners = Self::by_keys(&tx, &lost).await?;
                let mut created = 0;
                for (i, job) in &fresh {
                    out[*i] = Some(if inserted.contains(&job.id) {
                        created += 1;
                        InsertOutcome::Created(job.clone())
                    } else {
                        let w = job
                            .idempotency_key
                            .as_ref()
                            .and_then(|k| winners.get(k))
                            .ok_or_else(|| {
                                StoreError::Internal(format!("job {} was not stored", job.id))
                            })?;
                        dedup(w, &job.request_hash)
                    });
                }
                tx.commit().await.map_err(map_err)?;
                self.w.waiting.fetch_add(created, Ordering::AcqRel);
                Ok(out)
            })
            .await?;
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Internal("submit without outcome".into())))
            .collect()
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!("SELECT {COLS} FROM jobs WHERE id = $1"))
                .await
                .map_err(map_err)?;
            c.query_opt(&st, &[&id])
                .await
                .map_err(map_err)?
                .as_ref()
                .map(row_to_job)
                .transpose()
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {COLS} FROM jobs WHERE id > $1 AND ($2::int2 IS NULL OR state = $2) \
                     AND ($3::text IS NULL OR kind = $3) ORDER BY id LIMIT $4"
                ))
                .await
                .map_err(map_err)?;
            let rows = c
                .query(
                    &st,
                    &[
                        &q.after.unwrap_or(Uuid::nil()),
                        &q.state.map(state_code),
                        &q.kind,
                        &(q.limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await
                .map_err(map_err)?;
            rows_to_jobs(&rows)
        })
        .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Job>, StoreError> {
        // Each kind's own queue, up to its free slots; then the best
        // `limit` of those by priority and age. Rows read but not taken stay
        // QUEUED (their locks end with the transaction).
        let (kinds, caps): (Vec<&str>, Vec<i64>) = req
            .kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.as_str(), (*n).min(req.limit) as i64))
            .unzip();
        if kinds.is_empty() || req.limit == 0 {
            return Ok(Vec::new());
        }
        let lease = add_micros(req.now, self.lease_ttl);
        self.transition_selected(&CLAIM_SQL, &[&kinds, &caps, &(req.limit as i64)], |j| {
            transition::claim(j, req.now, req.lease_slack);
            // The lease is renewed while this instance runs the attempt.
            j.lease_expires_at = Some(lease);
            true
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
        let (reply, rx) = oneshot::channel();
        let req = FinishRequest {
            id,
            attempt,
            outcome,
            now,
            reply,
        };
        let gone = || StoreError::Unavailable("postgres store is closed".into());
        self.run(async {
            self.finisher.send(req).await.map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        })
        .await
    }

    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError> {
        self.run(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(map_err)?;
            let Some(mut job) = select(
                &tx,
                &format!("SELECT {COLS} FROM jobs WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            .pop() else {
                return Ok(CancelOutcome::NotFound);
            };
            let out = match job.state {
                JobState::Cancelled => CancelOutcome::AlreadyCancelled(job),
                JobState::Succeeded | JobState::Failed => CancelOutcome::AlreadyFinished(job),
                prev => {
                    let a = job.attempt;
                    transition::cancel(&mut job, now);
                    save(&self.w, &tx, std::slice::from_ref(&job), &[(prev, a)]).await?;
                    CancelOutcome::Cancelled { job, prev }
                }
            };
            tx.commit().await.map_err(map_err)?;
            Ok(out)
        })
        .await
    }

    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "UPDATE jobs SET next_attempt_at = NULL, updated_at = $1 WHERE id IN \
                     (SELECT id FROM jobs WHERE state = 0 AND next_attempt_at <= $1 \
                      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .await
                .map_err(map_err)?;
            Ok(c.execute(&st, &[&now, &(limit as i64)])
                .await
                .map_err(map_err)? as usize)
        })
        .await
    }

    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.transition_due(JobState::RetryWait, "next_attempt_at", now, limit, |j| {
            transition::promote(j, now)
        })
        .await
    }

    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        // Any instance's: a dead instance's leases are not renewed.
        self.transition_due(JobState::Running, "lease_expires_at", now, limit, |j| {
            transition::lease_lost(j, now, "lease expired")
        })
        .await
    }

    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError> {
        // Only this instance's own jobs from a previous life (a stable
        // `instance_id`); other instances' jobs are theirs until their
        // leases run out.
        self.transition_selected(
            &format!("SELECT {COLS} FROM jobs WHERE state = 1 AND owner = $1 FOR UPDATE"),
            &[&self.w.instance],
            |j| {
                transition::lease_lost(j, now, "instance restarted");
                true
            },
        )
        .await
    }

    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "SELECT LEAST( \
                     (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 0 AND next_attempt_at > $1), \
                     (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 2 AND next_attempt_at > $1), \
                     (SELECT MIN(lease_expires_at) FROM jobs WHERE state = 1 AND lease_expires_at > $1))",
                )
                .await
                .map_err(map_err)?;
            Ok(c.query_one(&st, &[&after]).await.map_err(map_err)?.get(0))
        })
        .await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .await
                .map_err(map_err)?;
            let mut out = StateCounts::new();
            for r in c.query(&st, &[]).await.map_err(map_err)? {
                let s: i16 = r.get(0);
                let n: i64 = r.get(1);
                out.insert(
                    state_from_code(s.into()).ok_or_else(|| corrupt("state"))?,
                    n as u64,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "SELECT state, kind, COUNT(*) FROM jobs WHERE state IN (0, 1, 2) \
                     GROUP BY state, kind",
                )
                .await
                .map_err(map_err)?;
            let mut out = Vec::new();
            for r in c.query(&st, &[]).await.map_err(map_err)? {
                let s: i16 = r.get(0);
                let n: i64 = r.get(2);
                out.push((
                    state_from_code(s.into()).ok_or_else(|| corrupt("state"))?,
                    r.get(1),
                    n as u64,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError> {
        let events_before = now_micros().saturating_sub(EVENT_RETENTION.as_micros() as i64);
        self.run(async {
            let c = self.client().await?;
            // Old events first, all of them, in bounded statements: they
            // outnumber jobs several times over.
            let ev = c
                .prepare_cached(
                    "DELETE FROM job_events WHERE ctid IN (SELECT ctid FROM job_events \
                     WHERE updated_at < $1 LIMIT $2)",
                )
                .await
                .map_err(map_err)?;
            let batch = (limit as i64).max(1) * 10;
            while c
                .execute(&ev, &[&events_before, &batch])
                .await
                .map_err(map_err)?
                == batch as u64
            {}
            let st = c
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
                     WHERE state >= 3 AND finished_at < $1 ORDER BY finished_at LIMIT $2 \
                     FOR UPDATE SKIP LOCKED)",
                )
                .await
                .map_err(map_err)?;
            c.execute(&st, &[&before, &(limit as i64)])
                .await
                .map_err(map_err)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        self.pool.close();
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn changes(&self) -> Option<mpsc::Receiver<Change>> {
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        tokio::spawn(listen::listen_loop(
            self.pg.clone(),
            self.w.channel.clone(),
            tx,
            self.stop.clone(),
        ));
        Some(rx)
    }

    async fn events_since(&self, id: Uuid, after: u64) -> Result<Vec<Job>, StoreError> {
        self.run(async {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {cols}, e.state, e.attempt, e.updated_at, e.started_at, e.finished_at, \
                       e.next_attempt_at, e.lease_expires_at, e.last_error, e.sequence \
                     FROM job_events e JOIN jobs j ON j.id = e.job_id \
                     WHERE e.job_id = $1 AND e.sequence > $2 ORDER BY e.sequence",
                    cols = prefixed("j")
                ))
                .await
                .map_err(map_err)?;
            let rows = c
                .query(&st, &[&id, &(after.min(i64::MAX as u64) as i64)])
                .await
                .map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    // The row as it is now, with the fields a transition
                    // changes as they were at that event.
                    let mut j = row_to_job(r)?;
                    let s: i16 = r.try_get(20).map_err(bad_row)?;
                    j.state = state_from_code(s.into()).ok_or_else(|| corrupt("state"))?;
                    j.attempt = r.try_get::<_, i32>(21).map_err(bad_row)?.max(0) as u32;
                    j.updated_at = r.try_get(22).map_err(bad_row)?;
                    j.started_at = r.try_get(23).map_err(bad_row)?;
                    j.finished_at = r.try_get(24).map_err(bad_row)?;
                    j.next_attempt_at = r.try_get(25).map_err(bad_row)?;
                    j.lease_expires_at = r.try_get(26).map_err(bad_row)?;
                    j.last_error = r.try_get(27).map_err(bad_row)?;
                    j.sequence = r.try_get::<_, i64>(28).map_err(bad_row)?.max(0) as u64;
                    if j.state != JobState::Succeeded {
                        j.result = Bytes::new();
                    }
                    Ok(j)
                })
                .collect()
        })
        .await
    }

    async fn heartbeat(
        &self,
        now: Micros,
        running: &[Uuid],
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        // Other instances' submits reach the backlog bound within a second.
        if now.saturating_sub(self.last_count.load(Ordering::Acquire)) >= 1_000_000 {
            self.count_waiting().await?;
            self.last_count.store(now, Ordering::Release);
        }
        let every = (self.lease_ttl / 3).as_micros() as i64;
        if now.saturating_sub(self.last_renew.load(Ordering::Acquire)) < every {
            return Ok(None);
        }
        let lease = add_micros(now, self.lease_ttl);
        let renewed = self
            .run(async {
                let c = self.client().await?;
                // Rows are locked in id order, as result batches lock them.
                let st = c
                    .prepare_cached(
                        "UPDATE jobs SET lease_expires_at = $1 WHERE id IN ( \
                           SELECT id FROM jobs WHERE state = 1 AND owner = $2 AND id = ANY($3) \
                           ORDER BY id FOR UPDATE) \
                         RETURNING id",
                    )
                    .await
                    .map_err(map_err)?;
                let rows = c
                    .query(&st, &[&lease, &self.w.instance, &running])
                    .await
                    .map_err(map_err)?;
                rows.iter()
                    .map(|r| r.try_get::<_, Uuid>(0).map_err(bad_row))
                    .collect::<Result<Vec<Uuid>, StoreError>>()
            })
            .await?;
        self.last_renew.store(now, Ordering::Release);
        Ok(Some(renewed))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A connection of its own: a pool busy with work must not look
        // like a database that is gone.
        let mut client = self.ping_client.lock().await;
        let r = tokio::time::timeout(PING_TIMEOUT.min(self.timeout), async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let (c, conn) = self.pg.connect(NoTls).await.map_err(map_err)?;
                tokio::spawn(conn);
                *client = Some(c);
            }
            match client.as_ref() {
                Some(c) => c
                    .simple_query("SELECT 1")
                    .await
                    .map_err(map_err)
                    .map(|_| ()),
                None => Err(StoreError::Unavailable("postgres: no connection".into())),
            }
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("postgres ping timed out".into())));
        if r.is_err() {
            *client = None;
        }
        r
    }
}
