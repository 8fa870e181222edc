//! The store's SQL, and the code that binds the array statements'
//! parameters, so each `$n` sits next to the text that numbers it.
//! Statements are prepared once per pooled connection (`prepare_cached`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{rows, Tx, Writer};
use crate::job::{Job, JobState};
use crate::store::codec::{encode_labels, encode_trace, policy_code, state_code, COLS};
use crate::store::StoreError;

/// `SELECT` of [`COLS`] with a `WHERE ...` tail.
pub(super) fn select_cols(tail: &str) -> String {
    format!("SELECT {COLS} FROM jobs {tail}")
}

/// [`COLS`] with a table alias, for queries that join.
pub(super) fn prefixed(alias: &str) -> String {
    COLS.split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Up to `$2` jobs in `state` whose `column` is due (`<= $1`), earliest
/// first, skipping rows another instance holds.
fn due(state: JobState, column: &str) -> String {
    select_cols(&format!(
        "WHERE state = {} AND {column} <= $1 ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED",
        state_code(state)
    ))
}

pub(super) const COUNT_WAITING: &str = "SELECT COUNT(*) FROM jobs WHERE state IN (0, 2, 6)";

pub(super) static GET: LazyLock<String> = LazyLock::new(|| select_cols("WHERE id = $1"));

/// One page of ListJobs, one statement per combination of filters (see
/// [`crate::store::codec::list_sql`]).
pub(super) fn list(q: &crate::store::ListQuery) -> String {
    crate::store::codec::list_sql(q, |n| format!("${n}"))
}

/// One job, locked for a transition.
pub(super) static LOCK_ONE: LazyLock<String> =
    LazyLock::new(|| select_cols("WHERE id = $1 FOR UPDATE"));

/// Several jobs locked in id order, so result batches never wait on each
/// other in a cycle.
pub(super) static LOCK_IDS: LazyLock<String> =
    LazyLock::new(|| select_cols("WHERE id = ANY($1) ORDER BY id FOR UPDATE"));

/// This instance's RUNNING jobs (`$1` is its name).
pub(super) static RECOVER: LazyLock<String> =
    LazyLock::new(|| select_cols("WHERE state = 1 AND owner = $1 FOR UPDATE"));

/// Jobs not started whose start deadline passed (`$1` now, `$2` rows).
pub(super) static EXPIRE_UNSTARTED: LazyLock<String> = LazyLock::new(|| {
    select_cols(
        "WHERE start_before IS NOT NULL AND state IN (0, 2, 6) AND start_before <= $1 \
         ORDER BY start_before LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
});

pub(super) static PROMOTE_DUE: LazyLock<String> =
    LazyLock::new(|| due(JobState::RetryWait, "next_attempt_at"));

pub(super) static EXPIRE_LEASES: LazyLock<String> =
    LazyLock::new(|| due(JobState::Running, "lease_expires_at"));

static BY_KEYS: LazyLock<String> = LazyLock::new(|| select_cols("WHERE idempotency_key = ANY($1)"));

/// Each kind's own queue up to its free slots (`$1` kinds, `$2` slots),
/// then the best `$3` of those by priority and age.
pub(super) static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM unnest($1::text[], $2::int8[]) AS k(kind, n) \
         CROSS JOIN LATERAL (SELECT {COLS}, seq FROM jobs \
           WHERE state = 0 AND next_attempt_at IS NULL AND kind = k.kind \
           ORDER BY priority DESC, seq LIMIT k.n FOR UPDATE SKIP LOCKED) j \
         ORDER BY j.priority DESC, j.seq LIMIT $3",
        prefixed("j")
    )
});

/// One kind's claimable jobs (`$1` kind, `$2` rows), with `seq` last.
pub(super) static CLAIM_KIND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLS}, seq FROM jobs WHERE state = 0 AND next_attempt_at IS NULL AND kind = $1 \
         ORDER BY priority DESC, seq LIMIT $2 FOR UPDATE SKIP LOCKED"
    )
});

/// [`CLAIM_KIND`] for a kind with ordering keys: a keyed job is claimable
/// while its key's places held (RUNNING and RETRY_WAIT jobs, then QUEUED
/// ones submitted before it) are fewer than `$3`; each count stops at `$3`
/// rows of `jobs_key`. Claims of the kind are serialized across instances
/// ([`LOCK_KIND`] or its `kind_rates` row) so two never see the same place
/// free.
pub(super) static CLAIM_KEYED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, j.seq FROM jobs j \
         WHERE j.state = 0 AND j.next_attempt_at IS NULL AND j.kind = $1 \
           AND (j.ordering_key IS NULL OR \
             (SELECT COUNT(*) FROM (SELECT 1 FROM jobs p WHERE p.kind = $1 \
                AND p.ordering_key = j.ordering_key AND p.state IN (1, 2) LIMIT $3) b) \
           + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs p WHERE p.kind = $1 \
                AND p.ordering_key = j.ordering_key AND p.state = 0 AND p.seq < j.seq LIMIT $3) a) \
             < $3) \
         ORDER BY j.priority DESC, j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED",
        prefixed("j")
    )
});

