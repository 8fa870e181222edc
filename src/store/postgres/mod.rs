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

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::codec::state_code;
use super::deps::Moved;
use super::{
    transition, CancelOutcome, Change, ClaimOutcome, ClaimRequest, Detail, InsertOutcome,
    ListQuery, Outcome, RetryOutcome, ScheduleRow, StateCounts, Store, StoreError,
};
use crate::client_tls::error_chain;
use crate::config::{PostgresConfig, PostgresUrl};
use crate::job::{add_micros, now_micros, Job, JobState, Micros, NewJob};

mod batcher;
mod claim;
mod connect;
mod dedup;
mod deps;
mod fair;
mod insert;
mod listen;
mod progress;
mod rows;
mod schedules;
mod schema;
mod sql;

use batcher::Batcher;
pub use connect::connect;
use connect::Connector;

/// Events are kept this long: a notice is re-read within milliseconds; a
/// watcher that reconnects later gets the current snapshot instead.
const EVENT_RETENTION: Duration = Duration::from_secs(600);
/// Notices waiting for the engine at most; past it they are dropped and a
/// `Resync` follows.
const FEED_BUFFER: usize = 4096;
/// How long a health ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub struct PostgresStore {
    pool: Pool,
    /// For the LISTEN and ping connections.
    pg: Connector,
    /// Shared with the result batcher.
    w: Arc<Writer>,
    lease_ttl: Duration,
    timeout: Duration,
    last_renew: AtomicI64,
    last_count: AtomicI64,
    /// When this instance last dropped refilled key buckets (`key_rate`).
    key_rates_pruned: AtomicI64,
    closed: AtomicBool,
    stop: CancellationToken,
    /// Results go to the batcher.
    finisher: Batcher,
    /// Health pings' own connection.
    ping_client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("instance", &self.w.instance)
            .field("lease_ttl", &self.lease_ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
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
    /// Children moved by their parents' ends in committed transactions,
    /// until the engine takes them ([`Store::take_moved`]).
    moved: std::sync::Mutex<Vec<Moved>>,
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// A connection from the pool; none free in time is UNAVAILABLE.
async fn pooled(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| {
        StoreError::Unavailable(Detail::new(format!("postgres: {}", error_chain(&e))).because(e))
    })
}

