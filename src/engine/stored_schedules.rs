//! Schedules created through the API (CreateSchedule, UpdateSchedule,
//! DeleteSchedule): their definitions live in the store, so they survive a
//! restart and every instance of a shared store runs them (the scheduler
//! re-reads them each round; a fire is still taken once, by the same
//! compare-and-set and idempotency key as a config schedule's). Config
//! schedules are read-only here.

use super::scheduler::{ScheduleStatus, NEVER};
use super::{Engine, EngineError};
use crate::config::{Schedule, ScheduleConfig, MAX_SCHEDULES};
use crate::job::now_micros;
use crate::store::{CreateSchedule, ScheduleRow};

impl Engine {
    /// The payload bound of a configured kind; `None` when it is not
    /// configured (what [`ScheduleConfig::check`] asks).
    pub fn schedule_payload_bound(&self, kind: &str) -> Option<usize> {
        self.kind(kind).map(|k| k.max_payload_bytes)
    }

    /// A stored definition, checked as CreateSchedule checked it.
    pub(super) fn decode_schedule(&self, text: &str) -> Result<Schedule, String> {
        let def: ScheduleConfig =
            serde_json::from_str(text).map_err(|e| format!("stored definition: {e}"))?;
        def.check("schedule", &|k| self.schedule_payload_bound(k))
            .map_err(|e| e.to_string())
    }

    pub(super) fn is_config_schedule(&self, id: &str) -> bool {
        self.settings.schedules.iter().any(|s| s.id == id)
    }

    /// The stored row of schedule `id` that holds a definition (a config
    /// schedule's row holds none).
    pub(super) async fn stored_row(&self, id: &str) -> Result<Option<ScheduleRow>, EngineError> {
        let rows = self.store.schedules().await?;
        Ok(rows
            .into_iter()
            .find(|r| r.id == id && r.definition.is_some()))
    }

    /// CreateSchedule: stores `s` (already checked), first fire after now.
    pub async fn create_schedule(&self, s: Schedule) -> Result<ScheduleStatus, EngineError> {
        if self.is_config_schedule(&s.id) {
            return Err(EngineError::ScheduleExists(s.id));
        }
        let next = s.next_after(now_micros()).unwrap_or(NEVER);
        let max = MAX_SCHEDULES.saturating_sub(self.settings.schedules.len());
        let text = encode(&s)?;
        match self.store.create_schedule(&s.id, &text, next, max).await? {
            CreateSchedule::Created => {}
            CreateSchedule::Exists => return Err(EngineError::ScheduleExists(s.id)),
            CreateSchedule::Full => {
                return Err(EngineError::TooManySchedules { max: MAX_SCHEDULES })
            }
        }
        tracing::info!(schedule = s.id, cron = s.cron_text, "schedule created");
        self.stored_status(&s.id).await
    }

    /// UpdateSchedule: replaces the stored definition of `s.id`; a new
    /// cron expression or zone starts from the next fire after now, else
    /// the stored next fire stays (so an update never repeats or skips one).
    pub async fn update_schedule(&self, s: Schedule) -> Result<ScheduleStatus, EngineError> {
        if self.is_config_schedule(&s.id) {
            return Err(EngineError::ScheduleInConfig(s.id));
        }
        let row = self.stored_row(&s.id).await?;
        let Some(old) = row.as_ref().and_then(|r| r.definition.as_deref()) else {
            return Err(EngineError::UnknownSchedule(s.id));
        };
        let same_times = self
            .decode_schedule(old)
            .is_ok_and(|o| o.cron_text == s.cron_text && o.timezone == s.timezone);
        let next = (!same_times).then(|| s.next_after(now_micros()).unwrap_or(NEVER));
        let text = encode(&s)?;
        if !self.store.update_schedule(&s.id, &text, next).await? {
            return Err(EngineError::UnknownSchedule(s.id));
        }
        tracing::info!(schedule = s.id, cron = s.cron_text, "schedule updated");
        self.stored_status(&s.id).await
    }

    /// DeleteSchedule: removes a stored schedule; no fire after this.
    pub async fn delete_schedule(&self, id: &str) -> Result<(), EngineError> {
        if self.is_config_schedule(id) {
            return Err(EngineError::ScheduleInConfig(id.to_string()));
        }
        if !self.store.delete_schedule(id).await? {
            return Err(EngineError::UnknownSchedule(id.to_string()));
        }
        tracing::info!(schedule = id, "schedule deleted");
        Ok(())
    }

    /// A stored schedule's status (its row alone is decoded).
    async fn stored_status(&self, id: &str) -> Result<ScheduleStatus, EngineError> {
        let row = self
            .stored_row(id)
            .await?
            .ok_or_else(|| EngineError::UnknownSchedule(id.to_string()))?;
        let schedule = self
            .decode_schedule(row.definition.as_deref().unwrap_or_default())
            .map_err(|why| EngineError::ScheduleUnusable(id.to_string(), why))?;
        Ok(ScheduleStatus::of(
            schedule,
            Some(&row),
            false,
            now_micros(),
        ))
    }
}

/// The stored form of a checked schedule: its definition as JSON.
fn encode(s: &Schedule) -> Result<String, EngineError> {
    serde_json::to_string(&s.to_config())
        .map_err(|e| EngineError::Store(crate::store::StoreError::Internal(e.to_string().into())))
}
