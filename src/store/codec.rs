//! Encodings the SQL stores share, so SQLite and PostgreSQL rows mean the
//! same thing.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::ListQuery;
use crate::job::{JobState, TraceContext};

/// A trace context as one column: `traceparent`, then a newline and
/// `tracestate` if there is one (neither may hold a newline).
pub fn encode_trace(t: &Option<TraceContext>) -> Option<String> {
    t.as_ref().map(|t| {
        if t.tracestate.is_empty() {
            t.traceparent.clone()
        } else {
            format!("{}\n{}", t.traceparent, t.tracestate)
        }
    })
}

pub fn decode_trace(s: Option<String>) -> Option<TraceContext> {
    let s = s?;
    let (tp, ts) = s.split_once('\n').unwrap_or((&s, ""));
    Some(TraceContext {
        traceparent: tp.to_string(),
        tracestate: ts.to_string(),
    })
}

/// The `jobs` columns every row read selects, in the order both stores'
/// row decoders (and SQLite's INSERT) index them.
pub const COLS: &str = "id, kind, state, attempt, max_attempts, priority, idempotency_key, \
    request_hash, labels, payload, result, timeout_us, created_at, updated_at, started_at, \
    finished_at, next_attempt_at, lease_expires_at, last_error, sequence, ordering_key, trace, \
    progress, checkpoint, parents, waiting_on, dep_policy, attempts, start_before, dedup_key, \
    fairness_key";

