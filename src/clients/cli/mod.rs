//! The CLI client: `jobd submit | status | graph | watch | cancel | list |
//! health`,
//! and the operators' `pause | resume | kinds | retry | schedules | trigger |
//! workers`, talking gRPC to a running daemon. Tables for people, `--json`
//! for scripts (the reply in the proto3 JSON mapping, as grpcurl and the
//! HTTP routes print it), and exit codes scripts can rely on (see [`exit`]).

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::proto::JobState;

/// `println!` for the client's output: when stdout's reader is gone
/// (`jobd list | head -2`) the process ends as Unix tools do, killed by
/// SIGPIPE, instead of panicking. SIGPIPE itself stays ignored, so a
/// daemon that closes the connection is an error to report, not a silent
/// death.
macro_rules! out {
    ($($arg:tt)*) => { $crate::clients::cli::emit(format_args!($($arg)*)) };
}

/// Writes one line to stdout (see [`out!`]).
pub fn emit(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let r = o.write_fmt(args).and_then(|()| o.write_all(b"\n"));
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => {
            eprintln!("jobd: cannot write to stdout: {e}");
            std::process::exit(i32::from(exit::ERROR));
        }
    }
}

/// Ends the process by SIGPIPE, the status a shell reports for a Unix tool
/// whose reader went away (141).
fn die_of_sigpipe() -> ! {
    // SAFETY: signal(2) and raise(3) have no memory-safety preconditions;
    // with the default action restored, raise does not return.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}

/// Exit codes of the client commands.
pub mod exit {
    pub const OK: u8 = 0;
    /// Any other error.
    pub const ERROR: u8 = 1;
    /// No such job.
    pub const NOT_FOUND: u8 = 3;
    /// With `--wait` / `watch`: the job ended FAILED or CANCELLED.
    pub const JOB_FAILED: u8 = 4;
    /// The daemon is down, draining, or its store is unavailable.
    pub const UNAVAILABLE: u8 = 5;
    /// Backlog or watcher bound reached: retry later.
    pub const BUSY: u8 = 6;
    /// The request was refused as invalid (bad field, unknown kind, key reuse).
    pub const USAGE: u8 = 64;
}

mod admin;
mod connection;
mod graph;
mod health;
mod jobs;
mod output;
mod schedules;

pub use admin::RetryArgs;
pub use connection::{Connection, ConnectionError};
pub use jobs::{ListArgs, SubmitArgs};
use output::printable;

/// How to print, and how to reach the daemon: the client commands' flags
/// (not `serve`'s, which listens rather than connects).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct Common {
    /// Machine-readable output: the reply in the proto3 JSON mapping, as
    /// grpcurl and the HTTP routes print it (one document; one per line
    /// for watch and logs).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job.
    Submit(Box<SubmitArgs>),
    /// Show a job.
    Status {
        id: String,
        /// Write the raw result bytes to this file (for binary results).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// A job's workflow: its ancestors and descendants (depends_on), with
    /// their states, as an indented tree.
    Graph {
        id: String,
        /// Steps up and down from the job (1..=10; default 3).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
        depth: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Follow a job until it finishes; exit 4 if it FAILED or was CANCELLED.
    Watch {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print a job's log lines (`-f`: follow them until the job ends).
    Logs {
        id: String,
        /// Keep printing lines as they come, until the job is terminal.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// List jobs, oldest first (--newest-first for the latest).
    List(ListArgs),
    /// Ask the daemon's health service.
    Health {
        #[command(flatten)]
        common: Common,
    },
    /// Pause a kind: its jobs are taken but none starts (running ones
    /// finish), on every instance, until `resume`. Exit 3 for an unknown kind.
    Pause {
        kind: String,
        #[command(flatten)]
        common: Common,
    },
    /// Resume a paused kind.
    Resume {
        kind: String,
        #[command(flatten)]
        common: Common,
    },
    /// Every kind: handler, paused, job counts, connected workers.
    Kinds {
        #[command(flatten)]
        common: Common,
    },
    /// Every cron schedule: kind, expression, zone, next fire, paused, last
    /// job; `schedules pause ID` / `schedules resume ID` stop and restart
    /// one's fires; `schedules create|update|delete ID` manage schedules
    /// stored through the API.
    Schedules {
        #[command(subcommand)]
        action: Option<ScheduleAction>,
        #[command(flatten)]
        common: Common,
    },
    /// The connected remote workers: id, kinds, jobs in flight, address.
    Workers {
        #[command(flatten)]
        common: Common,
    },
    /// Fire a schedule once now (whatever its cron, pause or overlap say);
    /// prints the job. Exit 3 for an unknown schedule.
    Trigger {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Put FAILED (or CANCELLED) jobs back in the queue with their attempts
    /// reset: the ones given by --id, those matching the filter, or with
    /// --all every one.
    Retry(RetryArgs),
}

impl ClientCommand {
    /// The connection and output flags every client command carries.
    pub fn common(&self) -> &Common {
        match self {
            ClientCommand::Submit(a) => &a.common,
            ClientCommand::List(ListArgs { common, .. })
            | ClientCommand::Retry(RetryArgs { common, .. })
            | ClientCommand::Status { common, .. }
            | ClientCommand::Graph { common, .. }
            | ClientCommand::Watch { common, .. }
            | ClientCommand::Logs { common, .. }
            | ClientCommand::Cancel { common, .. }
            | ClientCommand::Health { common }
            | ClientCommand::Pause { common, .. }
            | ClientCommand::Resume { common, .. }
            | ClientCommand::Kinds { common }
            | ClientCommand::Workers { common }
            | ClientCommand::Schedules {
                action: None,
                common,
            }
            | ClientCommand::Trigger { common, .. } => common,
            ClientCommand::Schedules {
                action:
                    Some(
                        ScheduleAction::Pause { common, .. }
                        | ScheduleAction::Resume { common, .. }
                        | ScheduleAction::Delete { common, .. },
                    ),
                ..
            } => common,
            ClientCommand::Schedules {
                action: Some(ScheduleAction::Create(args) | ScheduleAction::Update(args)),
                ..
            } => &args.common,
        }
    }
}

/// `jobd schedules pause|resume|create|update|delete ID`.
#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Stop a schedule's fires (stored: holds across restarts and
    /// instances) until `schedules resume`. Exit 3 for an unknown schedule.
    Pause {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Let a paused schedule fire again, from its next fire time.
    Resume {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Store a new schedule (checked as the config's [[schedules]] are); it
    /// survives restarts and fires on every instance sharing the store.
    Create(Box<schedules::ScheduleArgs>),
    /// Change a stored schedule: the flags given replace those fields.
    /// Config schedules cannot be changed here (exit 64).
    Update(Box<schedules::ScheduleArgs>),
    /// Delete a stored schedule: no fire after it. Exit 3 for an unknown
    /// schedule, 64 for a config schedule.
    Delete {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// A flag value that clap refuses, in the words the user sees after
/// "invalid value".
#[derive(Debug, thiserror::Error)]
pub enum BadValue {
    #[error("{0:?}: expected key=value")]
    Label(String),
    #[error("{0:?}: one of waiting, queued, running, retry_wait, succeeded, failed, cancelled")]
    State(String),
}

fn parse_label(s: &str) -> Result<(String, String), BadValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| BadValue::Label(s.to_string()))
}

fn parse_state(s: &str) -> Result<JobState, BadValue> {
    crate::job::JobState::parse(s)
        .map(crate::api::convert::state_to_proto)
        .ok_or_else(|| BadValue::State(s.to_string()))
}

/// A failure with the exit code it maps to.
struct Failure(u8, String);

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        // A transport error (the connection broke: e.g. a TLS alert from a
        // daemon that wants a client certificate) has no status from the
        // daemon; its cause is in the source chain.
        if let Some(source) = std::error::Error::source(&s) {
            let mut msg = format!("the connection to jobd failed: {source}");
            let mut next = source.source();
            while let Some(e) = next {
                let text = e.to_string();
                if !msg.contains(&text) {
                    msg.push_str(&format!(": {text}"));
                }
                next = e.source();
            }
            return Failure(exit::UNAVAILABLE, msg);
        }
        let code = match s.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::Unavailable => exit::UNAVAILABLE,
            Code::ResourceExhausted => exit::BUSY,
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => exit::USAGE,
            _ => exit::ERROR,
        };
        let mut msg = format!(
            "{}: {}",
            crate::transport::grpc_metrics::code_name(s.code()),
            s.message()
        );
        if let Some(br) = s.get_details_bad_request() {
            for v in br
                .field_violations
                .iter()
                .filter(|v| !s.message().contains(&v.description))
            {
                msg.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        if let Some(info) = s.get_details_error_info() {
            if let Some(id) = info.metadata.get("job_id") {
                msg.push_str(&format!("\n  existing job: {id}"));
            }
        }
        if let Some(ri) = s.get_details_retry_info() {
            if let Some(d) = ri.retry_delay {
                msg.push_str(&format!(
                    "\n  retry after {}",
                    humantime::format_duration(d)
                ));
            }
        }
        Failure(code, msg)
    }
}

/// Runs one command on a client of the service it calls.
async fn execute(cmd: ClientCommand, common: &Common) -> Result<u8, Failure> {
    use connection::{admin_client, connect};
    let json = common.json;
    match cmd {
        ClientCommand::Submit(args) => {
            args.check()?;
            jobs::submit(&mut connect(common).await?, *args, json).await
        }
        ClientCommand::Status { id, output, .. } => {
            jobs::status(&mut connect(common).await?, id, output, json).await
        }
        ClientCommand::Graph { id, depth, .. } => {
            graph::graph(&mut connect(common).await?, id, depth, json).await
        }
        ClientCommand::Watch { id, .. } => {
            jobs::follow_to_end(&mut connect(common).await?, &id, json).await
        }
        ClientCommand::Logs { id, follow, .. } => {
            jobs::logs(&mut connect(common).await?, &id, follow, json).await
        }
        ClientCommand::Cancel { id, .. } => {
            jobs::cancel(&mut connect(common).await?, id, json).await
        }
        ClientCommand::List(args) => jobs::list(&mut connect(common).await?, args, json).await,
        ClientCommand::Health { .. } => health::health(common).await,
        ClientCommand::Pause { kind, .. } => {
            admin::pause(&mut admin_client(common).await?, kind, json).await
        }
        ClientCommand::Resume { kind, .. } => {
            admin::resume(&mut admin_client(common).await?, kind, json).await
        }
        ClientCommand::Kinds { .. } => admin::kinds(&mut admin_client(common).await?, json).await,
        ClientCommand::Schedules { action: None, .. } => {
            admin::schedules(&mut admin_client(common).await?, json).await
        }
        ClientCommand::Schedules {
            action: Some(action),
            ..
        } => {
            let a = &mut admin_client(common).await?;
            match action {
                ScheduleAction::Pause { id, .. } => admin::pause_schedule(a, id, true, json).await,
                ScheduleAction::Resume { id, .. } => {
                    admin::pause_schedule(a, id, false, json).await
                }
                ScheduleAction::Create(args) => schedules::create(a, *args, json).await,
                ScheduleAction::Update(args) => schedules::update(a, *args, json).await,
                ScheduleAction::Delete { id, .. } => schedules::delete(a, id, json).await,
            }
        }
        ClientCommand::Workers { .. } => {
            admin::workers(&mut admin_client(common).await?, json).await
        }
        ClientCommand::Trigger { id, .. } => {
            admin::trigger(&mut admin_client(common).await?, id, json).await
        }
        ClientCommand::Retry(args) => {
            admin::retry(&mut admin_client(common).await?, args, json).await
        }
    }
}

/// Runs one client command; returns the process exit code.
pub async fn run(cmd: ClientCommand) -> u8 {
    let common = cmd.common().clone();
    match execute(cmd, &common).await {
        Ok(code) => code,
        Err(Failure(code, msg)) => {
            if common.json {
                // Scripts that asked for JSON get their errors as JSON too.
                eprintln!("{}", json!({ "error": msg, "exit_code": code }));
            } else {
                // The message may quote the daemon's status text.
                eprintln!("jobd: {}", printable(&msg, true));
            }
            code
        }
    }
}
