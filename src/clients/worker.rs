//! A remote worker in Rust: connects to a jobd's `WorkerService`, serves
//! kinds with an async closure, and follows the protocol's rules for you —
//! heartbeats (a task that ends with its stream), at most `max_in_flight`
//! jobs at once, reports named by (job, attempt), `CancelJob` fires the
//! job's token, and the session is opened again with capped, jittered
//! backoff whenever its stream breaks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobd::clients::worker::WorkerError> {
//! use jobd::clients::worker::{serve, WorkerOptions};
//! let opts = WorkerOptions::new("http://127.0.0.1:50051", ["resize"]);
//! let stop = tokio_util::sync::CancellationToken::new();
//! serve(opts, stop, |job| async move { Ok(job.payload) }).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use crate::handlers::HandlerError;
use crate::proto::{
    self, server_message, worker_message, worker_service_client::WorkerServiceClient,
};

/// First wait before connecting again; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and what a worker serves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The daemon, e.g. `http://127.0.0.1:50051`.
    pub addr: String,
    /// A `worker` (or `admin`) token, when the daemon has auth on.
    pub token: Option<String>,
    /// Shown in ListWorkers and the daemon's logs.
    pub worker_id: String,
    pub kinds: Vec<String>,
    /// Jobs run at once (1..=10000).
    pub max_in_flight: u32,
    pub labels: HashMap<String, String>,
    /// How to connect (TLS, client certificate), when more than `addr`
    /// says; `addr` is then only shown.
    pub endpoint: Option<tonic::transport::Endpoint>,
}

impl WorkerOptions {
    pub fn new<K: Into<String>>(addr: &str, kinds: impl IntoIterator<Item = K>) -> Self {
        WorkerOptions {
            addr: addr.to_string(),
            token: None,
            worker_id: format!("rust-{}", std::process::id()),
            kinds: kinds.into_iter().map(Into::into).collect(),
            max_in_flight: 16,
            labels: HashMap::new(),
            endpoint: None,
        }
    }
}

/// One attempt given to this worker.
#[derive(Debug, Clone)]
pub struct WorkJob {
    pub id: String,
    pub kind: String,
    pub attempt: u32,
    pub payload: Bytes,
    /// Past it jobd stops the attempt (and fires `cancel`).
    pub deadline: Option<SystemTime>,
    /// The submitter's trace context, from `Assign.headers`.
    pub trace: Option<crate::job::TraceContext>,
    /// The checkpoint an earlier attempt stored (`Assign.checkpoint`);
    /// empty for none.
    pub checkpoint: Bytes,
    /// Its parents' outcomes (`Assign.parents`).
    pub parents: Vec<crate::handlers::ParentResult>,
    /// Fires on `CancelJob` (cancelled, timed out, drained) and when the
    /// session is lost: the report would be stale, so stop.
    pub cancel: CancellationToken,
    /// Progress and log lines, sent to jobd over the session
    /// ([`WorkJob::progress`], [`WorkJob::log`]); dropped when the session's
    /// queue is full rather than holding up the job.
    pub notes: crate::handlers::Notes,
}

impl WorkJob {
    /// Reports how far the job got (see [`crate::handlers::JobContext::progress`]).
    pub fn progress(&self, percent: u32, message: &str, details: &[u8]) {
        self.context_notes().progress(percent, message, details);
    }

    /// Appends lines to the job's log.
    pub fn log<S: AsRef<str>>(&self, lines: impl IntoIterator<Item = S>) {
        self.context_notes().log(lines);
    }

    /// Stores where the job got for its next attempt (a `Touch` with the
    /// checkpoint; see [`crate::handlers::JobContext::save_checkpoint`]).
    pub fn save_checkpoint(&self, checkpoint: impl Into<Bytes>) {
        self.context_notes().save_checkpoint(checkpoint);
    }

    fn context_notes(&self) -> crate::handlers::JobContext {
        crate::handlers::JobContext {
            id: uuid::Uuid::nil(),
            kind: String::new(),
            attempt: self.attempt,
            max_attempts: 0,
            payload: Bytes::new(),
            timeout: Duration::ZERO,
            trace: None,
            cancel: self.cancel.clone(),
            notes: self.notes.clone(),
            checkpoint: Bytes::new(),
            parents: Vec::new(),
            ran_on: Default::default(),
        }
    }
}

