//! Deduplication modes on SQLite (rules in `store::dedup`): the holder of a
//! (kind, dedup key) is found through the unique index `jobs_dedup` and
//! merged into inside the writer's transaction, which no other write
//! interleaves.

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::{map_err, row_to_job};
use crate::job::NewJob;
use crate::store::codec::{encode_labels, COLS};
use crate::store::dedup;
use crate::store::{InsertOutcome, StoreError};

/// The answer when a job of `new`'s kind holds its dedup key: that job,
/// merged into (REPLACE, DEBOUNCE) or as it is (KEEP); `None` when no job
/// holds it.
pub(super) fn merge(
    tx: &Transaction<'_>,
    new: &NewJob,
) -> Result<Option<InsertOutcome>, StoreError> {
    let Some(d) = &new.dedup else {
        return Ok(None);
    };
    let holder = tx
        .prepare_cached(&format!(
            "SELECT {COLS} FROM jobs INDEXED BY jobs_dedup WHERE kind = ?1 AND dedup_key = ?2 \
             AND dedup_key IS NOT NULL AND attempt = 0 AND state IN (0, 6)"
        ))
        .and_then(|mut s| s.query_row(params![new.kind, d.key], row_to_job).optional())
        .map_err(map_err)?;
    let Some(holder) = holder else {
        return Ok(None);
    };
    let (merged, outcome) = dedup::merge(&holder, new, crate::job::now_micros());
    let Some(job) = merged else {
        return Ok(Some(InsertOutcome::Merged {
            job: holder,
            outcome,
        }));
    };
    tx.prepare_cached(
        "UPDATE jobs SET payload = ?2, labels = ?3, next_attempt_at = ?4, updated_at = ?5, \
         sequence = ?6 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            job.id.as_bytes().as_slice(),
            job.payload.as_ref(),
            encode_labels(&job.labels),
            job.next_attempt_at,
            job.updated_at,
            job.sequence as i64,
        ])
    })
    .map_err(map_err)?;
    Ok(Some(InsertOutcome::Merged { job, outcome }))
}
