//! The operators' commands (AdminService): `pause`, `resume`, `kinds`,
//! `schedules [pause|resume ID]`, `trigger`, `workers` and `retry`.

use clap::Args;

use super::connection::AdminClient;
use super::output::{print_job, print_json, print_kinds, print_retry, print_schedules, printable};
use super::{exit, parse_label, parse_state, Common, Failure};
use crate::proto::{self, JobState};

// `jobd retry`'s flags; its help text is `ClientCommand::Retry`'s.
#[derive(Args, Debug)]
pub struct RetryArgs {
    /// A job id (repeatable); not with the filter options.
    #[arg(long = "id", conflicts_with_all = ["kind", "state", "labels", "all"])]
    pub ids: Vec<String>,
    /// Every FAILED job (or every one in --state): needed when neither ids
    /// nor a filter (--kind, --label) narrows the retry.
    #[arg(long)]
    pub all: bool,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// failed (default) or cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs with this label, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Show what would be retried; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Most jobs per call (default 1000, at most 10000).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    #[command(flatten)]
    pub common: Common,
}

/// `jobd pause`: shows the kind, now paused.
pub(super) async fn pause(a: &mut AdminClient, kind: String, json: bool) -> Result<u8, Failure> {
    let r = a
        .pause_kind(proto::PauseKindRequest { kind })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        print_kinds(&r.kind_status.into_iter().collect::<Vec<_>>());
    }
    Ok(exit::OK)
}

/// `jobd resume`: shows the kind, now running again.
pub(super) async fn resume(a: &mut AdminClient, kind: String, json: bool) -> Result<u8, Failure> {
    let r = a
        .resume_kind(proto::ResumeKindRequest { kind })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        print_kinds(&r.kind_status.into_iter().collect::<Vec<_>>());
    }
    Ok(exit::OK)
}

/// `jobd kinds`: every kind with its counts.
pub(super) async fn kinds(a: &mut AdminClient, json: bool) -> Result<u8, Failure> {
    let r = a.list_kinds(proto::ListKindsRequest {}).await?.into_inner();
    if json {
        print_json(&r);
    } else {
        print_kinds(&r.kinds);
    }
    Ok(exit::OK)
}

/// `jobd schedules`: every cron schedule and its next fire.
pub(super) async fn schedules(a: &mut AdminClient, json: bool) -> Result<u8, Failure> {
    let r = a
        .list_schedules(proto::ListSchedulesRequest {})
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else if r.schedules.is_empty() {
        eprintln!(
            "no schedules (add a [[schedules]] table with id, kind and cron to the config file)"
        );
    } else {
        print_schedules(&r.schedules);
    }
    Ok(exit::OK)
}

/// `jobd schedules pause ID` / `resume ID`: shows the schedule after.
pub(super) async fn pause_schedule(
    a: &mut AdminClient,
    id: String,
    pause: bool,
    json: bool,
) -> Result<u8, Failure> {
    let schedule = if pause {
        let r = a
            .pause_schedule(proto::PauseScheduleRequest { id })
            .await?
            .into_inner();
        if json {
            print_json(&r);
        }
        r.schedule
    } else {
        let r = a
            .resume_schedule(proto::ResumeScheduleRequest { id })
            .await?
            .into_inner();
        if json {
            print_json(&r);
        }
        r.schedule
    };
    if !json {
        print_schedules(&schedule.into_iter().collect::<Vec<_>>());
    }
    Ok(exit::OK)
}

/// `jobd trigger`: fires a schedule now and shows the job it made.
pub(super) async fn trigger(a: &mut AdminClient, id: String, json: bool) -> Result<u8, Failure> {
    let r = a
        .trigger_schedule(proto::TriggerScheduleRequest { id })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else if let Some(j) = &r.job {
        print_job(j);
    }
    Ok(exit::OK)
}

/// `jobd workers`: the connected remote workers.
pub(super) async fn workers(a: &mut AdminClient, json: bool) -> Result<u8, Failure> {
    let r = a
        .list_workers(proto::ListWorkersRequest::default())
        .await?
        .into_inner();
    if json {
        print_json(&r);
        return Ok(exit::OK);
    }
    if r.workers.is_empty() {
        eprintln!(
            "no workers connected (kinds with handler = \"remote\" take them: `jobd work --kind KIND -- COMMAND`)"
        );
        return Ok(exit::OK);
    }
    out!(
        "{:<20}  {:<24}  {:>9}  {:<21}  {:<27}  SESSION",
        "WORKER",
        "KINDS",
        "IN_FLIGHT",
        "ADDRESS",
        "LAST_SEEN"
    );
    for w in &r.workers {
        out!(
            "{:<20}  {:<24}  {:>9}  {:<21}  {:<27}  {}",
            printable(&w.worker_id, false),
            printable(&w.kinds.join(","), false),
            format!("{}/{}", w.in_flight, w.max_in_flight),
            printable(&w.address, false),
            w.last_seen
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string),
            printable(&w.session_id, false)
        );
    }
    Ok(exit::OK)
}

/// `jobd retry`: the jobs given by `--id`, or those the filter matches
/// (FAILED unless `--state` says otherwise).
pub(super) async fn retry(a: &mut AdminClient, args: RetryArgs, json: bool) -> Result<u8, Failure> {
    let RetryArgs {
        ids,
        all,
        kind,
        state,
        labels,
        dry_run,
        limit,
        ..
    } = args;
    if ids.is_empty() && kind.is_none() && labels.is_empty() && !all {
        return Err(Failure(
            exit::USAGE,
            "retry of which jobs? Give ids (--id ID, repeatable), a filter (--kind KIND, \
             --label k=v), or --all for every FAILED job (with --state cancelled: every \
             CANCELLED one); --dry-run shows what would be retried"
                .into(),
        ));
    }
    let filter = ids.is_empty().then(|| proto::RetryFilter {
        state: state.unwrap_or(JobState::Failed) as i32,
        kind: kind.unwrap_or_default(),
        labels: labels.into_iter().collect(),
        ..Default::default()
    });
    let r = a
        .retry_jobs(proto::RetryJobsRequest {
            ids,
            filter,
            dry_run,
            limit,
        })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        print_retry(&r, dry_run);
    }
    Ok(exit::OK)
}
