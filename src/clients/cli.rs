//! The CLI client: `jobd submit | status | watch | cancel | list | health`,
//! and the operators' `pause | resume | kinds | retry | schedules | trigger`, talking gRPC to a
//! running daemon. Tables for people, `--json` for
//! scripts, and exit codes scripts can rely on (see [`exit`]).

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::api::convert::state_from_proto;
use crate::proto::{self, job_service_client::JobServiceClient, JobState};

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

/// How to print, and how to reach the daemon: the client commands' flags
/// (not `serve`'s, which listens rather than connects).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct Common {
    /// Machine-readable output (one JSON document, or one per line for watch).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

/// How to reach the daemon: address, token and TLS (`jobd work` too).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// Daemon address.
    #[arg(long, env = "JOBD_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token, when the daemon has auth on (role `submit` for submit,
    /// status, watch, list; `worker` for work; `admin` for cancel and the
    /// operators' commands).
    #[arg(long, env = "JOBD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA bundle that signs the daemon's certificate (implies TLS; an
    /// `https://` address alone uses the system's roots).
    #[arg(long, env = "JOBD_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a daemon that requires mTLS (with
    /// --cert-key).
    #[arg(long, env = "JOBD_CERT", requires = "cert_key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert (not `--key`: that is `submit`'s
    /// idempotency key).
    #[arg(long, env = "JOBD_CERT_KEY", requires = "cert")]
    pub cert_key: Option<std::path::PathBuf>,
    /// The name to verify the daemon's certificate against (default: the
    /// address's host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// Why the connection flags do not make an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("bad --addr {addr:?}: {source}")]
    Addr {
        addr: String,
        source: tonic::codegen::http::uri::InvalidUri,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
}

