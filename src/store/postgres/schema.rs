//! jobd's tables in PostgreSQL, and the migrations that make them: applied
//! at start inside one transaction under an advisory lock, so instances
//! starting together apply each version exactly once.

use deadpool_postgres::Object;
use sha2::{Digest, Sha256};

use crate::store::StoreError;

/// Schema versions, applied in order under an advisory lock; the
/// `jobd_migrations` table records which ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    id               UUID PRIMARY KEY,
    kind             TEXT NOT NULL,
    state            SMALLINT NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    idempotency_key  TEXT UNIQUE,
    request_hash     BYTEA NOT NULL,
    labels           BYTEA NOT NULL,
    payload          BYTEA NOT NULL,
    result           BYTEA NOT NULL,
    timeout_us       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    next_attempt_at  BIGINT,
    lease_expires_at BIGINT,
    last_error       TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    owner            TEXT
);
-- Claim order: claimable QUEUED jobs (no pending run_at) by priority, then age.
CREATE INDEX jobs_ready ON jobs (priority DESC, seq) WHERE state = 0 AND next_attempt_at IS NULL;
CREATE INDEX jobs_delayed ON jobs (next_attempt_at) WHERE state = 0 AND next_attempt_at IS NOT NULL;
CREATE INDEX jobs_retry ON jobs (next_attempt_at) WHERE state = 2;
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 1;
CREATE INDEX jobs_owner ON jobs (owner) WHERE state = 1;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state >= 3;
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_kind_id ON jobs (kind, id);
-- What each transition changed, kept briefly for watchers on other instances.
CREATE UNLOGGED TABLE job_events (
    job_id           UUID NOT NULL,
    sequence         BIGINT NOT NULL,
    state            SMALLINT NOT NULL,
    attempt          INTEGER NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    next_attempt_at  BIGINT,
    lease_expires_at BIGINT,
    last_error       TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE INDEX job_events_updated ON job_events (updated_at);
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
-- v4: kinds an operator paused (PauseKind), for every instance; a row per
-- paused kind.
CREATE TABLE kind_pauses (kind TEXT PRIMARY KEY, paused_at BIGINT NOT NULL);
"#,
    r#"
-- v5: cron schedules, shared by every instance: the next fire no instance
-- took yet (taken by a compare-and-set on it), the operator's pause, and
-- the job of the last fire.
CREATE TABLE schedules (id TEXT PRIMARY KEY, next_fire_at BIGINT NOT NULL,
  paused BOOLEAN NOT NULL DEFAULT FALSE, last_job_id UUID);
"#,
    r#"
-- v6: ordering keys and rate limits. A claim checks a keyed job against the
-- unfinished jobs of its key (kind, key) through jobs_key, in submit order;
-- jobs_key_id serves ListJobs filtered by key. kind_rates holds each rated
-- kind's token bucket, shared by every instance (its row lock orders claims
-- of that kind).
ALTER TABLE jobs ADD COLUMN ordering_key TEXT;
CREATE INDEX jobs_key ON jobs (kind, ordering_key, state, seq) WHERE ordering_key IS NOT NULL;
CREATE INDEX jobs_key_id ON jobs (ordering_key, id) WHERE ordering_key IS NOT NULL;
CREATE TABLE kind_rates (kind TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL,
  updated_at BIGINT NOT NULL);
"#,
    r#"
-- v7: the submitter's W3C trace context, handed to every attempt.
ALTER TABLE jobs ADD COLUMN trace TEXT;
"#,
    r#"
