//! Schedule rows on SQLite: config schedules' stored state (next fire,
//! pause, last job) and the definitions of schedules created through the
//! API (`definition`, migration 15).

use super::*;
use crate::store::CreateSchedule;

impl SqliteStore {
    pub(super) async fn schedule_init(&self, id: &str, next: Micros) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO schedules (id, next_fire_at) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id, next]))
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    pub(super) async fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id, next_fire_at, paused, last_job_id, definition \
                 FROM schedules ORDER BY id",
            )?;
            let rows = s.query_map([], |r| {
                let last: Option<String> = r.get(3)?;
                Ok(ScheduleRow {
                    id: r.get(0)?,
                    next_fire_at: r.get(1)?,
                    paused: r.get::<_, i64>(2)? != 0,
                    last_job_id: last.and_then(|s| Uuid::try_parse(&s).ok()),
                    definition: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Runs one UPDATE or DELETE of a schedule row; true when it changed
    /// exactly one.
    async fn schedule_change(
        &self,
        sql: &'static str,
        args: Vec<rusqlite::types::Value>,
    ) -> Result<bool, StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(args)))
                .map(|n| n == 1)
                .map_err(map_err)
        })
        .await
    }

    pub(super) async fn schedule_advance(
        &self,
        id: &str,
        old: Micros,
        new: Micros,
    ) -> Result<bool, StoreError> {
        self.schedule_change(
            "UPDATE schedules SET next_fire_at = ?3 WHERE id = ?1 AND next_fire_at = ?2",
            vec![id.to_string().into(), old.into(), new.into()],
        )
        .await
    }

    pub(super) async fn schedule_last_job(&self, id: &str, job: Uuid) -> Result<(), StoreError> {
        self.schedule_change(
            "UPDATE schedules SET last_job_id = ?2 WHERE id = ?1",
            vec![id.to_string().into(), job.to_string().into()],
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn schedule_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        self.schedule_change(
            "UPDATE schedules SET paused = ?2 WHERE id = ?1",
            vec![id.to_string().into(), (paused as i64).into()],
        )
        .await
    }

    pub(super) async fn schedule_create(
        &self,
        id: &str,
        definition: &str,
        next: Micros,
        max: usize,
    ) -> Result<CreateSchedule, StoreError> {
        let (id, definition) = (id.to_string(), definition.to_string());
        // One writer: the count and the insert are one commit.
        self.write(move |tx, _| {
            let exists: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM schedules \
                     WHERE id = ?1 AND definition IS NOT NULL)",
                )
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                .map_err(map_err)?;
            if exists {
                return Ok(CreateSchedule::Exists);
            }
            let stored: i64 = tx
                .prepare_cached("SELECT count(*) FROM schedules WHERE definition IS NOT NULL")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(map_err)?;
            if stored as usize >= max {
                return Ok(CreateSchedule::Full);
            }
            tx.prepare_cached(
                "INSERT INTO schedules (id, next_fire_at, paused, last_job_id, definition) \
                 VALUES (?1, ?2, 0, NULL, ?3) ON CONFLICT (id) DO UPDATE SET \
                 next_fire_at = ?2, paused = 0, last_job_id = NULL, definition = ?3",
            )
            .and_then(|mut s| s.execute(params![id, next, definition]))
            .map_err(map_err)?;
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
        self.schedule_change(
            "UPDATE schedules SET definition = ?2, next_fire_at = coalesce(?3, next_fire_at) \
             WHERE id = ?1 AND definition IS NOT NULL",
            vec![
                id.to_string().into(),
                definition.to_string().into(),
                next.into(),
            ],
        )
        .await
    }

    pub(super) async fn schedule_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.schedule_change(
            "DELETE FROM schedules WHERE id = ?1 AND definition IS NOT NULL",
            vec![id.to_string().into()],
        )
        .await
    }
}
