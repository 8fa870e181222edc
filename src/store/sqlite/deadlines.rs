//! Start deadlines on SQLite: jobs not started whose `start_before`
//! passed, found through their partial index and ended FAILED (their
//! children moved with them, by `save`). Found on a read connection
//! first, so the writer is asked only when one is due.

use super::*;

impl SqliteStore {
    pub(super) async fn expire_due(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<crate::store::deps::Moved>, StoreError> {
        // Looked for on a read connection first: the sweeper asks twice a
        // second, and the writer is only asked when something is due.
        let any: bool = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_start_before \
                     WHERE start_before IS NOT NULL AND state IN (0, 2, 6) AND start_before <= ?1)",
                )?
                .query_row([now], |r| r.get(0))
            })
            .await?;
        if !any {
            return Ok(Vec::new());
        }
        self.write(move |tx, st| {
            let due = ids(
                tx,
                "SELECT id FROM jobs INDEXED BY jobs_start_before WHERE start_before IS NOT NULL \
                 AND state IN (0, 2, 6) AND start_before <= ?1 ORDER BY start_before LIMIT ?2",
                (now, limit as i64),
            )?;
            let mut out = Vec::with_capacity(due.len());
            for id in due {
                let Some(mut job) = load(tx, id)? else {
                    continue;
                };
                let (prev, attempt) = (job.state, job.attempt);
                transition::expire(&mut job, now);
                save(tx, st, &job, prev, attempt)?;
                out.push(crate::store::deps::Moved { prev, job });
            }
            Ok(out)
        })
        .await
    }
}