-- v8: long-running jobs: the latest progress a worker reported (one
-- encoded column, see codec::encode_progress) and the job's log lines,
-- pruned to the newest per job and removed with the job.
ALTER TABLE jobs ADD COLUMN progress BYTEA;
CREATE TABLE job_logs (
    job_id  UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    at      BIGINT NOT NULL,
    line    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"#,
    r#"
-- v9: the checkpoint an attempt stored, handed to the next attempt.
ALTER TABLE jobs ADD COLUMN checkpoint BYTEA;
"#,
    r#"
-- v10: workflows: a job's parents (depends_on), how many have not
-- finished, what a parent's failure does (0 cancel, 1 run); job_deps
-- finds a parent's children when it ends; WAITING (state 6) jobs are
-- indexed for the sweeper's re-check.
ALTER TABLE jobs ADD COLUMN parents UUID[];
ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dep_policy SMALLINT NOT NULL DEFAULT 0;
CREATE TABLE job_deps (
    parent UUID NOT NULL,
    child  UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (parent, child)
);
CREATE INDEX job_deps_child ON job_deps (child);
CREATE INDEX jobs_waiting ON jobs (id) WHERE state = 6;
"#,
    r#"
-- v11: each job's attempt history (the last 25 ended attempts: when, how,
-- where), encoded in one column (see codec::encode_attempts).
ALTER TABLE jobs ADD COLUMN attempts BYTEA;
"#,
    r#"
-- v12: start deadlines. A job not started by `start_before` ends FAILED;
-- the sweeper finds such jobs among those not started through this index.
ALTER TABLE jobs ADD COLUMN start_before BIGINT;
CREATE INDEX jobs_start_before ON jobs (start_before)
    WHERE start_before IS NOT NULL AND state IN (0, 2, 6);
"#,
    r#"
-- v13: deduplication modes. A job holds its dedup key while it has not
-- started (QUEUED or WAITING, attempt 0). The unique index makes a second
-- holder of one (kind, key) impossible, across instances: a racing insert
-- waits for the first commit, then finds the holder.
ALTER TABLE jobs ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX jobs_dedup ON jobs (kind, dedup_key)
    WHERE dedup_key IS NOT NULL AND attempt = 0 AND state IN (0, 6);
"#,
    r#"
-- v14: schedules created through the API (CreateSchedule) keep their
-- definition (JSON) in their row, so every instance's scheduler runs them;
-- config schedules' rows leave it NULL.
ALTER TABLE schedules ADD COLUMN definition TEXT;
"#,
    r#"
-- v15: fair claiming. Each job's fairness key (its submit's fairness_key,
-- else its ordering key, else ''); jobs_fair lets a round_robin kind's
-- claim skip from key to key and read each key's heads. kind_fair holds
-- each round_robin kind's key served last (its row is the lock that
-- serializes the kind's claims across instances); key_rates each key's
-- token bucket (key_rate), pruned once refilled.
ALTER TABLE jobs ADD COLUMN fairness_key TEXT NOT NULL DEFAULT '';
UPDATE jobs SET fairness_key = ordering_key WHERE ordering_key IS NOT NULL
    AND state IN (0, 1, 2, 6);
CREATE INDEX jobs_fair ON jobs (kind, fairness_key, priority DESC, seq)
    WHERE state = 0 AND next_attempt_at IS NULL;
CREATE TABLE kind_fair (kind TEXT PRIMARY KEY, last_key TEXT);
CREATE TABLE key_rates (kind TEXT NOT NULL, key TEXT NOT NULL,
  tokens DOUBLE PRECISION NOT NULL, updated_at BIGINT NOT NULL,
  PRIMARY KEY (kind, key));
"#,
];

/// An advisory-lock key per schema, so instances on different schemas of
/// one database do not wait for each other's migrations.
fn lock_key(schema: &str) -> i64 {
    let h = Sha256::digest(format!("jobd migrations {schema}").as_bytes());
    i64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

pub(super) async fn migrate(client: &mut Object, schema: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // Instances starting together queue here; the first applies, the
    // rest find the versions recorded.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.jobd_migrations ( \
           version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await?;
    let row = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.jobd_migrations"),
            &[],
        )
        .await?;
    let version: i32 = row.get(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::Corrupt(
            format!(
                "database schema {schema} is at version {version}, newer than this jobd knows \
                 ({known}); run a newer jobd"
            )
            .into(),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.jobd_migrations (version) VALUES ($1)"),
            &[&(i as i32 + 1)],
        )
        .await?;
        tracing::debug!(version = i + 1, schema, "applied store migration");
    }
    tx.commit().await?;
    if version < known {
        tracing::info!(schema, "store migrated from v{version} to v{known}");
    }
    Ok(())
}
