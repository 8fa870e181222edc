//! The claim on SQLite, run by the writer: each kind's own queue up to its
//! free slots (and tokens), a round_robin kind's key by key (see
//! `store::fairness`); then the best `limit` of those by priority and age.

use std::sync::LazyLock;

use super::*;
use crate::config::Fairness;
use crate::store::fairness::{min_some, FairClaim};

/// A claimed row: priority, seq, id.
type Found = (i32, i64, Vec<u8>);

fn found(r: &Row<'_>) -> rusqlite::Result<Found> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

pub(super) fn claim(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    req: &ClaimRequest,
) -> Result<ClaimOutcome, StoreError> {
    // Stamped when the claim takes effect (after the writes queued
    // before it, such as the end of a key's previous job).
    let now = now_micros().max(req.now);
    let mut candidates = Vec::new();
    let mut budgets = Vec::new();
    for (kind, cap) in req.kinds.iter().filter(|(_, n)| **n > 0) {
        let limits = req.limits.get(kind).copied().unwrap_or_default();
        let b = KindBudget::new(
            (*cap).min(req.limit),
            limits,
            st.buckets.get(kind).copied(),
            now,
        );
        let (rows, plan) = if limits.fairness == Fairness::RoundRobin {
            let (plan, rows) = read_fair(tx, st, kind, &b, now)?;
            (rows, Some(plan))
        } else {
            (read_plain(tx, kind, &b)?, None)
        };
        let n = rows.len();
        // Which key served each job: read back only by round_robin kinds.
        let mut keys = HashMap::new();
        for (i, (prio, seq, id)) in rows.into_iter().take(b.allowed()) {
            if plan.is_some() {
                keys.insert(id.clone(), i);
            }
            candidates.push((prio, seq, kind.clone(), id));
        }
        budgets.push((kind.clone(), b, n, plan, keys));
    }
    let picked = limits::pick(candidates, req.limit)
        .into_iter()
        .map(|(_, id)| {
            Uuid::from_slice(&id)
                .map_err(|e| StoreError::Corrupt(Detail::new(e.to_string()).because(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (jobs, expired): (Vec<Job>, Vec<Job>) = transition_all(tx, st, picked, |j| {
        transition::claim_or_expire(j, now, req.lease_slack);
        true
    })?
    .into_iter()
    .partition(|j| j.state == JobState::Running);
    let taken = limits::taken_per_kind(jobs.iter().map(|j| j.kind.as_str()));
    let mut rate_limited = Vec::new();
    for (kind, b, found, plan, keys) in budgets {
        let got = taken.get(&kind).copied().unwrap_or(0);
        let (bucket, mut wake) = b.settle(found, got, now);
        if let Some(bucket) = bucket {
            st.buckets.insert(kind.clone(), bucket);
        }
        if let Some(plan) = plan {
            let served: Vec<usize> = jobs
                .iter()
                .filter_map(|j| keys.get(j.id.as_bytes().as_slice()))
                .copied()
                .collect();
            let s = plan.settle(&served);
            if let Some(c) = s.cursor {
                st.cursors.insert(kind.clone(), c);
            }
            if let Some(rate) = b.limits.key_rate {
                st.key_buckets.save(&kind, &rate, s.buckets, now);
            }
            wake = min_some(wake, s.wake);
        }
        if let Some(at) = wake {
            rate_limited.push((kind, at));
        }
    }
    Ok(ClaimOutcome {
        jobs,
        expired,
        rate_limited,
    })
}

/// A kind's due jobs in priority order (with the ordering-key check),
/// as far as its budget reads; key index 0 for all.
fn read_plain(
    tx: &Transaction<'_>,
    kind: &str,
    b: &KindBudget,
) -> Result<Vec<(usize, Found)>, StoreError> {
    let read = b.to_read() as i64;
    let mut s;
    let rows = match b.limits.key_concurrency {
        Some(max) => {
            s = tx.prepare_cached(CLAIM_KEYED).map_err(map_err)?;
            s.query_map(params![kind, read, max], found)
        }
        None => {
            s = tx.prepare_cached(CLAIM_KIND).map_err(map_err)?;
            s.query_map(params![kind, read], found)
        }
    }
    .map_err(map_err)?;
    rows.map(|r| r.map(|f| (0, f)).map_err(map_err)).collect()
}

/// A round_robin kind's due jobs: the keys after its cursor (wrapping
/// around) found by skipping through `jobs_fair`, then their heads turn
/// by turn; `(key index, row)`.
fn read_fair(
    tx: &Transaction<'_>,
    st: &WriterState,
    kind: &str,
    b: &KindBudget,
    now: Micros,
) -> Result<(FairClaim, Vec<(usize, Found)>), StoreError> {
    let mut plan = FairClaim::new(b.to_read(), b.limits.key_rate, now);
    let cursor = st.cursors.get(kind);
    // After the cursor, then from the first key up to the cursor: each
    // pass a first read from its start, then reads after the last key seen.
    type Pass<'a> = (&'a str, &'a str, &'a str, &'a str);
    let passes: Vec<Pass<'_>> = match cursor {
        Some(c) => vec![
            (&FAIR_KEYS_AFTER, &FAIR_KEYS_AFTER, c, ""),
            (&FAIR_KEYS_UPTO, &FAIR_KEYS_AFTER_UPTO, "", c),
        ],
        None => vec![(&FAIR_KEYS_FROM, &FAIR_KEYS_AFTER, "", "")],
    };
    'passes: for (first, next, from, upto) in passes {
        let mut from = from.to_string();
        let mut sql = first;
        while plan.wants_keys() {
            let n = plan.keys_to_read() as i64;
            let mut s = tx.prepare_cached(sql).map_err(map_err)?;
            let keys: Vec<String> = s
                .query_map(params![kind, from, n, upto], |r| r.get(0))
                .map_err(map_err)?
                .collect::<Result<_, _>>()
                .map_err(map_err)?;
            let more = keys.len() as i64 == n;
            let Some(last) = keys.last().cloned() else {
                continue 'passes;
            };
            for k in keys {
                let bucket = st.key_buckets.get(kind, &k);
                if !plan.offer(k, bucket) {
                    break 'passes;
                }
            }
            if !more {
                continue 'passes;
            }
            from = last;
            sql = next;
        }
    }
    let read = |n: &dyn Fn(usize) -> usize| -> Result<Vec<Vec<Found>>, StoreError> {
        let mut s = tx.prepare_cached(FAIR_HEADS).map_err(map_err)?;
        let mut heads = Vec::new();
        for (i, k) in plan.keys().enumerate() {
            let rows = s
                .query_map(params![kind, k, n(i) as i64], found)
                .map_err(map_err)?;
            heads.push(rows.collect::<Result<Vec<_>, _>>().map_err(map_err)?);
        }
        Ok(heads)
    };
    let mut heads = read(&|i| plan.first_read(i))?;
    if plan.short(&heads) {
        heads = read(&|i| plan.second_read(i))?;
    }
    let heads = plan.interleave(heads);
    Ok((plan, heads))
}

/// One key's due jobs in claim order (`?1` kind, `?2` key, `?3` rows).
const FAIR_HEADS: &str = "SELECT priority, seq, id FROM jobs INDEXED BY jobs_fair \
     WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 AND fairness_key = ?2 \
     ORDER BY priority DESC, seq LIMIT ?3";

/// Up to `?3` distinct fairness keys of kind `?1` with due jobs, in key
/// order, from `?2` (`start` is `>` or `>=`) and at most `?4` when
/// `bounded`: a skip scan of `jobs_fair`, one index probe per key, however
/// many jobs a key holds.
fn fair_keys(start: &str, bounded: bool) -> String {
    let upto = if bounded {
        "AND fairness_key <= ?4"
    } else {
        "AND ?4 = ?4"
    };
    let next = |cmp: &str| {
        format!(
            "SELECT fairness_key FROM jobs INDEXED BY jobs_fair \
             WHERE state = 0 AND next_attempt_at IS NULL AND kind = ?1 AND fairness_key {cmp} \
             {upto} ORDER BY fairness_key LIMIT 1"
        )
    };
    format!(
        "WITH RECURSIVE k(key) AS (SELECT ({}) UNION ALL \
           SELECT ({}) FROM k WHERE k.key IS NOT NULL LIMIT ?3) \
         SELECT key FROM k WHERE key IS NOT NULL LIMIT ?3",
        next(&format!("{start} ?2")),
        next("> k.key")
    )
}

static FAIR_KEYS_FROM: LazyLock<String> = LazyLock::new(|| fair_keys(">=", false));
static FAIR_KEYS_AFTER: LazyLock<String> = LazyLock::new(|| fair_keys(">", false));
static FAIR_KEYS_UPTO: LazyLock<String> = LazyLock::new(|| fair_keys(">=", true));
static FAIR_KEYS_AFTER_UPTO: LazyLock<String> = LazyLock::new(|| fair_keys(">", true));