impl PostgresStore {
    /// Connects, migrates (under an advisory lock) and counts the backlog.
    pub async fn open(
        url: &PostgresUrl,
        cfg: &PostgresConfig,
    ) -> Result<PostgresStore, StoreError> {
        let mut pg = Connector::new(url)?;
        let schema = cfg.schema.clone();
        // Every connection resolves jobd's tables in its schema.
        let c = &mut pg.config;
        let options = format!(
            "{} -c search_path={schema}",
            c.get_options().unwrap_or_default()
        );
        c.options(options.trim());
        c.connect_timeout(cfg.timeout);
        c.keepalives_idle(Duration::from_secs(10));
        // The URL's `application_name` wins: operators tell instances apart.
        if c.get_application_name().is_none() {
            c.application_name("jobd");
        }
        let mgr = Manager::from_config(
            pg.config.clone(),
            pg.tls.clone(),
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
            .map_err(|e| {
                StoreError::Internal(Detail::new(format!("postgres pool: {e}")).because(e))
            })?;
        let instance = cfg.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            format!("{host}-{}", Uuid::now_v7().simple())
        });
        let w = Arc::new(Writer {
            instance,
            channel: format!("jobd_{schema}"),
            waiting: AtomicI64::new(0),
            moved: std::sync::Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let finisher = Batcher::start(pool.clone(), w.clone(), cfg.timeout, stop.clone());
        let store = PostgresStore {
            pool,
            pg,
            w,
            lease_ttl: cfg.lease_ttl,
            timeout: cfg.timeout,
            last_renew: AtomicI64::new(0),
            last_count: AtomicI64::new(0),
            key_rates_pruned: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            stop,
            finisher,
            ping_client: tokio::sync::Mutex::new(None),
        };
        store
            .run(async {
                let mut c = pooled(&store.pool).await?;
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
            Err(_) => Err(StoreError::Unavailable(
                format!("postgres did not answer within {:?}", self.timeout).into(),
            )),
        }
    }

    /// Runs `f` with a pooled connection and `sql` prepared on it (cached
    /// per connection), all within the store's timeout: the one shape of
    /// every call that is not a transaction.
    async fn with_statement<T>(
        &self,
        sql: &str,
        f: impl AsyncFnOnce(&Object, &Statement) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(async {
            let c = pooled(&self.pool).await?;
            let st = c.prepare_cached(sql).await?;
            f(&c, &st).await
        })
        .await
    }

    async fn count_waiting(&self) -> Result<(), StoreError> {
        let n: i64 = self
            .with_statement(sql::COUNT_WAITING, async |c, st| {
                rows::col(&c.query_one(st, &[]).await?, 0)
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
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            let mut jobs = sql::select(&tx, sql, params).await?;
            let mut old = Vec::with_capacity(jobs.len());
            jobs.retain_mut(|j| {
                let before = (j.state, j.attempt);
                let changed = f(j);
                if changed {
                    old.push(before);
                }
                changed
            });
            sql::save(&self.w, &tx, &jobs, &old).await?;
            let ended = jobs
                .iter()
                .zip(&old)
                .filter(|(_, (s, _))| !s.is_terminal())
                .map(|(j, _)| j);
            let moved = deps::cascade(&self.w, &tx, ended).await?;
            tx.commit().await?;
            self.w.publish(moved);
            Ok(jobs)
        })
        .await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(
        &self,
        jobs: Vec<NewJob>,
        max_backlog: u64,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.insert_jobs(jobs, max_backlog).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.with_statement(&sql::GET, async |c, st| {
            c.query_opt(st, &[&id])
                .await?
                .as_ref()
                .map(rows::job)
                .transpose()
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let statement = sql::list(q);
        self.with_statement(&statement, async |c, st| {
            let after = crate::store::codec::list_start(q);
            let state = q.state.map(state_code);
            let limit = q.limit.min(i64::MAX as usize) as i64;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after];
            if let Some(s) = &state {
                params.push(s);
            }
            if let Some(k) = &q.kind {
                params.push(k);
            }
            if let Some(k) = &q.ordering_key {
                params.push(k);
            }
            params.push(&limit);
            rows::jobs(&c.query(st, &params).await?)
        })
        .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        if req
            .kinds
            .iter()
            .any(|(k, n)| *n > 0 && req.limits.contains_key(k))
        {
            return self.claim_limited(req).await;
        }
        self.claim_plain(req).await
    }

    async fn finish(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: Outcome,
        now: Micros,
    ) -> Result<Option<Job>, StoreError> {
        self.run(
            self.finisher
                .finish(id, attempt, outcome, now, String::new()),
        )
        .await
    }

    async fn finish_many(
        &self,
        items: Vec<crate::store::Finish>,
    ) -> Result<crate::store::FinishResults, StoreError> {
        // Each joins the batcher's next batch: one transaction for them all.
        let each = items.into_iter().map(|f| {
            self.run(
                self.finisher
                    .finish(f.id, f.attempt, f.outcome, f.now, f.worker),
            )
        });
        Ok(futures_util::future::join_all(each).await)
    }

    async fn cancel(&self, id: Uuid, now: Micros) -> Result<CancelOutcome, StoreError> {
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            let Some(mut job) = sql::select(&tx, &sql::LOCK_ONE, &[&id]).await?.pop() else {
                return Ok(CancelOutcome::NotFound);
            };
            let mut moved = Vec::new();
            let out = match job.state {
                JobState::Cancelled => CancelOutcome::AlreadyCancelled(job),
                JobState::Succeeded | JobState::Failed => CancelOutcome::AlreadyFinished(job),
                prev => {
                    let a = job.attempt;
                    transition::cancel(&mut job, now);
                    let one = std::slice::from_ref(&job);
                    sql::save(&self.w, &tx, one, &[(prev, a)]).await?;
                    moved = deps::cascade(&self.w, &tx, one).await?;
                    CancelOutcome::Cancelled { job, prev }
                }
            };
            tx.commit().await?;
            self.w.publish(moved);
            Ok(out)
        })
        .await
    }

    async fn release_delayed(&self, now: Micros, limit: usize) -> Result<usize, StoreError> {
        self.with_statement(sql::RELEASE_DELAYED, async |c, st| {
            Ok(c.execute(st, &[&now, &(limit as i64)]).await? as usize)
        })
        .await
    }

    async fn promote_due(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.transition_selected(&sql::PROMOTE_DUE, &[&now, &(limit as i64)], |j| {
            transition::promote(j, now);
            true
        })
        .await
    }

    async fn expire_leases(&self, now: Micros, limit: usize) -> Result<Vec<Job>, StoreError> {
        // Any instance's: a dead instance's leases are not renewed.
        self.transition_selected(&sql::EXPIRE_LEASES, &[&now, &(limit as i64)], |j| {
            transition::lease_lost(j, now, "lease expired");
            true
        })
        .await
    }

    async fn recover(&self, now: Micros) -> Result<Vec<Job>, StoreError> {
        // Only this instance's own jobs from a previous life (a stable
        // `instance_id`); other instances' jobs are theirs until their
        // leases run out.
        self.transition_selected(&sql::RECOVER, &[&self.w.instance], |j| {
            transition::lease_lost(j, now, "instance restarted");
            true
        })
        .await
    }

    async fn next_due_at(&self, after: Micros) -> Result<Option<Micros>, StoreError> {
        self.with_statement(sql::NEXT_DUE, async |c, st| {
            rows::col(&c.query_one(st, &[&after]).await?, 0)
        })
        .await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.with_statement(sql::COUNTS, async |c, st| {
            let mut out = StateCounts::new();
            for r in c.query(st, &[]).await? {
                out.insert(rows::state(&r, 0)?, rows::col::<i64>(&r, 1)? as u64);
            }
            Ok(out)
        })
        .await
    }

    async fn count_by_kind(&self) -> Result<Vec<(JobState, String, u64)>, StoreError> {
        self.with_statement(sql::COUNT_BY_KIND, async |c, st| {
            let mut out = Vec::new();
            for r in c.query(st, &[]).await? {
                out.push((
                    rows::state(&r, 0)?,
                    rows::col(&r, 1)?,
                    rows::col::<i64>(&r, 2)? as u64,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn keys_waiting(&self, kinds: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_statement(sql::KEYS_WAITING, async |c, st| {
            let mut out = Vec::new();
            for r in c.query(st, &[&kinds]).await? {
                out.push((rows::col(&r, 0)?, rows::col::<i64>(&r, 1)? as u64));
            }
            Ok(out)
        })
        .await
    }

    async fn count_failed_by_kind(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_statement(sql::COUNT_FAILED_BY_KIND, async |c, st| {
            let mut out = Vec::new();
            for r in c.query(st, &[]).await? {
                out.push((rows::col(&r, 0)?, rows::col::<i64>(&r, 1)? as u64));
            }
            Ok(out)
        })
        .await
    }

    async fn retry(
        &self,
        ids: &[Uuid],
        now: Micros,
        max_backlog: u64,
    ) -> Result<Vec<RetryOutcome>, StoreError> {
        self.retry_jobs(ids, now, max_backlog).await
    }

    async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
        now: Micros,
    ) -> Result<(), StoreError> {
        if paused {
            self.with_statement(sql::PAUSE_KIND, async |c, st| {
                c.execute(st, &[&kind, &now]).await?;
                Ok(())
            })
            .await
        } else {
            self.with_statement(sql::RESUME_KIND, async |c, st| {
                c.execute(st, &[&kind]).await?;
                Ok(())
            })
            .await
        }
    }

    async fn paused_kinds(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.with_statement(sql::PAUSED_KINDS, async |c, st| {
            let mut out = std::collections::BTreeSet::new();
            for r in c.query(st, &[]).await? {
                out.insert(rows::col(&r, 0)?);
            }
            Ok(out)
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
    ) -> Result<super::CreateSchedule, StoreError> {
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

    async fn expire_unstarted(&self, now: Micros, limit: usize) -> Result<Vec<Moved>, StoreError> {
        let mut prev = Vec::new();
        let jobs = self
            .transition_selected(&sql::EXPIRE_UNSTARTED, &[&now, &(limit as i64)], |j| {
                prev.push(j.state);
                transition::expire(j, now);
                true
            })
            .await?;
        Ok(prev
            .into_iter()
            .zip(jobs)
            .map(|(prev, job)| Moved { prev, job })
            .collect())
    }

    fn take_moved(&self) -> Vec<Moved> {
        self.w.take_moved()
    }

    async fn release_waiting(&self, now: Micros, limit: usize) -> Result<Vec<Moved>, StoreError> {
        self.recheck_waiting(now, limit).await
    }

    async fn children(&self, id: Uuid, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        self.with_statement(
            "SELECT child FROM job_deps WHERE parent = $1 LIMIT $2",
            async |c, st| {
                let rows = c.query(st, &[&id, &(limit as i64)]).await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            },
        )
        .await
    }

    async fn set_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        self.put_checkpoint(id, attempt, checkpoint).await
    }

    async fn extend_lease(&self, _: Uuid, _: u32, _: Micros) -> Result<bool, StoreError> {
        // Leases here are renewed every lease_ttl/3 for as long as the
        // attempt runs on this instance, whatever its deadline.
        Ok(true)
    }

    async fn logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError> {
        self.read_logs(id, after, limit).await
    }

    async fn prune(&self, before: Micros, limit: usize) -> Result<u64, StoreError> {
        let events_before = now_micros().saturating_sub(EVENT_RETENTION.as_micros() as i64);
        // Old events first, all of them, in bounded statements: they
        // outnumber jobs several times over.
        self.with_statement(sql::PRUNE_EVENTS, async |c, ev| {
            let batch = (limit as i64).max(1) * 10;
            while c.execute(ev, &[&events_before, &batch]).await? == batch as u64 {}
            let st = c.prepare_cached(sql::PRUNE_JOBS).await?;
            Ok(c.execute(&st, &[&before, &(limit as i64)]).await?)
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
        self.with_statement(&sql::EVENTS_SINCE, async |c, st| {
            let after = after.min(i64::MAX as u64) as i64;
            c.query(st, &[&id, &after])
                .await?
                .iter()
                .map(rows::event)
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
            .with_statement(sql::RENEW, async |c, st| {
                rows::ids(&c.query(st, &[&lease, &self.w.instance, &running]).await?)
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
                let (c, conn) = self.pg.connect().await?;
                tokio::spawn(conn);
                *client = Some(c);
            }
            match client.as_ref() {
                Some(c) => Ok(c.simple_query("SELECT 1").await.map(|_| ())?),
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
