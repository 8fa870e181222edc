//! CreateSchedule / UpdateSchedule: the request's definition becomes a
//! `[[schedules]]` entry and is checked by the config's own code
//! ([`ScheduleConfig::check`]), so the API accepts exactly what the config
//! accepts; errors name the field as `schedule.{field}`.

use crate::api::error::ApiError;
use crate::config::{ConfigError, Overlap, Schedule, ScheduleConfig};
use crate::proto;

/// Checks `def`; `payload_bound(kind)` is a configured kind's payload
/// bound (`None`: not configured).
pub(super) fn schedule(
    def: Option<proto::ScheduleDefinition>,
    payload_bound: &dyn Fn(&str) -> Option<usize>,
) -> Result<Schedule, ApiError> {
    let Some(d) = def else {
        return Err(ApiError::invalid("schedule", "required"));
    };
    if d.id.is_empty() {
        return Err(ApiError::invalid("schedule.id", "required"));
    }
    let overlap = match proto::ScheduleOverlap::try_from(d.overlap) {
        Ok(proto::ScheduleOverlap::Unspecified | proto::ScheduleOverlap::Allow) => Overlap::Allow,
        Ok(proto::ScheduleOverlap::Skip) => Overlap::Skip,
        Err(_) => {
            return Err(ApiError::invalid(
                "schedule.overlap",
                format!("{} is not ALLOW or SKIP", d.overlap),
            ))
        }
    };
    let catchup = match d.catchup {
        None => None,
        Some(c) => Some(super::validate::duration(&c).ok_or_else(|| {
            ApiError::invalid("schedule.catchup", "must be a valid, non-negative duration")
        })?),
    };
    let config = ScheduleConfig {
        id: d.id,
        kind: d.kind,
        cron: d.cron,
        timezone: Some(d.timezone).filter(|z| !z.is_empty()),
        payload: d.payload,
        labels: d.labels.into_iter().collect(),
        overlap,
        catchup,
    };
    config
        .check("schedule", payload_bound)
        .map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => ApiError::invalid(key, message),
            other => ApiError::invalid("schedule", other.to_string()),
        })
}

/// A schedule's overlap as ListSchedules shows it.
pub(super) fn overlap_to_proto(o: Overlap) -> proto::ScheduleOverlap {
    match o {
        Overlap::Allow => proto::ScheduleOverlap::Allow,
        Overlap::Skip => proto::ScheduleOverlap::Skip,
    }
}
