//! `jobd schedules create | update | delete`: schedules stored through the
//! API (CreateSchedule, UpdateSchedule, DeleteSchedule). `update` changes
//! only the flags given: it reads the schedule, applies them and sends the
//! whole definition back.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::connection::AdminClient;
use super::output::{print_json, print_schedules};
use super::{exit, parse_label, Common, Failure};
use crate::http::json::Named;
use crate::proto;

/// `--overlap`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    Allow,
    Skip,
}

// `jobd schedules create|update`'s flags.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The schedule id ([a-z0-9][a-z0-9_.-]{0,63}).
    pub id: String,
    /// The kind each fire submits (required by create).
    #[arg(long)]
    pub kind: Option<String>,
    /// 5 fields (minute hour day month weekday), or 6 with seconds first
    /// (required by create).
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone the expression is read in (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// The payload of each fire's job.
    #[arg(long)]
    pub payload: Option<String>,
    /// A label of each fire's job, key=value (repeatable; with update, the
    /// labels given replace all of them).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// What a fire does while the previous job is unfinished.
    #[arg(long, value_enum)]
    pub overlap: Option<OverlapArg>,
    /// How late a missed fire may still run, e.g. 10m (at most 7 days).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub catchup: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

impl ScheduleArgs {
    /// Applies the flags given to `d`.
    fn apply(self, d: &mut proto::ScheduleDefinition) {
        d.id = self.id;
        if let Some(k) = self.kind {
            d.kind = k;
        }
        if let Some(c) = self.cron {
            d.cron = c;
        }
        if let Some(z) = self.timezone {
            d.timezone = z;
        }
        if let Some(p) = self.payload {
            d.payload = p;
        }
        if !self.labels.is_empty() {
            d.labels = self.labels.into_iter().collect();
        }
        if let Some(o) = self.overlap {
            d.overlap = match o {
                OverlapArg::Allow => proto::ScheduleOverlap::Allow,
                OverlapArg::Skip => proto::ScheduleOverlap::Skip,
            } as i32;
        }
        if let Some(c) = self.catchup {
            d.catchup = prost_types::Duration::try_from(c).ok();
        }
    }
}

fn show(s: Option<proto::ScheduleStatus>) {
    print_schedules(&s.into_iter().collect::<Vec<_>>());
}

/// Prints a create's or update's reply (`--json`: as it is) and exits OK.
fn answer<M: Named>(reply: &M, schedule: Option<proto::ScheduleStatus>, json: bool) -> u8 {
    if json {
        print_json(reply);
    } else {
        show(schedule);
    }
    exit::OK
}

/// `jobd schedules create`: shows the new schedule.
pub(super) async fn create(
    a: &mut AdminClient,
    args: ScheduleArgs,
    json: bool,
) -> Result<u8, Failure> {
    for (flag, missing) in [
        ("--kind", args.kind.is_none()),
        ("--cron", args.cron.is_none()),
    ] {
        if missing {
            return Err(Failure(exit::USAGE, format!("create needs {flag}")));
        }
    }
    let mut schedule = proto::ScheduleDefinition::default();
    args.apply(&mut schedule);
    let r = a
        .create_schedule(proto::CreateScheduleRequest {
            schedule: Some(schedule),
        })
        .await?
        .into_inner();
    Ok(answer(&r, r.schedule.clone(), json))
}

/// `jobd schedules update`: the flags given over the stored definition.
pub(super) async fn update(
    a: &mut AdminClient,
    args: ScheduleArgs,
    json: bool,
) -> Result<u8, Failure> {
    let list = a
        .list_schedules(proto::ListSchedulesRequest {})
        .await?
        .into_inner()
        .schedules;
    let Some(now) = list.into_iter().find(|s| s.id == args.id) else {
        return Err(Failure(
            exit::NOT_FOUND,
            format!(
                "schedule {:?} not found (jobd schedules lists them)",
                args.id
            ),
        ));
    };
    let mut schedule = proto::ScheduleDefinition {
        id: now.id,
        kind: now.kind,
        cron: now.cron,
        timezone: now.timezone,
        payload: now.payload,
        labels: now.labels,
        overlap: now.overlap,
        catchup: now.catchup,
    };
    args.apply(&mut schedule);
    let r = a
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: Some(schedule),
        })
        .await?
        .into_inner();
    Ok(answer(&r, r.schedule.clone(), json))
}

/// `jobd schedules delete`.
pub(super) async fn delete(a: &mut AdminClient, id: String, json: bool) -> Result<u8, Failure> {
    let r = a
        .delete_schedule(proto::DeleteScheduleRequest { id: id.clone() })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        out!("schedule {id} deleted");
    }
    Ok(exit::OK)
}