/// Notes of one attempt as worker messages on the session's queue.
fn session_notes(
    tx: mpsc::Sender<proto::WorkerMessage>,
    job_id: String,
    attempt: u32,
) -> crate::handlers::Notes {
    crate::handlers::Notes::new(move |note| {
        let m = match note {
            crate::handlers::Note::Progress {
                percent,
                message,
                details,
            } => worker_message::Msg::Progress(proto::Progress {
                job_id: job_id.clone(),
                attempt,
                percent,
                message,
                details: details.to_vec(),
            }),
            crate::handlers::Note::Log(lines) => worker_message::Msg::Log(proto::Log {
                job_id: job_id.clone(),
                attempt,
                lines,
            }),
            crate::handlers::Note::Checkpoint(c) => worker_message::Msg::Touch(proto::Touch {
                job_id: job_id.clone(),
                attempt,
                extend_by: None,
                checkpoint: Some(c.to_vec()),
            }),
        };
        let _ = tx.try_send(msg(m));
    })
}

/// Why [`serve`] returned early.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("bad worker options: {0}")]
    Options(String),
    /// The daemon refused the session for good (bad hello, wrong role).
    #[error("jobd refused the worker: {0}")]
    Refused(tonic::Status),
}

enum SessionEnd {
    /// Stopped by the caller.
    Stopped,
    /// The stream broke or could not be opened: connect again.
    Broken(String),
}

