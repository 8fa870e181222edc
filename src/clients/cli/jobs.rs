//! The job commands (JobService): `submit`, `status`, `watch`, `cancel` and
//! `list`.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use super::connection::JobClient;
use super::output::{print_job, print_job_table, print_json, state_name, ts};
use super::{exit, parse_label, parse_state, Common, Failure};
use crate::proto::{self, JobState};
use clap::Args;

// `jobd submit`'s flags; its help text is `ClientCommand::Submit`'s.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    pub kind: String,
    /// Words after the kind: not taken (a payload goes in --payload), but
    /// caught to say so instead of clap's bare "unexpected argument".
    #[arg(hide = true)]
    pub stray: Vec<String>,
    /// Payload text.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file ("-" for stdin).
    #[arg(long)]
    pub payload_file: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    /// Jobs with a higher priority run first among the jobs that are due
    /// (may be negative; 0 is the default).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Start no sooner than this from now (e.g. 10s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Per-attempt timeout (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts in all (1..=100); 0 means the kind's configured
    /// `max_attempts` (3 unless the config says otherwise).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// A label, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Ordering key: with the kind's `key_concurrency = N`, at most N jobs
    /// with the same key run at once, in submit order.
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Fairness key (default: the ordering key): a kind with
    /// `fairness = "round_robin"` claims its jobs key by key in rotation.
    #[arg(long)]
    pub fairness_key: Option<String>,
    /// Wait until the job finishes; exit 4 if it FAILED or was CANCELLED.
    #[arg(long)]
    pub wait: bool,
    /// A job this one waits for (repeatable): it stays WAITING until every
    /// one has finished.
    #[arg(long = "depends-on", value_name = "ID")]
    pub depends_on: Vec<String>,
    /// Run even if a job it depends on FAILED or was CANCELLED (default:
    /// it is cancelled too).
    #[arg(long)]
    pub run_on_dependency_failure: bool,
    /// Not started within this (e.g. 30s), the job ends FAILED instead of
    /// starting late.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub start_within: Option<Duration>,
    /// Dedup key: merge into the job of this kind and key that has not
    /// started yet, if there is one (see --dedup-mode).
    #[arg(long, value_name = "KEY")]
    pub dedup: Option<String>,
    /// keep (return the waiting job as it is), replace (give it this
    /// payload, labels and delay) or debounce (replace, and run it
    /// --dedup-window after the last submit).
    #[arg(long, value_parser = parse_dedup_mode, default_value = "keep", requires = "dedup")]
    pub dedup_mode: proto::DedupMode,
    /// debounce: how long after the last submit the job runs (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration, requires = "dedup")]
    pub dedup_window: Option<Duration>,
    /// debounce: never later than this after the first submit (e.g. 1m).
    #[arg(long, value_parser = humantime::parse_duration, requires = "dedup")]
    pub dedup_max_wait: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

fn parse_dedup_mode(s: &str) -> Result<proto::DedupMode, String> {
    match s {
        "keep" => Ok(proto::DedupMode::Keep),
        "replace" => Ok(proto::DedupMode::Replace),
        "debounce" => Ok(proto::DedupMode::Debounce),
        _ => Err(format!("{s:?}: keep, replace or debounce")),
    }
}

// `jobd list`'s flags; its help text is `ClientCommand::List`'s.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// waiting, queued, running, retry_wait, succeeded, failed or cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Most jobs to show; a last line says when more exist.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Every matching job, page after page (no limit).
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Newest jobs first.
    #[arg(long)]
    pub newest_first: bool,
    /// Only jobs with this label, key=value (repeatable: all must match).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only jobs submitted with this ordering key.
    #[arg(long)]
    pub ordering_key: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

impl SubmitArgs {
    /// Refuses words after the kind (`jobd submit echo hi`), showing the
    /// flag that takes them.
    pub(super) fn check(&self) -> Result<(), Failure> {
        if self.stray.is_empty() {
            return Ok(());
        }
        let words = self.stray.join(" ");
        let quoted = if words
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=@".contains(c))
        {
            words.clone()
        } else {
            format!("'{}'", words.replace('\'', r"'\''"))
        };
        Err(Failure(
            exit::USAGE,
            format!(
                "unexpected argument {words:?} after the kind: to send it as the payload, use \
                 `jobd submit {} --payload {quoted}` (or --payload-file FILE, - for stdin)",
                self.kind
            ),
        ))
    }
}

