//! Deduplication modes on PostgreSQL (rules in `store::dedup`). The holder
//! of a (kind, dedup key) is found and locked `FOR UPDATE` in the submit's
//! transaction; the partial unique index `jobs_dedup` makes two holders
//! impossible, so two instances racing one key end with one job: the
//! loser's INSERT waits for the winner's commit, skips its row, and the
//! submit runs again to merge into the winner (see `insert`).

use std::sync::LazyLock;

use super::{sql, Tx, Writer};
use crate::job::{Job, JobState, NewJob};
use crate::store::StoreError;

/// The job holding `$2` among kind `$1`'s jobs, locked. A claim taking it
/// meanwhile makes the re-check after the lock find nothing: a new job.
static HOLDER: LazyLock<String> = LazyLock::new(|| {
    sql::select_cols(
        "WHERE kind = $1 AND dedup_key = $2 AND dedup_key IS NOT NULL AND attempt = 0 \
         AND state IN (0, 6) FOR UPDATE",
    )
});

/// Every holder of the (kind `$1[i]`, key `$2[i]`) pairs, locked in key
/// order.
const LOCK_HOLDERS: &str = "SELECT id FROM jobs \
     WHERE (kind, dedup_key) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
       AND dedup_key IS NOT NULL AND attempt = 0 AND state IN (0, 6) \
     ORDER BY kind, dedup_key FOR UPDATE";

/// Locks the holders of every dedup key of a batch at once, in key order:
/// two batches naming the same keys in different orders then wait for each
/// other instead of deadlocking on their entry-by-entry [`holder`] locks.
pub(super) async fn lock_holders(tx: &Tx<'_>, jobs: &[NewJob]) -> Result<(), StoreError> {
    let (kinds, keys): (Vec<&str>, Vec<&str>) = jobs
        .iter()
        .filter_map(|j| Some((j.kind.as_str(), j.dedup.as_ref()?.key.as_str())))
        .unzip();
    if kinds.len() > 1 {
        let st = tx.prepare_cached(LOCK_HOLDERS).await?;
        tx.query(&st, &[&kinds, &keys]).await?;
    }
    Ok(())
}

const PAYLOAD: &str = "UPDATE jobs SET payload = $2, labels = $3 WHERE id = $1";

/// The not-started job of `kind` holding `key`, locked until the commit.
pub(super) async fn holder(tx: &Tx<'_>, kind: &str, key: &str) -> Result<Option<Job>, StoreError> {
    Ok(sql::select(tx, &HOLDER, &[&kind, &key]).await?.pop())
}

/// Writes merged jobs (REPLACE, DEBOUNCE): their event and time through
/// [`sql::save`] (watchers on every instance see the new sequence), then
/// the new payload and labels.
pub(super) async fn write(w: &Writer, tx: &Tx<'_>, merged: &[Job]) -> Result<(), StoreError> {
    if merged.is_empty() {
        return Ok(());
    }
    let old: Vec<(JobState, u32)> = merged.iter().map(|j| (j.state, j.attempt)).collect();
    sql::save(w, tx, merged, &old).await?;
    let st = tx.prepare_cached(PAYLOAD).await?;
    for j in merged {
        let labels = crate::store::codec::encode_labels(&j.labels);
        tx.execute(&st, &[&j.id, &j.payload.as_ref(), &labels])
            .await?;
    }
    Ok(())
}