impl Connection {
    /// The daemon's endpoint (files read now), over TLS when the address is
    /// `https://` or a CA, client certificate or server name is given.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint, ConnectionError> {
        let addr = &self.addr;
        let tls_asked = self.ca.is_some() || self.cert.is_some() || self.tls_server_name.is_some();
        let url = if addr.contains("://") {
            addr.to_string()
        } else if tls_asked {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|source| ConnectionError::Addr {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") || tls_asked {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| ConnectionError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match &self.ca {
                Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?)),
                None => tls.with_enabled_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.cert, &self.cert_key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            if let Some(name) = &self.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job.
    Submit {
        kind: String,
        /// Payload text.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// Read the payload from a file ("-" for stdin).
        #[arg(long)]
        payload_file: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        key: Option<String>,
        /// Jobs with a higher priority run first among the jobs that are due
        /// (may be negative; 0 is the default).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
        /// Start no sooner than this from now (e.g. 10s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Per-attempt timeout (e.g. 30s).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Attempts in all (1..=100); 0 means the kind's configured
        /// `max_attempts` (3 unless the config says otherwise).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// A label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Ordering key: with the kind's `key_concurrency = N`, at most N jobs
        /// with the same key run at once, in submit order.
        #[arg(long)]
        ordering_key: Option<String>,
        /// Wait until the job finishes; exit 4 if it FAILED or was CANCELLED.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show a job.
    Status {
        id: String,
        /// Write the raw result bytes to this file (for binary results).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Follow a job until it finishes; exit 4 if it FAILED or was CANCELLED.
    Watch {
        id: String,
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
    List {
        /// queued, running, retry_wait, succeeded, failed or cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Most jobs to show; a last line says when more exist.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Every matching job, page after page (no limit).
        #[arg(long, conflicts_with = "limit")]
        all: bool,
        /// Newest jobs first.
        #[arg(long)]
        newest_first: bool,
        /// Only jobs with this label, key=value (repeatable: all must match).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only jobs submitted with this ordering key.
        #[arg(long)]
        ordering_key: Option<String>,
        #[command(flatten)]
        common: Common,
    },
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
    /// Every cron schedule: kind, expression, zone, next fire, paused, last job.
    Schedules {
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
    /// reset: the ones given by --id, or those matching the filter.
    Retry {
        /// A job id (repeatable); not with the filter options.
        #[arg(long = "id", conflicts_with_all = ["kind", "state", "labels"])]
        ids: Vec<String>,
        #[arg(long)]
        kind: Option<String>,
        /// failed (default) or cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs with this label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Show what would be retried; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Most jobs per call (default 1000, at most 10000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
}

impl ClientCommand {
    /// The connection and output flags every client command carries.
    pub fn common(&self) -> &Common {
        match self {
            ClientCommand::Submit { common, .. }
            | ClientCommand::Status { common, .. }
            | ClientCommand::Watch { common, .. }
            | ClientCommand::Cancel { common, .. }
            | ClientCommand::List { common, .. }
            | ClientCommand::Health { common }
            | ClientCommand::Pause { common, .. }
            | ClientCommand::Resume { common, .. }
            | ClientCommand::Kinds { common }
            | ClientCommand::Schedules { common }
            | ClientCommand::Trigger { common, .. }
            | ClientCommand::Retry { common, .. } => common,
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

fn parse_state(s: &str) -> Result<JobState, String> {
    crate::job::JobState::parse(s)
        .map(crate::api::convert::state_to_proto)
        .ok_or_else(|| {
            format!("{s:?}: one of queued, running, retry_wait, succeeded, failed, cancelled")
        })
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

fn state_name(s: i32) -> &'static str {
    JobState::try_from(s)
        .ok()
        .and_then(state_from_proto)
        .map_or("unspecified", |s| s.as_str())
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.to_string()),
        None => Value::Null,
    }
}

/// A job as JSON (payload is not echoed; result as UTF-8 text when it is,
/// else base64).
pub fn job_json(j: &proto::Job) -> Value {
    use base64::Engine;
    let result = match std::str::from_utf8(&j.result) {
        Ok(s) => json!({ "text": s }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&j.result) }),
    };
    json!({
        "id": j.id, "kind": j.kind, "state": state_name(j.state), "attempt": j.attempt,
        "max_attempts": j.max_attempts, "priority": j.priority,
        "idempotency_key": j.idempotency_key, "labels": j.labels,
        "ordering_key": j.ordering_key,
        "created_at": ts(&j.created_at), "updated_at": ts(&j.updated_at),
        "started_at": ts(&j.started_at), "finished_at": ts(&j.finished_at),
        "next_attempt_at": ts(&j.next_attempt_at), "last_error": j.last_error,
        "result": result, "payload_size": j.payload_size,
    })
}

/// Text from the daemon made safe for a terminal: control characters
/// (ESC, CR, C1 CSI, ...) are shown escaped instead of being executed by it;
/// `multiline` keeps newlines and tabs (results, errors).
fn printable(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && !(multiline && matches!(c, '\n' | '\t')) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn print_job(j: &proto::Job) {
    let show = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into())
    };
    out!("id:           {}", j.id);
    out!("kind:         {}", j.kind);
    out!("state:        {}", state_name(j.state));
    out!("attempt:      {} of {}", j.attempt, j.max_attempts);
    out!("priority:     {}", j.priority);
    if !j.idempotency_key.is_empty() {
        out!("key:          {}", printable(&j.idempotency_key, false));
    }
    if !j.ordering_key.is_empty() {
        out!("ordering key: {}", printable(&j.ordering_key, false));
    }
    for (k, v) in &j.labels {
        out!(
            "label:        {}={}",
            printable(k, false),
            printable(v, false)
        );
    }
    out!("created:      {}", show(&j.created_at));
    out!("started:      {}", show(&j.started_at));
    out!("finished:     {}", show(&j.finished_at));
    if j.next_attempt_at.is_some() {
        out!("next attempt: {}", show(&j.next_attempt_at));
    }
    if !j.last_error.is_empty() {
        out!("last error:   {}", printable(&j.last_error, true));
    }
    if !j.result.is_empty() {
        match std::str::from_utf8(&j.result) {
            Ok(text) => out!("result:       {}", printable(text.trim_end(), true)),
            Err(_) => out!(
                "result:       {} bytes, not UTF-8 text (--output FILE writes them, --json shows base64)",
                j.result.len()
            ),
        }
    }
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

/// A channel to the daemon (bad flags: exit 64; connect errors: exit 5).
async fn channel_to(common: &Common) -> Result<Channel, Failure> {
    let endpoint = common
        .conn
        .endpoint()
        .map_err(|e| Failure(exit::USAGE, e.to_string()))?;
    let url = endpoint.uri().to_string();
    endpoint.connect().await.map_err(|e| {
        Failure(
            exit::UNAVAILABLE,
            format!("cannot reach jobd at {url}: {e}"),
        )
    })
}

/// The token as an `authorization` header value, if one was given.
fn bearer(common: &Common) -> Result<BearerToken, Failure> {
    match &common.conn.token {
        None => Ok(BearerToken(None)),
        Some(t) => format!("Bearer {t}")
            .parse()
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| Failure(exit::USAGE, "--token: not a valid header value".into())),
    }
}

type JobClient =
    JobServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

async fn connect(common: &Common) -> Result<JobClient, Failure> {
    Ok(JobServiceClient::with_interceptor(
        channel_to(common).await?,
        bearer(common)?,
    ))
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
                    let job = ev.job.unwrap_or_default();
                    if json {
                        out!("{}", json!({ "sequence": ev.sequence, "job": job_json(&job) }));
                    } else if !live {
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
async fn follow_to_end(c: &mut JobClient, id: &str, json: bool) -> Result<u8, Failure> {
    let done = follow(c, id, json).await?;
    if !json {
        print_job(&done);
    }
    Ok(final_code(&done))
}

/// `jobd health`: the daemon's overall gRPC health (exit 5 unless SERVING).
async fn health(common: &Common) -> Result<u8, Failure> {
    let ch = channel_to(common).await?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let serving =
        r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let name = if serving { "SERVING" } else { "NOT_SERVING" };
    if common.json {
        out!("{}", json!({ "status": name }));
    } else {
        out!("{name}");
    }
    Ok(if serving { exit::OK } else { exit::UNAVAILABLE })
}

type AdminClient = crate::proto::admin_service_client::AdminServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` when a token was given.
#[derive(Clone)]
struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

async fn admin_client(common: &Common) -> Result<AdminClient, Failure> {
    Ok(
        proto::admin_service_client::AdminServiceClient::with_interceptor(
            channel_to(common).await?,
            bearer(common)?,
        ),
    )
}

fn kind_json(k: &proto::KindStatus) -> Value {
    json!({
        "kind": k.kind,
        "handler": k.handler,
        "paused": k.paused,
        "queued": k.queued,
        "running": k.running,
        "retry_wait": k.retry_wait,
        "failed": k.failed,
        "concurrency": k.concurrency,
        "connected_workers": k.connected_workers,
    })
}

fn schedule_json(s: &proto::ScheduleStatus) -> Value {
    json!({
        "id": s.id,
        "kind": s.kind,
        "cron": s.cron,
        "timezone": s.timezone,
        "next_fire_at": ts(&s.next_fire_at),
        "paused": s.paused,
        "last_job_id": s.last_job_id,
    })
}

fn print_schedules(list: &[proto::ScheduleStatus], json: bool) {
    if json {
        out!("{}", Value::Array(list.iter().map(schedule_json).collect()));
        return;
    }
    out!(
        "{:<16}  {:<12}  {:<20}  {:<16}  {:<26}  {:<6}  LAST_JOB",
        "ID",
        "KIND",
        "CRON",
        "TIMEZONE",
        "NEXT_FIRE",
        "PAUSED"
    );
    for s in list {
        out!(
            "{:<16}  {:<12}  {:<20}  {:<16}  {:<26}  {:<6}  {}",
            printable(&s.id, false),
            printable(&s.kind, false),
            printable(&s.cron, false),
            printable(&s.timezone, false),
            s.next_fire_at
                .as_ref()
                .map_or_else(|| "never".to_string(), |t| t.to_string()),
            if s.paused { "yes" } else { "no" },
            if s.last_job_id.is_empty() {
                "-"
            } else {
                &s.last_job_id
            }
        );
    }
}

fn print_kinds(kinds: &[proto::KindStatus], json: bool) {
    if json {
        out!("{}", Value::Array(kinds.iter().map(kind_json).collect()));
        return;
    }
    out!(
        "{:<16}  {:<12}  {:<6}  {:>8}  {:>8}  {:>10}  {:>8}  {:>5}  {:>7}",
        "KIND",
        "HANDLER",
        "PAUSED",
        "QUEUED",
        "RUNNING",
        "RETRY_WAIT",
        "FAILED",
        "CONC",
        "WORKERS"
    );
    for k in kinds {
        out!(
            "{:<16}  {:<12}  {:<6}  {:>8}  {:>8}  {:>10}  {:>8}  {:>5}  {:>7}",
            printable(&k.kind, false),
            k.handler,
            if k.paused { "yes" } else { "no" },
            k.queued,
            k.running,
            k.retry_wait,
            k.failed,
            k.concurrency,
            k.connected_workers
        );
    }
}

/// The operators' commands (AdminService).
async fn execute_admin(cmd: ClientCommand, common: &Common) -> Result<u8, Failure> {
    let mut a = admin_client(common).await?;
    match cmd {
        ClientCommand::Pause { kind, .. } => {
            let r = a.pause_kind(proto::PauseKindRequest { kind }).await?;
            print_kinds(
                &r.into_inner().kind_status.into_iter().collect::<Vec<_>>(),
                common.json,
            );
        }
        ClientCommand::Resume { kind, .. } => {
            let r = a.resume_kind(proto::ResumeKindRequest { kind }).await?;
            print_kinds(
                &r.into_inner().kind_status.into_iter().collect::<Vec<_>>(),
                common.json,
            );
        }
        ClientCommand::Kinds { .. } => {
            let r = a.list_kinds(proto::ListKindsRequest {}).await?;
            print_kinds(&r.into_inner().kinds, common.json);
        }
        ClientCommand::Schedules { .. } => {
            let r = a.list_schedules(proto::ListSchedulesRequest {}).await?;
            print_schedules(&r.into_inner().schedules, common.json);
        }
        ClientCommand::Trigger { id, .. } => {
            let r = a
                .trigger_schedule(proto::TriggerScheduleRequest { id })
                .await?;
            if let Some(j) = r.into_inner().job {
                if common.json {
                    out!("{}", job_json(&j));
                } else {
                    print_job(&j);
                }
            }
        }
        ClientCommand::Retry {
            ids,
            kind,
            state,
            labels,
            dry_run,
            limit,
            ..
        } => {
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
            if common.json {
                out!(
                    "{}",
                    json!({
                        "matched": r.matched,
                        "retried": r.retried,
                        "ids": r.ids,
                        "skipped": r.skipped.iter().map(|s| json!({"id": s.id, "reason": s.reason})).collect::<Vec<_>>(),
                        "more": r.more,
                        "dry_run": dry_run,
                    })
                );
            } else {
                for id in &r.ids {
                    out!("{id}");
                }
                for s in &r.skipped {
                    eprintln!("skipped {}: {}", s.id, printable(&s.reason, false));
                }
                eprintln!(
                    "{} matched, {} {}{}",
                    r.matched,
                    if dry_run { r.matched } else { r.retried },
                    if dry_run {
                        "would be retried (dry run)"
                    } else {
                        "retried"
                    },
                    if r.more {
                        "; more matched: run again"
                    } else {
                        ""
                    }
                );
            }
        }
        _ => unreachable!("not an admin command"),
    }
    Ok(exit::OK)
}

async fn execute(cmd: ClientCommand, common: &Common) -> Result<u8, Failure> {
    match cmd {
        ClientCommand::Health { .. } => return health(common).await,
        ClientCommand::Pause { .. }
        | ClientCommand::Resume { .. }
        | ClientCommand::Kinds { .. }
        | ClientCommand::Schedules { .. }
        | ClientCommand::Trigger { .. }
        | ClientCommand::Retry { .. } => return execute_admin(cmd, common).await,
        _ => {}
    }
    let mut c = connect(common).await?;
    let print = |j: &proto::Job| {
        if common.json {
            out!("{}", job_json(j));
        } else {
            print_job(j);
        }
    };
    match cmd {
        ClientCommand::Submit {
            kind,
            payload,
            payload_file,
            key,
            priority,
            delay,
            timeout,
            max_attempts,
            labels,
            ordering_key,
            wait,
            ..
        } => {
            let payload = match (payload, payload_file.as_deref()) {
                (Some(p), _) => p.into_bytes(),
                (None, Some("-")) => {
                    let mut b = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut b)
                        .map_err(|e| Failure(exit::ERROR, format!("reading stdin: {e}")))?;
                    b
                }
                (None, Some(f)) => std::fs::read(f)
                    .map_err(|e| Failure(exit::USAGE, format!("reading {f}: {e}")))?,
                (None, None) => Vec::new(),
            };
            let req = proto::SubmitRequest {
                kind,
                payload,
                idempotency_key: key.unwrap_or_default(),
                priority,
                max_attempts,
                timeout: timeout.and_then(|d| prost_types::Duration::try_from(d).ok()),
                run_at: delay
                    .map(|d| prost_types::Timestamp::from(std::time::SystemTime::now() + d)),
                labels: labels.into_iter().collect(),
                ordering_key: ordering_key.unwrap_or_default(),
            };
            let r = c.submit(req).await?.into_inner();
            let job = r.job.unwrap_or_default();
            if !wait {
                if common.json {
                    out!(
                        "{}",
                        json!({ "job": job_json(&job), "deduplicated": r.deduplicated })
                    );
                } else {
                    out!(
                        "{}{}",
                        job.id,
                        if r.deduplicated {
                            " (deduplicated)"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(exit::OK);
            }
            if !common.json {
                eprintln!("submitted {}", job.id);
            }
            follow_to_end(&mut c, &job.id, common.json).await
        }
        ClientCommand::Status { id, output, .. } => {
            let j = c
                .get_status(proto::GetStatusRequest { id })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            if let Some(path) = output {
                std::fs::write(&path, &j.result).map_err(|e| {
                    Failure(exit::ERROR, format!("cannot write {}: {e}", path.display()))
                })?;
            }
            print(&j);
            Ok(exit::OK)
        }
        ClientCommand::Watch { id, .. } => follow_to_end(&mut c, &id, common.json).await,
        ClientCommand::Cancel { id, .. } => {
            let j = c
                .cancel(proto::CancelRequest { id })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&j);
            Ok(exit::OK)
        }
        ClientCommand::List {
            state,
            kind,
            limit,
            all,
            newest_first,
            labels,
            ordering_key,
            ..
        } => {
            let labels: std::collections::HashMap<String, String> = labels.into_iter().collect();
            let order = if newest_first {
                proto::ListJobsOrder::NewestFirst
            } else {
                proto::ListJobsOrder::OldestFirst
            };
            let limit = if all { usize::MAX } else { limit as usize };
            let mut jobs = Vec::new();
            let mut token = String::new();
            let mut more = false;
            while jobs.len() < limit {
                let page = c
                    .list_jobs(proto::ListJobsRequest {
                        state: state.map_or(0, |s| s as i32),
                        kind: kind.clone().unwrap_or_default(),
                        page_size: (limit - jobs.len()).min(1000) as u32,
                        page_token: token,
                        ordering_key: ordering_key.clone().unwrap_or_default(),
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
            if common.json {
                out!("{}", Value::Array(jobs.iter().map(job_json).collect()));
            } else {
                out!(
                    "{:<36}  {:<10}  {:<16}  {:>7}  {:<27}  LAST ERROR",
                    "ID",
                    "STATE",
                    "KIND",
                    "ATTEMPT",
                    "CREATED"
                );
                for j in &jobs {
                    let mut error = printable(j.last_error.lines().next().unwrap_or(""), false);
                    if error.chars().count() > 60 {
                        error = error.chars().take(59).collect::<String>() + "…";
                    }
                    out!(
                        "{:<36}  {:<10}  {:<16}  {:>7}  {:<27}  {}",
                        j.id,
                        state_name(j.state),
                        j.kind,
                        format!("{}/{}", j.attempt, j.max_attempts),
                        ts(&j.created_at).as_str().unwrap_or("-"),
                        error
                    );
                }
                if more {
                    out!("(more jobs match: --limit N for more, --all for every one)");
                }
            }
            Ok(exit::OK)
        }
        ClientCommand::Health { .. } => health(common).await,
        ClientCommand::Pause { .. }
        | ClientCommand::Resume { .. }
        | ClientCommand::Kinds { .. }
        | ClientCommand::Schedules { .. }
        | ClientCommand::Trigger { .. }
        | ClientCommand::Retry { .. } => execute_admin(cmd, common).await,
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