/// How many columns [`COLS`] names, counted from the text so the two cannot
/// drift apart.
pub const COLS_LEN: usize = {
    let b = COLS.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < b.len() {
        if b[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
};

/// A state as stored: small integers in lifecycle order, so `state >= 3`
/// means terminal in the partial indexes, except WAITING (6, added with
/// workflows), which has no `finished_at` and so never matches them.
/// One ListJobs page: only the filters asked for are in the SQL, so each
/// combination is its own statement with its own index (a generic
/// `(? IS NULL OR state = ?)` makes the planner scan the table). `mark(n)`
/// writes the n-th placeholder; parameters are, in order: [`list_start`],
/// then the state, the kind and the ordering key if filtered, the row limit.
pub fn list_sql(q: &ListQuery, mark: impl Fn(usize) -> String) -> String {
    let mut n = 1;
    let (cmp, order) = if q.newest_first {
        ("<", "DESC")
    } else {
        (">", "")
    };
    let mut sql = format!("SELECT {COLS} FROM jobs WHERE id {cmp} {}", mark(n));
    for (on, col) in [
        (q.state.is_some(), "state"),
        (q.kind.is_some(), "kind"),
        (q.ordering_key.is_some(), "ordering_key"),
    ] {
        if on {
            n += 1;
            sql += &format!(" AND {col} = {}", mark(n));
        }
    }
    sql + &format!(" ORDER BY id {order} LIMIT {}", mark(n + 1))
}

/// Where a page starts: after the previous page's last id, or at the
/// oldest (newest) end.
pub fn list_start(q: &ListQuery) -> Uuid {
    q.after.unwrap_or(if q.newest_first {
        Uuid::max()
    } else {
        Uuid::nil()
    })
}

pub fn state_code(s: JobState) -> i16 {
    match s {
        JobState::Queued => 0,
        JobState::Running => 1,
        JobState::RetryWait => 2,
        JobState::Succeeded => 3,
        JobState::Failed => 4,
        JobState::Cancelled => 5,
        JobState::Waiting => 6,
    }
}

pub fn state_from_code(code: i64) -> Option<JobState> {
    JobState::ALL
        .into_iter()
        .find(|s| i64::from(state_code(*s)) == code)
}

/// Job ids as their 16 bytes each, one after another (SQLite's `parents`).
pub fn encode_ids(ids: &[Uuid]) -> Vec<u8> {
    ids.iter().flat_map(|id| *id.as_bytes()).collect()
}

/// The ids [`encode_ids`] wrote; a trailing partial id is dropped.
pub fn decode_ids(b: &[u8]) -> Vec<Uuid> {
    b.chunks_exact(16)
        .filter_map(|c| Uuid::from_slice(c).ok())
        .collect()
}

/// The attempt history as stored (`attempts`): per record its attempt
/// (u32), start and end (i64), then outcome, error and worker, each a u32
/// length and the bytes; little-endian. `None` for no history.
pub fn encode_attempts(a: &[crate::job::AttemptRecord]) -> Option<Vec<u8>> {
    if a.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in a {
        out.extend_from_slice(&r.attempt.to_le_bytes());
        out.extend_from_slice(&r.started_at.to_le_bytes());
        out.extend_from_slice(&r.finished_at.to_le_bytes());
        for s in [&r.outcome, &r.error, &r.worker] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Some(out)
}

/// The records [`encode_attempts`] wrote; a damaged tail is dropped.
pub fn decode_attempts(mut b: &[u8]) -> Vec<crate::job::AttemptRecord> {
    fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
        let v = b.get(..N)?.try_into().ok()?;
        *b = &b[N..];
        Some(v)
    }
    fn text(b: &mut &[u8]) -> Option<String> {
        let n = u32::from_le_bytes(take::<4>(b)?) as usize;
        let s = String::from_utf8_lossy(b.get(..n)?).into_owned();
        *b = &b[n..];
        Some(s)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let r = (|| {
            Some(crate::job::AttemptRecord {
                attempt: u32::from_le_bytes(take::<4>(&mut b)?),
                started_at: i64::from_le_bytes(take::<8>(&mut b)?),
                finished_at: i64::from_le_bytes(take::<8>(&mut b)?),
                outcome: text(&mut b)?,
                error: text(&mut b)?,
                worker: text(&mut b)?,
            })
        })();
        match r {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// What a parent's failure does, as stored (`dep_policy`).
pub fn policy_code(p: crate::job::ParentFailure) -> i16 {
    match p {
        crate::job::ParentFailure::Cancel => 0,
        crate::job::ParentFailure::Run => 1,
    }
}

pub fn policy_from_code(code: i64) -> crate::job::ParentFailure {
    if code == 1 {
        crate::job::ParentFailure::Run
    } else {
        crate::job::ParentFailure::Cancel
    }
}

/// Labels as length-prefixed key/value pairs: compact and needs no JSON.
pub fn encode_labels(labels: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in labels {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

pub fn decode_labels(mut b: &[u8]) -> BTreeMap<String, String> {
    let take = |b: &mut &[u8]| -> Option<String> {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let s = String::from_utf8_lossy(b.get(4..4 + n)?).into_owned();
        *b = &b[4 + n..];
        Some(s)
    };
    let mut m = BTreeMap::new();
    while let (Some(k), Some(v)) = (take(&mut b), take(&mut b)) {
        m.insert(k, v);
    }
    m
}

/// A job's progress as stored (one column): percent (1 byte), the time
/// (8 bytes, big-endian micros), the message's length (2 bytes) and bytes,
/// then the details. `None` for an empty column or one jobd did not write.
pub fn encode_progress(p: &crate::job::Progress) -> Vec<u8> {
    let msg = p.message.as_bytes();
    let mut out = Vec::with_capacity(11 + msg.len() + p.details.len());
    out.push(p.percent.min(100) as u8);
    out.extend_from_slice(&p.updated_at.to_be_bytes());
    out.extend_from_slice(&(msg.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&msg[..msg.len().min(u16::MAX as usize)]);
    out.extend_from_slice(&p.details);
    out
}

/// See [`encode_progress`].
pub fn decode_progress(b: Option<&[u8]>) -> Option<crate::job::Progress> {
    let b = b?;
    if b.len() < 11 {
        return None;
    }
    let at = i64::from_be_bytes(b[1..9].try_into().ok()?);
    let len = u16::from_be_bytes(b[9..11].try_into().ok()?) as usize;
    let msg = b.get(11..11 + len)?;
    Some(crate::job::Progress {
        percent: u32::from(b[0]),
        message: String::from_utf8_lossy(msg).into_owned(),
        details: bytes::Bytes::copy_from_slice(&b[11 + len..]),
        updated_at: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_states_round_trip() {
        let labels: BTreeMap<String, String> = [("a", ""), ("tenant", "ünï")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(decode_labels(&encode_labels(&labels)), labels);
        assert!(
            decode_labels(&[1, 0]).is_empty(),
            "truncated input is not a panic"
        );
        for s in JobState::ALL {
            assert_eq!(state_from_code(state_code(s).into()), Some(s));
        }
        assert_eq!(state_from_code(9), None);
    }
}