/// Serializes claims of kind `$1` (with ordering keys) across instances
/// until the transaction ends.
pub(super) const LOCK_KIND: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/jobd.claim/' || $1, 0))";

/// A rated kind's bucket, made full on first use (`$2` burst, `$3` now).
pub(super) const RATE_INIT: &str = "INSERT INTO kind_rates (kind, tokens, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (kind) DO NOTHING";

/// A rated kind's bucket, locked: claims of the kind wait for each other.
pub(super) const RATE_LOCK: &str =
    "SELECT tokens, updated_at FROM kind_rates WHERE kind = $1 FOR UPDATE";

pub(super) const RATE_SAVE: &str =
    "UPDATE kind_rates SET tokens = $2, updated_at = $3 WHERE kind = $1";

/// Distinct ordering keys with QUEUED jobs, per kind in `$1`.
pub(super) const KEYS_WAITING: &str = "SELECT k.kind, (SELECT COUNT(DISTINCT ordering_key) \
     FROM jobs WHERE kind = k.kind AND ordering_key IS NOT NULL AND state = 0) \
     FROM unnest($1::text[]) AS k(kind)";

/// Job `$1`'s events after sequence `$2`: the job's columns, then the
/// event's (decoded by [`rows::event`]).
pub(super) static EVENTS_SINCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {cols}, e.state, e.attempt, e.updated_at, e.started_at, e.finished_at, \
           e.next_attempt_at, e.lease_expires_at, e.last_error, e.sequence \
         FROM job_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.job_id = $1 AND e.sequence > $2 ORDER BY e.sequence",
        cols = prefixed("j")
    )
});

pub(super) const RELEASE_DELAYED: &str =
    "UPDATE jobs SET next_attempt_at = NULL, updated_at = $1 WHERE id IN \
     (SELECT id FROM jobs WHERE state = 0 AND next_attempt_at <= $1 \
      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

pub(super) const NEXT_DUE: &str = "SELECT LEAST( \
     (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 0 AND next_attempt_at > $1), \
     (SELECT MIN(next_attempt_at) FROM jobs WHERE state = 2 AND next_attempt_at > $1), \
     (SELECT MIN(lease_expires_at) FROM jobs WHERE state = 1 AND lease_expires_at > $1))";

pub(super) const COUNTS: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state";

pub(super) const COUNT_BY_KIND: &str =
    "SELECT state, kind, COUNT(*) FROM jobs WHERE state IN (0, 1, 2, 6) \
     GROUP BY state, kind";

pub(super) const COUNT_FAILED_BY_KIND: &str =
    "SELECT kind, COUNT(*) FROM jobs WHERE state = 4 GROUP BY kind";

pub(super) const PAUSE_KIND: &str = "INSERT INTO kind_pauses (kind, paused_at) VALUES ($1, $2) \
     ON CONFLICT (kind) DO NOTHING";

pub(super) const RESUME_KIND: &str = "DELETE FROM kind_pauses WHERE kind = $1";

pub(super) const PAUSED_KINDS: &str = "SELECT kind FROM kind_pauses";

pub(super) const PRUNE_EVENTS: &str =
    "DELETE FROM job_events WHERE ctid IN (SELECT ctid FROM job_events \
     WHERE updated_at < $1 LIMIT $2)";

pub(super) const PRUNE_JOBS: &str = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
     WHERE state >= 3 AND finished_at < $1 ORDER BY finished_at LIMIT $2 \
     FOR UPDATE SKIP LOCKED)";

/// Renews lease `$1` on this instance's (`$2`) RUNNING jobs among `$3`.
/// Rows are locked in id order, as result batches lock them.
pub(super) const RENEW: &str = "UPDATE jobs SET lease_expires_at = $1 WHERE id IN ( \
       SELECT id FROM jobs WHERE state = 1 AND owner = $2 AND id = ANY($3) \
       ORDER BY id FOR UPDATE) \
     RETURNING id";

/// Writes back the jobs a transition changed, fenced on the state and
/// attempt each was read with; records each change in `job_events` and
/// announces it. One round trip for any number of jobs.
static SAVE: LazyLock<String> = LazyLock::new(|| format!("{SAVE_CTES}SELECT {NOTIFY} FROM u"));

