//! Rows to jobs, and SQLite's errors to [`StoreError`]s.

use super::*;

pub(super) fn state_code(s: JobState) -> i64 {
    codec::state_code(s).into()
}

pub(super) fn state_from(code: i64) -> rusqlite::Result<JobState> {
    codec::state_from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(2, code))
}

/// A stored value jobd would not have written; [`map_err`] makes it
/// [`StoreError::Corrupt`].
pub(super) fn bad_value(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Blob,
        format!("bad {what}").into(),
    )
}

pub(super) fn row_to_job(r: &Row<'_>) -> rusqlite::Result<Job> {
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
        progress: codec::decode_progress(r.get::<_, Option<Vec<u8>>>(22)?.as_deref()),
        checkpoint: r
            .get::<_, Option<Vec<u8>>>(23)?
            .map(Bytes::from)
            .unwrap_or_default(),
        parents: codec::decode_ids(&r.get::<_, Option<Vec<u8>>>(24)?.unwrap_or_default()),
        waiting_on: r.get(25)?,
        on_parent_failure: codec::policy_from_code(r.get(26)?),
        attempts: codec::decode_attempts(&r.get::<_, Option<Vec<u8>>>(27)?.unwrap_or_default()),
        start_before: r.get(28)?,
        dedup_key: r.get(29)?,
        fairness_key: r.get(30)?,
    })
}

/// SQLite's errors sorted into what the caller can do about them.
pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull
            | C::ReadOnly
            | C::CannotOpen
            | C::SystemIoFailure
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::PermissionDenied
            | C::OutOfMemory => StoreError::Unavailable,
            C::NotADatabase | C::DatabaseCorrupt => StoreError::Corrupt,
            _ => StoreError::Internal,
        },
        // A stored value that does not decode: SQLite columns take any
        // type, so a damaged or hand-edited file shows up here.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt,
        _ => StoreError::Internal,
    };
    kind(Detail::new(e.to_string()).because(e))
}

pub(super) fn gone() -> StoreError {
    StoreError::Unavailable("sqlite writer has stopped".into())
}
