//! Long-running jobs on SQLite: a job's progress, its log lines (pruned to
//! the newest), and a lease pushed by a worker's Touch.

use super::*;

impl SqliteStore {
    pub(super) async fn put_progress(
        &self,
        id: Uuid,
        attempt: u32,
        progress: crate::job::Progress,
    ) -> Result<Option<Job>, StoreError> {
        self.write(move |tx, _| {
            let Some(mut job) = load(tx, id)? else {
                return Ok(None);
            };
            if job.state != JobState::Running || job.attempt != attempt {
                return Ok(None);
            }
            job.updated_at = job.updated_at.max(progress.updated_at);
            job.sequence += 1;
            tx.prepare_cached(
                "UPDATE jobs SET progress = ?2, sequence = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND state = ?5 AND attempt = ?6",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id.as_bytes().as_slice(),
                    codec::encode_progress(&progress),
                    job.sequence as i64,
                    job.updated_at,
                    state_code(JobState::Running),
                    attempt,
                ])
            })
            .map_err(map_err)?;
            job.progress = Some(progress);
            Ok(Some(job))
        })
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
        self.write(move |tx, _| {
            let running: Option<(i64, u32)> = tx
                .prepare_cached("SELECT state, attempt FROM jobs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(map_err)?;
            if running != Some((state_code(JobState::Running), attempt)) {
                return Ok(false);
            }
            let last: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM job_logs WHERE job_id = ?1")
                .and_then(|mut s| s.query_row([id.as_bytes().as_slice()], |r| r.get(0)))
                .map_err(map_err)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO job_logs (job_id, seq, attempt, at, line) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(map_err)?;
            let mut seq = last;
            for line in &lines {
                seq += 1;
                insert
                    .execute(params![id.as_bytes().as_slice(), seq, attempt, at, line])
                    .map_err(map_err)?;
            }
            tx.prepare_cached("DELETE FROM job_logs WHERE job_id = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![id.as_bytes().as_slice(), seq - keep as i64]))
                .map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn put_checkpoint(
        &self,
        id: Uuid,
        attempt: u32,
        checkpoint: Bytes,
    ) -> Result<bool, StoreError> {
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE jobs SET checkpoint = ?2 WHERE id = ?1 AND state = ?3 AND attempt = ?4",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id.as_bytes().as_slice(),
                        (!checkpoint.is_empty()).then_some(checkpoint.as_ref()),
                        state_code(JobState::Running),
                        attempt
                    ])
                })
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn push_lease(
        &self,
        id: Uuid,
        attempt: u32,
        until: Micros,
    ) -> Result<bool, StoreError> {
        self.write_with(true, move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = MAX(lease_expires_at, ?2) \
                     WHERE id = ?1 AND state = ?3 AND attempt = ?4",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id.as_bytes().as_slice(),
                        until,
                        state_code(JobState::Running),
                        attempt
                    ])
                })
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn read_logs(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::job::LogLine>, StoreError> {
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT seq, attempt, at, line FROM job_logs WHERE job_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = s.query_map(
                params![id.as_bytes().as_slice(), after as i64, limit as i64],
                |r| {
                    Ok(crate::job::LogLine {
                        seq: r.get::<_, i64>(0)? as u64,
                        attempt: r.get(1)?,
                        at: r.get(2)?,
                        text: r.get(3)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }
}