/// [`SAVE`] for a batch of results, which also says whether any of the
/// jobs is a parent (has `job_deps` rows). The statement's snapshot is
/// taken after the batch locked its rows `FOR UPDATE`, so it sees every
/// child whose insert held a parent `FOR SHARE` (see `deps.rs`), as the
/// cascade's own query would: a batch without children skips that query.
static SAVE_FINISHED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{SAVE_CTES}SELECT {NOTIFY}, EXISTS (SELECT 1 FROM job_deps WHERE parent = ANY($1)) FROM u"
    )
});

/// Announces each saved job of `u` (`$15` the channel); the count is
/// checked.
const NOTIFY: &str = "count(pg_notify($15, u.id::text || ':' || u.sequence::text))";

/// The writes of [`SAVE`]; `u` holds the rows changed.
const SAVE_CTES: &str = "WITH x AS (
  SELECT * FROM unnest($1::uuid[], $2::int2[], $3::int4[], $4::bytea[], $5::int8[], $6::int8[],
    $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::int2[], $13::int4[],
    $16::int4[], $17::bytea[], $18::int8[], $19::text[])
  AS x(id, state, attempt, result, updated_at, started_at, finished_at, next_attempt_at,
    lease_expires_at, last_error, sequence, old_state, old_attempt, waiting_on, attempts,
    start_before, dedup_key)
), u AS (
  UPDATE jobs j SET state = x.state, attempt = x.attempt, result = x.result,
    updated_at = x.updated_at, started_at = x.started_at, finished_at = x.finished_at,
    next_attempt_at = x.next_attempt_at, lease_expires_at = x.lease_expires_at,
    last_error = x.last_error, sequence = x.sequence, waiting_on = x.waiting_on,
    attempts = x.attempts, start_before = x.start_before, dedup_key = x.dedup_key,
    owner = CASE WHEN x.state = 1 THEN $14 ELSE NULL END
  FROM x WHERE j.id = x.id AND j.state = x.old_state AND j.attempt = x.old_attempt
  RETURNING j.id, j.sequence, j.state, j.attempt, j.updated_at, j.started_at, j.finished_at,
    j.next_attempt_at, j.lease_expires_at, j.last_error
), e AS (
  INSERT INTO job_events (job_id, sequence, state, attempt, updated_at, started_at,
    finished_at, next_attempt_at, lease_expires_at, last_error)
  SELECT * FROM u
)
";

/// New jobs, one row per array element. A job's parents come as the text
/// of a `uuid[]` (`unnest` would flatten an array of arrays); NULL when it
/// has none.
const INSERT: &str = "INSERT INTO jobs (id, kind, state, attempt, max_attempts, priority,
    idempotency_key, request_hash, labels, payload, result, timeout_us, created_at, updated_at,
    next_attempt_at, finished_at, last_error, sequence, ordering_key, trace, parents, waiting_on,
    dep_policy, start_before, dedup_key, fairness_key)
  SELECT id, kind, state, attempt, max_attempts, priority, idempotency_key, request_hash, labels,
    payload, result, timeout_us, created_at, updated_at, next_attempt_at, finished_at, last_error,
    sequence, ordering_key, trace, parents::uuid[], waiting_on, dep_policy, start_before,
    dedup_key, fairness_key
  FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int4[], $5::int4[], $6::int4[],
    $7::text[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[], $12::int8[], $13::int8[],
    $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::int8[], $19::text[], $20::text[],
    $21::text[], $22::int4[], $23::int2[], $24::int8[], $25::text[], $26::text[])
  AS x(id, kind, state, attempt, max_attempts, priority, idempotency_key, request_hash, labels,
    payload, result, timeout_us, created_at, updated_at, next_attempt_at, finished_at, last_error,
    sequence, ordering_key, trace, parents, waiting_on, dep_policy, start_before, dedup_key,
    fairness_key)
  ON CONFLICT DO NOTHING RETURNING id";

/// `ids` as the text of a PostgreSQL `uuid[]`; `None` when empty.
fn uuid_array(ids: &[Uuid]) -> Option<String> {
    if ids.is_empty() {
        return None;
    }
    let inner: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    Some(format!("{{{}}}", inner.join(",")))
}

pub(super) fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The jobs a [`COLS`] query returns, inside `tx`.
pub(super) async fn select(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Job>, StoreError> {
    let st = tx.prepare_cached(sql).await?;
    rows::jobs(&tx.query(&st, params).await?)
}

/// Jobs already stored under these idempotency keys.
pub(super) async fn by_keys(
    tx: &Tx<'_>,
    keys: &[&str],
) -> Result<HashMap<String, Job>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let jobs = select(tx, &BY_KEYS, &[&keys]).await?;
    Ok(jobs
        .into_iter()
        .filter_map(|j| j.idempotency_key.clone().map(|k| (k, j)))
        .collect())
}

