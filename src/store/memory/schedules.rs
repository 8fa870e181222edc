//! Schedule rows in memory: config schedules' stored state, and the
//! definitions of schedules created through the API.

use super::Inner;
use crate::job::Micros;
use crate::store::{CreateSchedule, ScheduleRow};

impl Inner {
    pub(super) fn init_schedule(&mut self, id: &str, next_fire_at: Micros) {
        self.schedules
            .entry(id.to_string())
            .or_insert_with(|| ScheduleRow {
                id: id.to_string(),
                next_fire_at,
                paused: false,
                last_job_id: None,
                definition: None,
            });
    }

    pub(super) fn set_schedule_last_job(&mut self, id: &str, job: uuid::Uuid) {
        if let Some(r) = self.schedules.get_mut(id) {
            r.last_job_id = Some(job);
        }
    }

    /// False when `id` has no row.
    pub(super) fn set_schedule_paused(&mut self, id: &str, paused: bool) -> bool {
        self.schedules
            .get_mut(id)
            .map(|r| r.paused = paused)
            .is_some()
    }

    pub(super) fn advance_schedule(&mut self, id: &str, old: Micros, new: Micros) -> bool {
        match self.schedules.get_mut(id) {
            Some(r) if r.next_fire_at == old => {
                r.next_fire_at = new;
                true
            }
            _ => false,
        }
    }

    pub(super) fn create_schedule(
        &mut self,
        id: &str,
        definition: &str,
        next_fire_at: Micros,
        max: usize,
    ) -> CreateSchedule {
        if self
            .schedules
            .get(id)
            .is_some_and(|r| r.definition.is_some())
        {
            return CreateSchedule::Exists;
        }
        let stored = self
            .schedules
            .values()
            .filter(|r| r.definition.is_some())
            .count();
        if stored >= max {
            return CreateSchedule::Full;
        }
        self.schedules.insert(
            id.to_string(),
            ScheduleRow {
                id: id.to_string(),
                next_fire_at,
                paused: false,
                last_job_id: None,
                definition: Some(definition.to_string()),
            },
        );
        CreateSchedule::Created
    }

    pub(super) fn update_schedule(
        &mut self,
        id: &str,
        definition: &str,
        next_fire_at: Option<Micros>,
    ) -> bool {
        match self.schedules.get_mut(id) {
            Some(r) if r.definition.is_some() => {
                r.definition = Some(definition.to_string());
                if let Some(t) = next_fire_at {
                    r.next_fire_at = t;
                }
                true
            }
            _ => false,
        }
    }

    pub(super) fn delete_schedule(&mut self, id: &str) -> bool {
        let stored = self
            .schedules
            .get(id)
            .is_some_and(|r| r.definition.is_some());
        stored && self.schedules.remove(id).is_some()
    }
}