/// `jobd submit`: prints the new job's id, or with `--wait` follows it to
/// its end.
pub(super) async fn submit(c: &mut JobClient, a: SubmitArgs, json: bool) -> Result<u8, Failure> {
    let req = proto::SubmitRequest {
        kind: a.kind,
        payload: read_payload(a.payload, a.payload_file.as_deref())?,
        idempotency_key: a.key.unwrap_or_default(),
        priority: a.priority,
        max_attempts: a.max_attempts,
        timeout: a
            .timeout
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        run_at: a
            .delay
            .map(|d| prost_types::Timestamp::from(std::time::SystemTime::now() + d)),
        labels: a.labels.into_iter().collect(),
        ordering_key: a.ordering_key.unwrap_or_default(),
        depends_on: a.depends_on,
        on_dependency_failure: if a.run_on_dependency_failure {
            proto::DependencyFailure::Run
        } else {
            proto::DependencyFailure::Cancel
        } as i32,
        start_before: a
            .start_within
            .map(|d| prost_types::Timestamp::from(std::time::SystemTime::now() + d)),
        dedup: a.dedup.map(|key| proto::Dedup {
            key,
            mode: a.dedup_mode as i32,
            window: a
                .dedup_window
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            max_wait: a
                .dedup_max_wait
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        }),
        fairness_key: a.fairness_key.unwrap_or_default(),
    };
    let r = c.submit(req).await?.into_inner();
    if json && !a.wait {
        print_json(&r);
        return Ok(exit::OK);
    }
    let job = r.job.unwrap_or_default();
    if !a.wait {
        let dedup = match proto::DedupOutcome::try_from(r.dedup_outcome) {
            Ok(proto::DedupOutcome::Kept) => " (kept: a job held the dedup key)",
            Ok(proto::DedupOutcome::Replaced) => " (replaced the job holding the dedup key)",
            Ok(proto::DedupOutcome::Debounced) => " (debounced the job holding the dedup key)",
            _ if r.deduplicated => " (deduplicated)",
            _ => "",
        };
        out!("{}{dedup}", job.id);
        return Ok(exit::OK);
    }
    if !json {
        eprintln!("submitted {}", job.id);
    }
    follow_to_end(c, &job.id, json).await
}

/// The payload from `--payload`, `--payload-file` (`-`: stdin), or empty.
fn read_payload(payload: Option<String>, file: Option<&str>) -> Result<Vec<u8>, Failure> {
    Ok(match (payload, file) {
        (Some(p), _) => p.into_bytes(),
        (None, Some("-")) => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| Failure(exit::ERROR, format!("reading stdin: {e}")))?;
            b
        }
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| Failure(exit::USAGE, format!("reading {f}: {e}")))?
        }
        (None, None) => Vec::new(),
    })
}

/// `jobd status`: shows the job, with its parents and children when it is
/// part of a workflow; `--output` writes its raw result bytes.
pub(super) async fn status(
    c: &mut JobClient,
    id: String,
    output: Option<std::path::PathBuf>,
    json: bool,
) -> Result<u8, Failure> {
    let r = c
        .get_status(proto::GetStatusRequest { id })
        .await?
        .into_inner();
    let j = r.job.clone().unwrap_or_default();
    if let Some(path) = output {
        std::fs::write(&path, &j.result)
            .map_err(|e| Failure(exit::ERROR, format!("cannot write {}: {e}", path.display())))?;
    }
    if json {
        print_json(&r);
    } else {
        print_job(&j);
        super::graph::print_relations(c, &j).await?;
    }
    Ok(exit::OK)
}

/// `jobd cancel`: shows the job as the cancel left it.
pub(super) async fn cancel(c: &mut JobClient, id: String, json: bool) -> Result<u8, Failure> {
    let r = c.cancel(proto::CancelRequest { id }).await?.into_inner();
    if json {
        print_json(&r);
    } else {
        print_job(&r.job.unwrap_or_default());
    }
    Ok(exit::OK)
}

