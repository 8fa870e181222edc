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
