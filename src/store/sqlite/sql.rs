//! The claim queries (each names its partial index).

/// Queries name their partial index (`INDEXED BY`): without statistics the
/// planner would pick `jobs_state_id` and sort every QUEUED row per claim.
/// Once applied, a migration is never edited: changes are new entries.
///
/// One kind's claimable jobs (`?1` kind, `?2` rows).
pub(super) const CLAIM_KIND: &str =
    "SELECT priority, seq, id FROM jobs INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 \
     ORDER BY priority DESC, seq LIMIT ?2";

/// Prepared statements kept per connection.
pub(super) const STATEMENT_CACHE: usize = 64;

/// Whether kind `?1` has a job ready to claim (a new job is then not
/// started ahead of it; see `NewJob::start`).
pub(super) const KIND_HAS_READY: &str = "SELECT 1 FROM jobs INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 LIMIT 1";

/// [`CLAIM_KIND`] for a kind with ordering keys: a keyed job is claimable
/// while its key's places held (RUNNING and RETRY_WAIT jobs, then QUEUED
/// ones submitted before it) are fewer than `?3`. Each count stops at `?3`
/// rows of `jobs_key`, so a long key costs no more than a short one.
pub(super) const CLAIM_KEYED: &str =
    "SELECT priority, seq, id FROM jobs AS j INDEXED BY jobs_ready_kind \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 AND (ordering_key IS NULL OR \
       (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS p INDEXED BY jobs_key WHERE p.kind = ?1 \
          AND p.ordering_key = j.ordering_key AND p.state IN (1, 2) LIMIT ?3)) \
     + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS p INDEXED BY jobs_key WHERE p.kind = ?1 \
          AND p.ordering_key = j.ordering_key AND p.state = 0 AND p.seq < j.seq LIMIT ?3)) < ?3) \
     ORDER BY priority DESC, seq LIMIT ?2";
