//! Cron schedules: `[[schedules]]` as written (`ScheduleConfig`) and as the
//! scheduler runs them (`Schedule`, the cron expression parsed and the time
//! zone looked up), so a bad expression fails at start, naming its key.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};

use super::{invalid, invalid_because, opt_duration, Config, ConfigError};
use crate::job::Micros;

/// At most this many schedules: each is a row and a timer.
pub const MAX_SCHEDULES: usize = 1000;
/// Same label bounds as a Submit (`api::validate`), so a fire is never a
/// job a client could not have submitted.
const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY_BYTES: usize = 63;
const MAX_LABEL_VALUE_BYTES: usize = 256;
/// `catchup` at most a week: older fires are history, not work.
pub(crate) const MAX_CATCHUP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a fire does while the previous job of its schedule is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Allow,
    Skip,
}

/// One `[[schedules]]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub id: String,
    pub kind: String,
    /// 5 fields (minute first), or 6 with seconds first.
    pub cron: String,
    /// IANA zone the expression is read in; default UTC.
    pub timezone: Option<String>,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub overlap: Overlap,
    /// How late a missed fire may still run (after downtime); default 0.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "super::ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub catchup: Option<Duration>,
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: String,
    pub kind: String,
    /// The expression as written (ListSchedules shows it).
    pub cron_text: String,
    cron: Cron,
    pub timezone: chrono_tz::Tz,
    pub payload: String,
    pub labels: BTreeMap<String, String>,
    pub overlap: Overlap,
    pub catchup: Duration,
}

impl Schedule {
    /// The first fire strictly after `after` (µs since the epoch, UTC), read
    /// in the schedule's zone: a local time skipped by a DST change fires
    /// once when the gap ends (croner's rule), so a
    /// daily job is neither lost nor doubled. `None` when the
    /// expression never matches again (or the time is out of range).
    pub fn next_after(&self, after: Micros) -> Option<Micros> {
        let t = DateTime::<Utc>::from_timestamp_micros(after)?.with_timezone(&self.timezone);
        let next = self.cron.find_next_occurrence(&t, false).ok()?;
        Some(next.with_timezone(&Utc).timestamp_micros())
    }
}

/// Formats a fire time as the idempotency keys spell it: RFC 3339, UTC.
pub fn rfc3339(t: Micros) -> String {
    match Utc.timestamp_micros(t).single() {
        Some(d) => d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => t.to_string(),
    }
}

/// Why a cron expression cannot be used; each quotes it.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    #[error(
        "{text:?}: 5 fields (minute hour day month weekday) or 6 (seconds first), not {fields}"
    )]
    Fields { text: String, fields: usize },
    #[error("{text:?}: {source}")]
    Parse {
        text: String,
        source: croner::errors::CronError,
    },
}

/// Parses a cron expression of 5 or 6 fields.
pub fn parse_cron(text: &str) -> Result<Cron, CronError> {
    let fields = text.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(CronError::Fields {
            text: text.to_string(),
            fields,
        });
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|source| CronError::Parse {
            text: text.to_string(),
            source,
        })
}

