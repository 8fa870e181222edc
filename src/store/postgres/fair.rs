//! A round_robin kind's claim on PostgreSQL (see `store::fairness`). The
//! kind's `kind_fair` row, locked first, holds its cursor and serializes
//! the kind's claims across instances; the keys after the cursor come from
//! a skip scan of `jobs_fair` (a recursive query, one index probe per key),
//! their buckets from `key_rates` (only touched under that lock), and their
//! heads from one lateral query.

use std::sync::LazyLock;

use super::{rows, sql, Tx};
use crate::job::{Job, Micros};
use crate::store::fairness::{FairClaim, Settled, MAX_KEY_BUCKETS};
use crate::store::limits::{Bucket, KindBudget, RateLimit};
use crate::store::StoreError;

/// A kind's cursor row, made on first use, then locked.
const CURSOR_INIT: &str = "INSERT INTO kind_fair (kind) VALUES ($1) ON CONFLICT (kind) DO NOTHING";
const CURSOR_LOCK: &str = "SELECT last_key FROM kind_fair WHERE kind = $1 FOR UPDATE";
const CURSOR_SAVE: &str = "UPDATE kind_fair SET last_key = $2 WHERE kind = $1";

/// Locks the kind's cursor row (every instance's claim of the kind waits
/// here) and answers the key served last.
pub(super) async fn lock(tx: &Tx<'_>, kind: &str) -> Result<Option<String>, StoreError> {
    let init = tx.prepare_cached(CURSOR_INIT).await?;
    tx.execute(&init, &[&kind]).await?;
    let lock = tx.prepare_cached(CURSOR_LOCK).await?;
    let row = tx.query_one(&lock, &[&kind]).await?;
    rows::col(&row, 0)
}

/// Up to `$3` distinct keys of kind `$1` with due jobs, in key order, from
/// `$2` (`start`: `>` or `>=`), at most `$4` when bounded.
fn fair_keys(start: &str, bounded: bool) -> String {
    let upto = if bounded {
        "AND fairness_key <= $4"
    } else {
        ""
    };
    let next = |cmp: &str| {
        format!(
            "SELECT fairness_key FROM jobs WHERE state = 0 AND next_attempt_at IS NULL \
             AND kind = $1 AND fairness_key {cmp} {upto} ORDER BY fairness_key LIMIT 1"
        )
    };
    format!(
        "WITH RECURSIVE k(key) AS (SELECT ({}) UNION ALL \
           SELECT ({}) FROM k WHERE k.key IS NOT NULL) \
         SELECT key FROM k WHERE key IS NOT NULL LIMIT $3",
        next(&format!("{start} $2")),
        next("> k.key")
    )
}

static KEYS_FROM: LazyLock<String> = LazyLock::new(|| fair_keys(">=", false));
static KEYS_AFTER: LazyLock<String> = LazyLock::new(|| fair_keys(">", false));
static KEYS_UPTO: LazyLock<String> = LazyLock::new(|| fair_keys(">=", true));
static KEYS_AFTER_UPTO: LazyLock<String> = LazyLock::new(|| fair_keys(">", true));

/// Stored buckets of keys `$2` of kind `$1`.
const BUCKETS: &str =
    "SELECT key, tokens, updated_at FROM key_rates WHERE kind = $1 AND key = ANY($2)";

/// Each key's heads (`$2` keys, `$3` rows of each), with `seq` and the
/// key's place (1-based) last.
static HEADS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, j.seq, k.i FROM unnest($2::text[], $3::int8[]) WITH ORDINALITY AS k(key, n, i) \
         CROSS JOIN LATERAL (SELECT {}, seq FROM jobs \
           WHERE state = 0 AND next_attempt_at IS NULL AND kind = $1 AND fairness_key = k.key \
           ORDER BY priority DESC, seq LIMIT k.n FOR UPDATE SKIP LOCKED) j \
         ORDER BY k.i, j.priority DESC, j.seq",
        sql::prefixed("j"),
        crate::store::codec::COLS
    )
});

/// A due job of a round_robin kind: its key's index, the job, its seq.
pub(super) type Head = (usize, Job, i64);

/// The kind's due jobs, key by key from the one after `cursor`.
pub(super) async fn read(
    tx: &Tx<'_>,
    kind: &str,
    b: &KindBudget,
    cursor: Option<&str>,
    now: Micros,
) -> Result<(FairClaim, Vec<Head>), StoreError> {
    let mut plan = FairClaim::new(b.to_read(), b.limits.key_rate, now);
    offer_keys(tx, kind, cursor, &mut plan).await?;
    let mut heads = read_heads(tx, kind, &plan, |i| plan.first_read(i)).await?;
    if plan.short(&heads) {
        heads = read_heads(tx, kind, &plan, |i| plan.second_read(i)).await?;
    }
    let heads = plan
        .interleave(heads)
        .into_iter()
        .map(|(i, (job, seq))| (i, job, seq))
        .collect();
    Ok((plan, heads))
}

