//! Rows back into jobs. Every column is read with `try_get`, so a value jobd
//! would not have written is [`StoreError::Corrupt`], never a panic and never
//! mistaken for an unreachable server.

use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::job::{Job, JobState};
use crate::store::codec::{decode_labels, decode_trace, state_from_code};
use crate::store::{Detail, StoreError};

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("postgres row has a bad {what}").into())
}

/// Column `i` of `r`; one that does not decode as jobd wrote it is Corrupt.
pub(super) fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(Detail::new(format!("postgres row: {e}")).because(e)))
}

/// A `state` column.
pub(super) fn state(r: &Row, i: usize) -> Result<JobState, StoreError> {
    let s: i16 = col(r, i)?;
    state_from_code(s.into()).ok_or_else(|| corrupt("state"))
}

/// Columns in [`COLS`](crate::store::codec::COLS); a query's own columns
/// after them start here.
pub(super) const COLS_LEN: usize = crate::store::codec::COLS_LEN;

/// A row of [`COLS`](crate::store::codec::COLS).
pub(super) fn job(r: &Row) -> Result<Job, StoreError> {
    let hash: Vec<u8> = col(r, 7)?;
    let labels: &[u8] = col(r, 8)?;
    Ok(Job {
        id: col(r, 0)?,
        kind: col(r, 1)?,
        state: state(r, 2)?,
        attempt: col::<i32>(r, 3)?.max(0) as u32,
        max_attempts: col::<i32>(r, 4)?.max(0) as u32,
        priority: col(r, 5)?,
        idempotency_key: col(r, 6)?,
        request_hash: hash.try_into().map_err(|_| corrupt("request hash"))?,
        labels: decode_labels(labels),
        payload: Bytes::from(col::<Vec<u8>>(r, 9)?),
        result: Bytes::from(col::<Vec<u8>>(r, 10)?),
        timeout: Duration::from_micros(col::<i64>(r, 11)?.max(0) as u64),
        created_at: col(r, 12)?,
        updated_at: col(r, 13)?,
        started_at: col(r, 14)?,
        finished_at: col(r, 15)?,
        next_attempt_at: col(r, 16)?,
        lease_expires_at: col(r, 17)?,
        last_error: col(r, 18)?,
        sequence: col::<i64>(r, 19)?.max(0) as u64,
        ready_at: None,
        ordering_key: col(r, 20)?,
        trace: decode_trace(col(r, 21)?),
        progress: crate::store::codec::decode_progress(col::<Option<Vec<u8>>>(r, 22)?.as_deref()),
        checkpoint: col::<Option<Vec<u8>>>(r, 23)?
            .map(Bytes::from)
            .unwrap_or_default(),
        parents: col::<Option<Vec<Uuid>>>(r, 24)?.unwrap_or_default(),
        waiting_on: col::<i32>(r, 25)?.max(0) as u32,
        on_parent_failure: crate::store::codec::policy_from_code(col::<i16>(r, 26)?.into()),
        attempts: crate::store::codec::decode_attempts(
            &col::<Option<Vec<u8>>>(r, 27)?.unwrap_or_default(),
        ),
        start_before: col(r, 28)?,
        dedup_key: col(r, 29)?,
        fairness_key: col(r, 30)?,
    })
}

pub(super) fn jobs(rows: &[Row]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(job).collect()
}

/// A row of [`EVENTS_SINCE`](super::sql::EVENTS_SINCE): the job as it is
/// now, with the fields a transition changes as they were at that event.
pub(super) fn event(r: &Row) -> Result<Job, StoreError> {
    let mut j = job(r)?;
    // The event's columns follow the job's.
    let e = COLS_LEN;
    j.state = state(r, e)?;
    j.attempt = col::<i32>(r, e + 1)?.max(0) as u32;
    j.updated_at = col(r, e + 2)?;
    j.started_at = col(r, e + 3)?;
    j.finished_at = col(r, e + 4)?;
    j.next_attempt_at = col(r, e + 5)?;
    j.lease_expires_at = col(r, e + 6)?;
    j.last_error = col(r, e + 7)?;
    j.sequence = col::<i64>(r, e + 8)?.max(0) as u64;
    if j.state != JobState::Succeeded {
        j.result = Bytes::new();
    }
    Ok(j)
}

/// The first column of each row, as job ids.
pub(super) fn ids<C: FromIterator<Uuid>>(rows: &[Row]) -> Result<C, StoreError> {
    rows.iter().map(|r| col(r, 0)).collect()
}

/// PostgreSQL's errors sorted into what the caller can do about them:
/// everything about reaching the server is UNAVAILABLE (and retried).
/// A `From` so that `?` works on every driver call; decoding a row's
/// columns goes through [`rows::col`] instead (a bad row is Corrupt).
impl From<tokio_postgres::Error> for crate::store::StoreError {
    fn from(e: tokio_postgres::Error) -> crate::store::StoreError {
        match e.as_db_error() {
            None => crate::store::StoreError::Unavailable(
                crate::store::Detail::new(format!(
                    "postgres: {}",
                    crate::client_tls::error_chain(&e)
                ))
                .because(e),
            ),
            Some(db) => {
                let code = db.code().code();
                let transient = [
                    "08", "53", "57P", "57014", "40001", "40P01", "55P03", "25006",
                ]
                .iter()
                .any(|p| code.starts_with(p));
                let detail =
                    crate::store::Detail::new(format!("postgres: {}: {}", code, db.message()));
                if transient {
                    crate::store::StoreError::Unavailable(detail.because(e))
                } else {
                    crate::store::StoreError::Internal(detail.because(e))
                }
            }
        }
    }
}