/// Inserts new jobs in one statement; returns the ids stored (a job whose
/// key a concurrent submit took first is not).
pub(super) async fn insert_rows(tx: &Tx<'_>, jobs: &[&Job]) -> Result<HashSet<Uuid>, StoreError> {
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
    let okeys: Vec<Option<&str>> = jobs.iter().map(|j| j.ordering_key.as_deref()).collect();
    let traces: Vec<Option<String>> = jobs.iter().map(|j| encode_trace(&j.trace)).collect();
    // A job created CANCELLED (a parent failed) has finished.
    let finished: Vec<Option<i64>> = jobs.iter().map(|j| j.finished_at).collect();
    let parents: Vec<Option<String>> = jobs.iter().map(|j| uuid_array(&j.parents)).collect();
    let waiting: Vec<i32> = jobs.iter().map(|j| to_i32(j.waiting_on)).collect();
    let policies: Vec<i16> = jobs
        .iter()
        .map(|j| policy_code(j.on_parent_failure))
        .collect();
    let deadlines: Vec<Option<i64>> = jobs.iter().map(|j| j.start_before).collect();
    let dedup: Vec<Option<&str>> = jobs.iter().map(|j| j.dedup_key.as_deref()).collect();
    let fkeys: Vec<&str> = jobs.iter().map(|j| j.fairness_key.as_str()).collect();
    let st = tx.prepare_cached(INSERT).await?;
    let rows = tx
        .query(
            &st,
            &[
                &ids, &kinds, &states, &attempts, &max, &prio, &keys, &hashes, &labels, &payloads,
                &results, &timeouts, &created, &updated, &next, &finished, &errors, &seqs, &okeys,
                &traces, &parents, &waiting, &policies, &deadlines, &dedup, &fkeys,
            ],
        )
        .await?;
    rows::ids(&rows)
}

/// Writes back `jobs` (changed from `old`) in one statement.
pub(super) async fn save(
    w: &Writer,
    tx: &Tx<'_>,
    jobs: &[Job],
    old: &[(JobState, u32)],
) -> Result<(), StoreError> {
    save_as(w, tx, jobs, old, &SAVE).await.map(|_| ())
}

/// [`save`] for a batch of results: also whether any of `jobs` has
/// children, read under the batch's row locks ([`SAVE_FINISHED`]).
pub(super) async fn save_finished(
    w: &Writer,
    tx: &Tx<'_>,
    jobs: &[Job],
    old: &[(JobState, u32)],
) -> Result<bool, StoreError> {
    save_as(w, tx, jobs, old, &SAVE_FINISHED).await
}

/// Runs `statement` ([`SAVE`] or [`SAVE_FINISHED`]) for `jobs`; returns
/// its second column where it has one (else `false`).
async fn save_as(
    w: &Writer,
    tx: &Tx<'_>,
    jobs: &[Job],
    old: &[(JobState, u32)],
    statement: &str,
) -> Result<bool, StoreError> {
    if jobs.is_empty() {
        return Ok(false);
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
    let waiting: Vec<i32> = jobs.iter().map(|j| to_i32(j.waiting_on)).collect();
    let history: Vec<Option<Vec<u8>>> = jobs
        .iter()
        .map(|j| crate::store::codec::encode_attempts(&j.attempts))
        .collect();
    let deadlines: Vec<Option<i64>> = jobs.iter().map(|j| j.start_before).collect();
    let dedup: Vec<Option<&str>> = jobs.iter().map(|j| j.dedup_key.as_deref()).collect();
    let st = tx.prepare_cached(statement).await?;
    let row = tx
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
                &waiting,
                &history,
                &deadlines,
                &dedup,
            ],
        )
        .await?;
    let n: i64 = rows::col(&row, 0)?;
    if n as usize != jobs.len() {
        // Rows are locked FOR UPDATE before a transition, so this is a bug.
        return Err(StoreError::Internal(
            format!(
                "{} of {} jobs changed under the store",
                jobs.len() - n as usize,
                jobs.len()
            )
            .into(),
        ));
    }
    let delta: i64 = jobs
        .iter()
        .zip(old)
        .map(|(j, (s, _))| i64::from(j.state.is_waiting()) - i64::from(s.is_waiting()))
        .sum();
    w.waiting.fetch_add(delta, Ordering::AcqRel);
    match row.len() {
        1 => Ok(false),
        _ => rows::col(&row, 1),
    }
}
