//! Long-running jobs on PostgreSQL: a job's progress (with its event, so
//! every instance's watchers see it) and its log lines.

use uuid::Uuid;

use super::{pooled, sql, PostgresStore};
use crate::job::{Job, JobState, Micros};
use crate::store::StoreError;

impl PostgresStore {
    pub(super) async fn put_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: crate::job::Progress,
    ) -> Result<Option<Job>, StoreError> {
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            let Some(mut job) = sql::select(&tx, &sql::LOCK_ONE, &[&id]).await?.pop() else {
                return Ok(None);
            };
            if job.state != JobState::Running || job.attempt != attempt {
                return Ok(None);
            }
            job.updated_at = job.updated_at.max(progress.updated_at);
            job.sequence += 1;
            // The event (job_events + NOTIFY) as any change: watchers on
            // every instance see it.
            sql::save(
                &self.w,
                &tx,
                std::slice::from_ref(&job),
                &[(JobState::Running, attempt)],
            )
            .await?;
            let encoded = crate::store::codec::encode_progress(&progress);
            tx.execute(
                "UPDATE jobs SET progress = $2 WHERE id = $1",
                &[&id, &encoded],
            )
            .await?;
            tx.commit().await?;
            job.progress = Some(progress);
            Ok(Some(job))
        })
        .await
    }

    pub(super) async fn put_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        let running = crate::store::codec::state_code(JobState::Running);
        let stored = (!checkpoint.is_empty()).then_some(checkpoint.as_ref());
        self.with_statement(
            "UPDATE jobs SET checkpoint = $2 WHERE id = $1 AND state = $3 AND attempt = $4",
            async |c, st| {
                let n = c
                    .execute(st, &[&id, &stored, &running, &(attempt as i32)])
                    .await?;
                Ok(n == 1)
            },
        )
        .await
    }

    pub(super) async fn put_logs(
        &self,
        id: Uuid,
        attempt: u32,
        lines: Vec<String>,
        at: Micros,
        keep: usize,
    ) -> Result<bool, StoreError> {
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            // Locked: appends to one job take their seqs one after another.
            let Some(job) = sql::select(&tx, &sql::LOCK_ONE, &[&id]).await?.pop() else {
                return Ok(false);
            };
            if job.state != JobState::Running || job.attempt != attempt {
                return Ok(false);
            }
            let last: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(seq), 0) FROM job_logs WHERE job_id = $1",
                    &[&id],
                )
                .await?
                .get(0);
            let seqs: Vec<i64> = (1..=lines.len() as i64).map(|i| last + i).collect();
            tx.execute(
                "INSERT INTO job_logs (job_id, seq, attempt, at, line) \
                 SELECT $1, s, $3, $4, l FROM unnest($2::int8[], $5::text[]) AS u(s, l)",
                &[&id, &seqs, &(attempt as i32), &at, &lines],
            )
            .await?;
            let newest = last + lines.len() as i64;
            tx.execute(
                "DELETE FROM job_logs WHERE job_id = $1 AND seq <= $2",
                &[&id, &(newest - keep as i64)],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn read_logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError> {
        self.with_statement(
            "SELECT seq, attempt, at, line FROM job_logs WHERE job_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
            async |c, st| {
                let rows = c
                    .query(st, &[&id, &(after as i64), &(limit as i64)])
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| crate::job::LogLine {
                        seq: r.get::<_, i64>(0) as u64,
                        attempt: r.get::<_, i32>(1) as u32,
                        at: r.get(2),
                        text: r.get(3),
                    })
                    .collect())
            },
        )
        .await
    }
}