/// Offers the plan the keys after the cursor, then those up to it.
async fn offer_keys(
    tx: &Tx<'_>,
    kind: &str,
    cursor: Option<&str>,
    plan: &mut FairClaim,
) -> Result<(), StoreError> {
    let passes: Vec<(&str, &str, &str, Option<&str>)> = match cursor {
        Some(c) => vec![
            (&KEYS_AFTER, &KEYS_AFTER, c, None),
            (&KEYS_UPTO, &KEYS_AFTER_UPTO, "", Some(c)),
        ],
        None => vec![(&KEYS_FROM, &KEYS_AFTER, "", None)],
    };
    for (first, next, from, upto) in passes {
        let mut from = from.to_string();
        let mut sql = first;
        while plan.wants_keys() {
            let n = plan.keys_to_read() as i64;
            let st = tx.prepare_cached(sql).await?;
            let found = match upto {
                Some(u) => tx.query(&st, &[&kind, &from, &n, &u]).await?,
                None => tx.query(&st, &[&kind, &from, &n]).await?,
            };
            let keys: Vec<String> = found
                .iter()
                .map(|r| rows::col(r, 0))
                .collect::<Result<_, _>>()?;
            let more = keys.len() as i64 == n;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            let buckets = match plan.key_rate() {
                Some(_) => buckets(tx, kind, &keys).await?,
                None => Default::default(),
            };
            for k in keys {
                let bucket = buckets.get(&k).copied();
                if !plan.offer(k, bucket) {
                    return Ok(());
                }
            }
            if !more {
                break;
            }
            from = last;
            sql = next;
        }
    }
    Ok(())
}

async fn buckets(
    tx: &Tx<'_>,
    kind: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Bucket>, StoreError> {
    let st = tx.prepare_cached(BUCKETS).await?;
    tx.query(&st, &[&kind, &keys])
        .await?
        .iter()
        .map(|r| {
            Ok((
                rows::col(r, 0)?,
                Bucket {
                    tokens: rows::col(r, 1)?,
                    at: rows::col(r, 2)?,
                },
            ))
        })
        .collect()
}

async fn read_heads(
    tx: &Tx<'_>,
    kind: &str,
    plan: &FairClaim,
    n: impl Fn(usize) -> usize,
) -> Result<Vec<Vec<(Job, i64)>>, StoreError> {
    let keys: Vec<&str> = plan.keys().collect();
    let counts: Vec<i64> = (0..keys.len()).map(|i| n(i) as i64).collect();
    let mut heads: Vec<Vec<(Job, i64)>> = vec![Vec::new(); keys.len()];
    if keys.is_empty() {
        return Ok(heads);
    }
    let st = tx.prepare_cached(&HEADS).await?;
    for r in tx.query(&st, &[&kind, &keys, &counts]).await? {
        let seq: i64 = rows::col(&r, rows::COLS_LEN)?;
        let i: i64 = rows::col(&r, rows::COLS_LEN + 1)?;
        if let Some(h) = heads.get_mut((i - 1).max(0) as usize) {
            h.push((rows::job(&r)?, seq));
        }
    }
    Ok(heads)
}

/// Saves what the claim settled: the cursor, the buckets of the keys it
/// served, and (every `PRUNE_EVERY` per instance) drops refilled buckets
/// and any past [`MAX_KEY_BUCKETS`].
pub(super) async fn save(
    tx: &Tx<'_>,
    kind: &str,
    rate: Option<RateLimit>,
    s: &Settled,
    prune: bool,
    now: Micros,
) -> Result<(), StoreError> {
    if let Some(c) = &s.cursor {
        let st = tx.prepare_cached(CURSOR_SAVE).await?;
        tx.execute(&st, &[&kind, c]).await?;
    }
    let Some(rate) = rate else { return Ok(()) };
    if !s.buckets.is_empty() {
        let keys: Vec<&str> = s.buckets.iter().map(|(k, _)| k.as_str()).collect();
        let tokens: Vec<f64> = s.buckets.iter().map(|(_, b)| b.tokens).collect();
        let at: Vec<i64> = s.buckets.iter().map(|(_, b)| b.at).collect();
        let st = tx.prepare_cached(BUCKETS_SAVE).await?;
        tx.execute(&st, &[&kind, &keys, &tokens, &at]).await?;
    }
    if prune {
        let st = tx.prepare_cached(BUCKETS_PRUNE).await?;
        let burst = f64::from(rate.burst);
        let cap = MAX_KEY_BUCKETS as i64;
        tx.execute(&st, &[&kind, &now, &rate.per_second, &burst, &cap])
            .await?;
    }
    Ok(())
}

const BUCKETS_SAVE: &str = "INSERT INTO key_rates (kind, key, tokens, updated_at) \
     SELECT $1, k, t, a FROM unnest($2::text[], $3::float8[], $4::int8[]) AS x(k, t, a) \
     ON CONFLICT (kind, key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at";

/// Drops kind `$1`'s buckets that have refilled by `$2` (rate `$3`/s,
/// burst `$4`), and past the `$5` fullest-last, the fullest.
const BUCKETS_PRUNE: &str = "DELETE FROM key_rates WHERE kind = $1 AND key IN ( \
       (SELECT key FROM key_rates WHERE kind = $1 \
        ORDER BY tokens + ($2::int8 - updated_at)::float8 / 1e6 * $3::float8 ASC OFFSET $5) \
     UNION ALL \
       (SELECT key FROM key_rates WHERE kind = $1 \
        AND tokens + ($2::int8 - updated_at)::float8 / 1e6 * $3::float8 >= $4::float8))";