/// Serves jobs until `stop` fires. Each job runs `work` on a task of its
/// own; its result is reported as `Complete`, its error as `Fail`
/// (`HandlerError::Permanent` is not retried). On `stop`, jobs being run
/// are finished and reported; jobs assigned after it are given back as
/// retryable failures.
pub async fn serve<F, Fut>(
    opts: WorkerOptions,
    stop: CancellationToken,
    work: F,
) -> Result<(), WorkerError>
where
    F: Fn(WorkJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    if opts.kinds.is_empty() || opts.max_in_flight == 0 {
        return Err(WorkerError::Options(
            "at least one kind and max_in_flight >= 1".into(),
        ));
    }
    let work = Arc::new(work);
    let mut backoff = MIN_BACKOFF;
    loop {
        let began = std::time::Instant::now();
        match session(&opts, &stop, work.clone()).await? {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Broken(why) => {
                tracing::info!(%why, "worker session ended; connecting again");
            }
        }
        // A session that lasted resets the backoff.
        if began.elapsed() > MAX_BACKOFF * 2 {
            backoff = MIN_BACKOFF;
        }
        let jitter = rand::random_range(0.5..1.0);
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn msg(m: worker_message::Msg) -> proto::WorkerMessage {
    proto::WorkerMessage { msg: Some(m) }
}

/// Why a session could not connect (it tries again).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Addr(#[from] tonic::codegen::http::uri::InvalidUri),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

async fn channel(opts: &WorkerOptions) -> Result<Channel, ConnectError> {
    if let Some(endpoint) = &opts.endpoint {
        return Ok(endpoint.connect().await?);
    }
    let addr = &opts.addr;
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Channel::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// One session: hello, then assignments until the stream ends or `stop`.
async fn session<F, Fut>(
    opts: &WorkerOptions,
    stop: &CancellationToken,
    work: Arc<F>,
) -> Result<SessionEnd, WorkerError>
where
    F: Fn(WorkJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    let ch = match channel(opts).await {
        Ok(c) => c,
        Err(e) => return Ok(SessionEnd::Broken(e.to_string())),
    };
    // Outbound: hello, heartbeats, reports. Bounded: at most one report per
    // job in flight, plus heartbeats.
    let (tx, rx) = mpsc::channel(opts.max_in_flight as usize + 16);
    let _ = tx.send(hello(opts)).await;
    let req = with_token(
        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        opts.token.as_deref(),
    )?;
    let mut inbound = match WorkerServiceClient::new(ch).connect(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if refused(&s) => return Err(WorkerError::Refused(s)),
        Err(s) => return Ok(SessionEnd::Broken(s.to_string())),
    };
    // Everything of this session ends with it: the heartbeat task and the
    // jobs (their reports would be stale).
    let ended = stop.child_token();
    let session_over = CancellationToken::new();
    let _guard = session_over.clone().drop_guard();
    let mut jobs: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<(String, u32), CancellationToken> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::channel::<(String, u32)>(opts.max_in_flight as usize + 1);
    let mut heartbeat = None;
    let result = loop {
        let m = tokio::select! {
            m = inbound.message() => m,
            Some(key) = done_rx.recv() => {
                running.remove(&key);
                continue;
            }
            _ = ended.cancelled(), if running.is_empty() => break SessionEnd::Stopped,
        };
        let m = match m {
            Ok(Some(m)) => m,
            Ok(None) => break SessionEnd::Broken("jobd closed the stream".into()),
            Err(s) if refused(&s) => {
                session_over.cancel();
                return Err(WorkerError::Refused(s));
            }
            Err(s) => break SessionEnd::Broken(s.to_string()),
        };
        match m.msg {
            Some(server_message::Msg::Welcome(w)) => {
                let every = w
                    .heartbeat_interval
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(Duration::from_secs(5));
                heartbeat = Some(tokio::spawn(heartbeats(
                    tx.clone(),
                    every,
                    session_over.clone(),
                )));
            }
            Some(server_message::Msg::Assign(mut a)) => {
                let Some(j) = a.job.take() else { continue };
                if stop.is_cancelled() {
                    // Stopping: give it back at once rather than start it.
                    let _ = tx.try_send(msg(give_back(j)));
                    continue;
                }
                let cancel = session_over.child_token();
                running.insert((j.id.clone(), j.attempt), cancel.clone());
                let notes = session_notes(tx.clone(), j.id.clone(), j.attempt);
                let job = work_job(a, j, cancel, notes);
                jobs.spawn(run_job(work.clone(), job, tx.clone(), done_tx.clone()));
            }
            Some(server_message::Msg::Cancel(c)) => {
                if let Some(t) = running.get(&(c.job_id, c.attempt)) {
                    t.cancel();
                }
            }
            Some(server_message::Msg::Ack(_))
            | Some(server_message::Msg::Drain(_))
            | Some(server_message::Msg::TouchAck(_))
            | None => {}
        }
    };
    session_over.cancel();
    jobs.abort_all();
    if let Some(h) = heartbeat {
        h.abort();
    }
    Ok(result)
}

/// The session's first message: who this worker is and what it serves.
fn hello(opts: &WorkerOptions) -> proto::WorkerMessage {
    msg(worker_message::Msg::Hello(proto::Hello {
        worker_id: opts.worker_id.clone(),
        kinds: opts.kinds.clone(),
        max_in_flight: opts.max_in_flight,
        labels: opts.labels.clone(),
    }))
}

/// `req` with `authorization: Bearer <token>`, when there is a token.
fn with_token<T>(
    mut req: tonic::Request<T>,
    token: Option<&str>,
) -> Result<tonic::Request<T>, WorkerError> {
    if let Some(t) = token {
        match format!("Bearer {t}").parse() {
            Ok(v) => {
                req.metadata_mut().insert("authorization", v);
            }
            Err(_) => return Err(WorkerError::Options("token is not a valid header".into())),
        }
    }
    Ok(req)
}

/// A retryable failure that hands an assigned job back unstarted.
fn give_back(j: proto::Job) -> worker_message::Msg {
    worker_message::Msg::Fail(proto::Fail {
        job_id: j.id,
        attempt: j.attempt,
        error: "worker stopping".into(),
        permanent: false,
        retry_after: None,
    })
}

/// The job an assignment gives, with the token that stops it.
fn work_job(
    a: proto::Assign,
    j: proto::Job,
    cancel: CancellationToken,
    notes: crate::handlers::Notes,
) -> WorkJob {
    WorkJob {
        id: j.id,
        kind: j.kind,
        attempt: j.attempt,
        payload: a.payload.into(),
        deadline: a.deadline.and_then(|t| SystemTime::try_from(t).ok()),
        trace: crate::job::TraceContext::from_headers(
            a.headers.get("traceparent").map(String::as_str),
            a.headers.get("tracestate").map(String::as_str),
        ),
        cancel,
        notes,
        checkpoint: a.checkpoint.into(),
        parents: a
            .parents
            .into_iter()
            .filter_map(crate::handlers::ParentResult::from_proto)
            .collect(),
    }
}

/// Runs one job and reports how it ended, unless it was cancelled (the
/// report would be stale); then tells the session it is done.
async fn run_job<F, Fut>(
    work: Arc<F>,
    job: WorkJob,
    tx: mpsc::Sender<proto::WorkerMessage>,
    done: mpsc::Sender<(String, u32)>,
) where
    F: Fn(WorkJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (id, attempt) = (job.id.clone(), job.attempt);
    let cancel = job.cancel.clone();
    let r = tokio::select! {
        r = work(job) => Some(r),
        _ = cancel.cancelled() => None,
    };
    if let Some(r) = r {
        let _ = tx.send(msg(report(id.clone(), attempt, r))).await;
    }
    let _ = done.send((id, attempt)).await;
}

/// `Complete` with the result, or `Fail` saying whether to retry and when.
fn report(job_id: String, attempt: u32, r: Result<Bytes, HandlerError>) -> worker_message::Msg {
    match r {
        Ok(result) => worker_message::Msg::Complete(proto::Complete {
            job_id,
            attempt,
            result: result.to_vec(),
        }),
        Err(e) => {
            let (permanent, after) = match &e {
                HandlerError::Permanent { .. } => (true, None),
                HandlerError::Retryable { after, .. } => (false, *after),
            };
            worker_message::Msg::Fail(proto::Fail {
                job_id,
                attempt,
                error: e.to_string(),
                permanent,
                retry_after: after.and_then(|d| prost_types::Duration::try_from(d).ok()),
            })
        }
    }
}

/// Refusals that connecting again cannot fix.
fn refused(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
    )
}

/// Sends a heartbeat every `every` until the session is over.
async fn heartbeats(
    tx: mpsc::Sender<proto::WorkerMessage>,
    every: Duration,
    over: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = over.cancelled() => return,
        }
        if tx
            .send(msg(worker_message::Msg::Heartbeat(proto::Heartbeat {})))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `jobd work`: serves `opts.kinds` by running `argv` once per job, as the
/// daemon's `command` handler would (payload on stdin, stdout is the
/// result, exit 0 is success, its own process group, SIGTERM then SIGKILL
/// after `kill_grace` on cancel), so that kind's work runs on this machine.
pub async fn serve_command(
    opts: WorkerOptions,
    stop: CancellationToken,
    argv: Vec<String>,
    kill_grace: Duration,
    max_output_bytes: usize,
) -> Result<(), WorkerError> {
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(WorkerError::Options("a command to run is required".into()));
    }
    let handler = Arc::new(crate::handlers::command::CommandHandler {
        argv,
        env: Default::default(),
        working_dir: None,
        permanent_exit_codes: Vec::new(),
        kill_grace,
        max_output_bytes,
    });
    serve(opts, stop, move |job: WorkJob| {
        let handler = handler.clone();
        async move {
            use crate::handlers::Handler;
            let id = uuid::Uuid::try_parse(&job.id)
                .map_err(|e| HandlerError::permanent(format!("bad job id: {e}")))?;
            let timeout = job
                .deadline
                .and_then(|d| d.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(24 * 3600));
            let ctx = crate::handlers::JobContext {
                id,
                kind: job.kind,
                attempt: job.attempt,
                max_attempts: 0,
                payload: job.payload,
                timeout,
                trace: job.trace,
                cancel: job.cancel,
                notes: job.notes,
                checkpoint: job.checkpoint,
                parents: job.parents,
                ran_on: Default::default(),
            };
            handler.run(ctx).await.map(|o| o.result)
        }
    })
    .await
}