/// `jobd list`: pages through ListJobs up to `--limit` (every page with
/// `--all`).
pub(super) async fn list(c: &mut JobClient, a: ListArgs, json: bool) -> Result<u8, Failure> {
    let labels: std::collections::HashMap<String, String> = a.labels.into_iter().collect();
    let order = if a.newest_first {
        proto::ListJobsOrder::NewestFirst
    } else {
        proto::ListJobsOrder::OldestFirst
    };
    let limit = if a.all { usize::MAX } else { a.limit as usize };
    let mut jobs = Vec::new();
    let mut token = String::new();
    let mut more = false;
    while jobs.len() < limit {
        let page = c
            .list_jobs(proto::ListJobsRequest {
                state: a.state.map_or(0, |s| s as i32),
                kind: a.kind.clone().unwrap_or_default(),
                page_size: (limit - jobs.len()).min(1000) as u32,
                page_token: std::mem::take(&mut token),
                ordering_key: a.ordering_key.clone().unwrap_or_default(),
                labels: labels.clone(),
                order: order as i32,
            })
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        more = jobs.len() >= limit;
    }
    if json {
        // One ListJobsResponse for every page read; its next_page_token
        // continues after the last job shown.
        print_json(&proto::ListJobsResponse {
            jobs,
            next_page_token: if more { token } else { String::new() },
        });
    } else {
        print_job_table(&jobs, more);
    }
    Ok(exit::OK)
}

/// Follows a job, printing each change: a live line on a terminal, plain
/// lines otherwise, JSON lines with `--json`.
async fn follow(c: &mut JobClient, id: &str, json: bool) -> Result<proto::Job, Failure> {
    let mut stream = c
        .watch_status(proto::WatchStatusRequest {
            id: id.to_string(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    let live = !json && std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last: Option<proto::Job> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            msg = stream.message() => match msg? {
                Some(ev) => {
                    if json {
                        print_json(&ev);
                    }
                    let job = ev.job.unwrap_or_default();
                    if !json && !live {
                        out!("{} {} attempt={}", ts(&job.updated_at).as_str().unwrap_or("-"), state_name(job.state), job.attempt);
                    }
                    last = Some(job);
                }
                None => break,
            },
            _ = tick.tick(), if live => {}
        }
        if live {
            if let Some(j) = &last {
                print!(
                    "\r{:>7.1}s  {:<10} attempt {}/{}  ",
                    started.elapsed().as_secs_f64(),
                    state_name(j.state),
                    j.attempt,
                    j.max_attempts
                );
                let _ = std::io::stdout().flush();
            }
        }
    }
    if live {
        out!("");
    }
    match last {
        Some(j) if is_terminal(j.state) => Ok(j),
        _ => Err(Failure(
            exit::UNAVAILABLE,
            "the watch ended before the job finished (daemon draining?)".into(),
        )),
    }
}

/// Follows a job to its end, shows it, and returns the exit code its
/// final state means.
/// `jobd logs ID [-f]`: the job's log lines, one per line (`--json`: one
/// object per line); with `-f`, followed until the job is terminal.
pub(super) async fn logs(
    c: &mut JobClient,
    id: &str,
    follow: bool,
    json: bool,
) -> Result<u8, Failure> {
    let print = |l: &proto::LogLine| {
        if json {
            print_json(l);
        } else {
            out!(
                "{} #{} {}",
                ts(&l.time).as_str().unwrap_or("-"),
                l.attempt,
                super::printable(&l.text, false)
            );
        }
    };
    if follow {
        let mut stream = c
            .watch_logs(proto::WatchLogsRequest {
                id: id.to_string(),
                after: 0,
            })
            .await?
            .into_inner();
        while let Some(l) = stream.message().await? {
            print(&l);
        }
        return Ok(exit::OK);
    }
    let mut after = 0;
    loop {
        let page = c
            .get_logs(proto::GetLogsRequest {
                id: id.to_string(),
                after,
                limit: 0,
            })
            .await?
            .into_inner()
            .lines;
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.iter().for_each(print);
    }
    Ok(exit::OK)
}

pub(super) async fn follow_to_end(c: &mut JobClient, id: &str, json: bool) -> Result<u8, Failure> {
    let done = follow(c, id, json).await?;
    if !json {
        print_job(&done);
    }
    Ok(final_code(&done))
}

fn is_terminal(s: i32) -> bool {
    matches!(
        JobState::try_from(s),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

fn final_code(j: &proto::Job) -> u8 {
    if j.state == JobState::Succeeded as i32 {
        exit::OK
    } else {
        exit::JOB_FAILED
    }
}
