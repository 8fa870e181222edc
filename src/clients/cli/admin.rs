//! The operators' commands (AdminService): `pause`, `resume`, `kinds`,
//! `schedules`, `trigger` and `retry`.

use clap::Args;

use super::connection::AdminClient;
use super::output::{print_kinds, print_retry, print_schedules, show_job};
use super::{exit, parse_label, parse_state, Common, Failure};
use crate::proto::{self, JobState};

// `jobd retry`'s flags; its help text is `ClientCommand::Retry`'s.
#[derive(Args, Debug)]
pub struct RetryArgs {
    /// A job id (repeatable); not with the filter options.
    #[arg(long = "id", conflicts_with_all = ["kind", "state", "labels"])]
    pub ids: Vec<String>,
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
    let r = a.pause_kind(proto::PauseKindRequest { kind }).await?;
    print_kinds(
        &r.into_inner().kind_status.into_iter().collect::<Vec<_>>(),
        json,
    );
    Ok(exit::OK)
}

/// `jobd resume`: shows the kind, now running again.
pub(super) async fn resume(a: &mut AdminClient, kind: String, json: bool) -> Result<u8, Failure> {
    let r = a.resume_kind(proto::ResumeKindRequest { kind }).await?;
    print_kinds(
        &r.into_inner().kind_status.into_iter().collect::<Vec<_>>(),
        json,
    );
    Ok(exit::OK)
}

/// `jobd kinds`: every kind with its counts.
pub(super) async fn kinds(a: &mut AdminClient, json: bool) -> Result<u8, Failure> {
    let r = a.list_kinds(proto::ListKindsRequest {}).await?;
    print_kinds(&r.into_inner().kinds, json);
    Ok(exit::OK)
}

/// `jobd schedules`: every cron schedule and its next fire.
pub(super) async fn schedules(a: &mut AdminClient, json: bool) -> Result<u8, Failure> {
    let r = a.list_schedules(proto::ListSchedulesRequest {}).await?;
    print_schedules(&r.into_inner().schedules, json);
    Ok(exit::OK)
}

/// `jobd trigger`: fires a schedule now and shows the job it made.
pub(super) async fn trigger(a: &mut AdminClient, id: String, json: bool) -> Result<u8, Failure> {
    let r = a
        .trigger_schedule(proto::TriggerScheduleRequest { id })
        .await?;
    if let Some(j) = r.into_inner().job {
        show_job(&j, json);
    }
    Ok(exit::OK)
}

/// `jobd retry`: the jobs given by `--id`, or those the filter matches
/// (FAILED unless `--state` says otherwise).
pub(super) async fn retry(a: &mut AdminClient, args: RetryArgs, json: bool) -> Result<u8, Failure> {
    let RetryArgs {
        ids,
        kind,
        state,
        labels,
        dry_run,
        limit,
        ..
    } = args;
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
    print_retry(&r, dry_run, json);
    Ok(exit::OK)
}