/// Checks every schedule against the kinds.
pub(super) fn resolve(config: &Config) -> Result<Vec<Schedule>, ConfigError> {
    if config.schedules.len() > MAX_SCHEDULES {
        return Err(invalid("schedules", format!("at most {MAX_SCHEDULES}")));
    }
    let max_payload = |kind: &str| {
        config.kinds.get(kind).map(|k| {
            k.max_payload_bytes
                .unwrap_or(config.queue.max_payload_bytes)
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(config.schedules.len());
    for (i, s) in config.schedules.iter().enumerate() {
        let prefix = format!("schedules[{i}]");
        let checked = s.check(&prefix, &max_payload)?;
        if !seen.insert(s.id.as_str()) {
            return Err(invalid(
                format!("{prefix}.id"),
                format!("{:?} is used twice", s.id),
            ));
        }
        out.push(checked);
    }
    Ok(out)
}

impl ScheduleConfig {
    /// Checks one schedule, as the config and CreateSchedule /
    /// UpdateSchedule both do: errors name the key as `{prefix}.{field}`.
    /// `max_payload(kind)` is the kind's payload bound, `None` when the
    /// kind is not configured.
    pub fn check(
        &self,
        prefix: &str,
        max_payload: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Schedule, ConfigError> {
        let s = self;
        let key = |f: &str| format!("{prefix}.{f}");
        if !crate::job::is_valid_kind(&s.id) {
            return Err(invalid(
                key("id"),
                "schedule ids match [a-z0-9][a-z0-9_.-]{0,63}",
            ));
        }
        let Some(max_payload_bytes) = max_payload(&s.kind) else {
            return Err(invalid(
                key("kind"),
                format!("{:?} is not a configured kind", s.kind),
            ));
        };
        let cron = parse_cron(&s.cron).map_err(|e| invalid_because(key("cron"), e))?;
        let timezone = match &s.timezone {
            None => chrono_tz::UTC,
            Some(z) => z
                .parse::<chrono_tz::Tz>()
                .map_err(|_| invalid(key("timezone"), format!("{z:?} is not an IANA time zone")))?,
        };
        if s.payload.len() > max_payload_bytes {
            return Err(invalid(
                key("payload"),
                format!("larger than the kind's max_payload_bytes ({max_payload_bytes})"),
            ));
        }
        // One label is added: schedule = id.
        if s.labels.len() >= MAX_LABELS {
            return Err(invalid(
                key("labels"),
                format!("at most {}", MAX_LABELS - 1),
            ));
        }
        for (k, v) in &s.labels {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES {
                return Err(invalid(
                    key(&format!("labels.{k}")),
                    format!("keys 1 to {MAX_LABEL_KEY_BYTES} bytes, values at most {MAX_LABEL_VALUE_BYTES}"),
                ));
            }
        }
        let catchup = s.catchup.unwrap_or(Duration::ZERO);
        if catchup > MAX_CATCHUP {
            return Err(invalid(key("catchup"), "at most 7 days"));
        }
        Ok(Schedule {
            id: s.id.clone(),
            kind: s.kind.clone(),
            cron_text: s.cron.clone(),
            cron,
            timezone,
            payload: s.payload.clone(),
            labels: s.labels.clone(),
            overlap: s.overlap,
            catchup,
        })
    }
}

impl Schedule {
    /// The definition as written, for storing a schedule created through
    /// the API ([`ScheduleConfig::check`] gives this schedule back).
    pub fn to_config(&self) -> ScheduleConfig {
        ScheduleConfig {
            id: self.id.clone(),
            kind: self.kind.clone(),
            cron: self.cron_text.clone(),
            timezone: Some(self.timezone.name().to_string()),
            payload: self.payload.clone(),
            labels: self.labels.clone(),
            overlap: self.overlap,
            catchup: (!self.catchup.is_zero()).then_some(self.catchup),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(cron: &str, tz: &str) -> Schedule {
        let toml = format!(
            "[kinds.echo]\nhandler = \"echo\"\n[[schedules]]\nid = \"s\"\nkind = \"echo\"\ncron = \"{cron}\"\ntimezone = \"{tz}\"\n"
        );
        Config::from_toml(&toml)
            .unwrap()
            .schedules()
            .unwrap()
            .remove(0)
    }

    fn at(s: &str) -> Micros {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn next_fire_across_dst_new_york() {
        // 2026-03-08: New York skips 02:00-03:00 (EST -5 -> EDT -4).
        let s = sched("30 2 * * *", "America/New_York");
        // 02:30 does not exist on the 8th: it fires once, when the gap
        // ends (03:00 EDT), and the next day at 02:30 EDT again.
        let n = s.next_after(at("2026-03-08T06:00:00Z")).unwrap();
        assert_eq!(rfc3339(n), "2026-03-08T07:00:00Z");
        let n = s.next_after(n).unwrap();
        assert_eq!(rfc3339(n), "2026-03-09T06:30:00Z");
        // Daily 09:00 local: 14:00 UTC before the change, 13:00 UTC after.
        let s = sched("0 9 * * *", "America/New_York");
        let a = s.next_after(at("2026-03-07T00:00:00Z")).unwrap();
        assert_eq!(rfc3339(a), "2026-03-07T14:00:00Z");
        let b = s.next_after(a).unwrap();
        assert_eq!(rfc3339(b), "2026-03-08T13:00:00Z");
        // 6 fields: every second, in UTC.
        let s = sched("*/1 * * * * *", "UTC");
        let c = s.next_after(at("2026-03-08T06:00:00.5Z")).unwrap();
        assert_eq!(rfc3339(c), "2026-03-08T06:00:01Z");
    }

    /// What CreateSchedule stores (JSON of the definition) reads back as
    /// the same schedule, with and without `catchup`.
    #[test]
    fn stored_definition_round_trips() {
        let all = |k: &str| (k == "echo").then_some(1024);
        for catchup in [None, Some(Duration::from_secs(90))] {
            let c = ScheduleConfig {
                id: "s".into(),
                kind: "echo".into(),
                cron: "*/5 * * * * *".into(),
                timezone: Some("Asia/Tokyo".into()),
                payload: "p".into(),
                labels: [("a".to_string(), "b".to_string())].into(),
                overlap: Overlap::Skip,
                catchup,
            };
            let s = c.check("schedule", &all).unwrap();
            let text = serde_json::to_string(&s.to_config()).unwrap();
            let back: ScheduleConfig = serde_json::from_str(&text).unwrap();
            let b = back.check("schedule", &all).unwrap();
            assert_eq!(
                (&b.cron_text, b.timezone, &b.labels, b.overlap, b.catchup),
                (&s.cron_text, s.timezone, &s.labels, s.overlap, s.catchup),
                "{text}"
            );
        }
        let e = ScheduleConfig {
            kind: "nope".into(),
            ..serde_json::from_str(r#"{"id":"s","kind":"echo","cron":"* * * * *"}"#).unwrap()
        }
        .check("schedule", &all)
        .unwrap_err();
        assert!(e.to_string().contains("`schedule.kind`"), "{e}");
    }

    #[test]
    fn bad_cron_and_zone_name_the_key() {
        let bad_kind = |kind: &str, extra: &str| {
            let toml = format!(
                "[kinds.echo]\nhandler = \"echo\"\n[[schedules]]\nid = \"s\"\nkind = \"{kind}\"\n{extra}\n"
            );
            match Config::from_toml(&toml).unwrap().validate() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("{other:?}"),
            }
        };
        let bad = |extra: &str| bad_kind("echo", extra);
        assert_eq!(bad("cron = \"61 * * * *\""), "schedules[0].cron");
        assert_eq!(bad("cron = \"* * *\""), "schedules[0].cron");
        assert_eq!(
            bad("cron = \"* * * * *\"\ntimezone = \"Mars/Base\""),
            "schedules[0].timezone"
        );
        assert_eq!(
            bad_kind("nope", "cron = \"* * * * *\""),
            "schedules[0].kind"
        );
    }
}
