//! Schedule rows on PostgreSQL, shared by every instance: config
//! schedules' stored state (next fire, pause, last job) and the definitions
//! of schedules created through the API (`definition`, migration v14),
//! which every instance's scheduler reads each round.

use uuid::Uuid;

use super::{pooled, rows, PostgresStore};
use crate::job::Micros;
use crate::store::{CreateSchedule, ScheduleRow, StoreError};

const INIT: &str = "INSERT INTO schedules (id, next_fire_at) VALUES ($1, $2) \
     ON CONFLICT (id) DO NOTHING";
const ROWS: &str =
    "SELECT id, next_fire_at, paused, last_job_id, definition FROM schedules ORDER BY id";
const ADVANCE: &str = "UPDATE schedules SET next_fire_at = $3 WHERE id = $1 AND next_fire_at = $2";
const LAST_JOB: &str = "UPDATE schedules SET last_job_id = $2 WHERE id = $1";
const PAUSE: &str = "UPDATE schedules SET paused = $2 WHERE id = $1";
/// Creates are rare: the table lock makes the count and the insert of
/// two instances' creates one after the other (fires' updates wait a
/// moment), so the bound holds across instances.
const LOCK: &str = "LOCK TABLE schedules IN SHARE ROW EXCLUSIVE MODE";
const EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM schedules WHERE id = $1 AND definition IS NOT NULL)";
const COUNT: &str = "SELECT count(*) FROM schedules WHERE definition IS NOT NULL";
const CREATE: &str = "INSERT INTO schedules (id, next_fire_at, paused, last_job_id, definition) \
     VALUES ($1, $2, FALSE, NULL, $3) ON CONFLICT (id) DO UPDATE SET \
     next_fire_at = $2, paused = FALSE, last_job_id = NULL, definition = $3";
const UPDATE: &str = "UPDATE schedules SET definition = $2, \
     next_fire_at = coalesce($3, next_fire_at) WHERE id = $1 AND definition IS NOT NULL";
const DELETE: &str = "DELETE FROM schedules WHERE id = $1 AND definition IS NOT NULL";

impl PostgresStore {
    pub(super) async fn schedule_init(&self, id: &str, next: Micros) -> Result<(), StoreError> {
        self.with_statement(INIT, async |c, st| {
            c.execute(st, &[&id, &next]).await?;
            Ok(())
        })
        .await
    }

    pub(super) async fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.with_statement(ROWS, async |c, st| {
            let mut out = Vec::new();
            for r in c.query(st, &[]).await? {
                out.push(ScheduleRow {
                    id: rows::col(&r, 0)?,
                    next_fire_at: rows::col(&r, 1)?,
                    paused: rows::col(&r, 2)?,
                    last_job_id: rows::col(&r, 3)?,
                    definition: rows::col(&r, 4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn schedule_advance(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        self.with_statement(ADVANCE, async |c, st| {
            Ok(c.execute(st, &[&id, &old, &new]).await? == 1)
        })
        .await
    }

    pub(super) async fn schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        self.with_statement(LAST_JOB, async |c, st| {
            c.execute(st, &[&id, &job]).await?;
            Ok(())
        })
        .await
    }

    pub(super) async fn schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        self.with_statement(PAUSE, async |c, st| {
            Ok(c.execute(st, &[&id, &paused]).await? == 1)
        })
        .await
    }

    pub(super) async fn schedule_create(
        &self,
        id: &str,
        definition: &str,
        next: Micros,
        max: usize,
    ) -> Result<CreateSchedule, StoreError> {
        self.run(async {
            let mut c = pooled(&self.pool).await?;
            let tx = c.transaction().await?;
            tx.batch_execute(LOCK).await?;
            let exists: bool = rows::col(&tx.query_one(EXISTS, &[&id]).await?, 0)?;
            if exists {
                return Ok(CreateSchedule::Exists);
            }
            let stored: i64 = rows::col(&tx.query_one(COUNT, &[]).await?, 0)?;
            if stored as usize >= max {
                return Ok(CreateSchedule::Full);
            }
            tx.execute(CREATE, &[&id, &next, &definition]).await?;
            tx.commit().await?;
            Ok(CreateSchedule::Created)
        })
        .await
    }

    pub(super) async fn schedule_update(
        &self,
        id: &str,
        definition: &str,
        next: Option<Micros>,
    ) -> Result<bool, StoreError> {
        self.with_statement(UPDATE, async |c, st| {
            Ok(c.execute(st, &[&id, &definition, &next]).await? == 1)
        })
        .await
    }

    pub(super) async fn schedule_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.with_statement(DELETE, async |c, st| Ok(c.execute(st, &[&id]).await? == 1))
            .await
    }
}
