//! `jobd.v1.WorkerService`: the stream a remote worker process holds. The
//! first message must be `hello`; after it, every message the worker sends
//! counts as a heartbeat, reports are fenced by (job, attempt) and answered
//! with a `ReportAck`, and a session silent for 3 heartbeat intervals, or
//! whose stream ends, is lost (see [`crate::handlers::remote`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::error::ApiError;
use super::places::{ClientKey, Places};
use super::validate::{MAX_LABELS, MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES};
use crate::config::HandlerSpec;
use crate::engine::Engine;
use crate::handlers::remote::{Outbox, Workers, MAX_IN_FLIGHT, OUTBOX_SLACK};
use crate::handlers::{HandlerError, Output};
use crate::proto::{self, server_message, worker_message, worker_service_server::WorkerService};
use crate::transport::activity::BytesSeen;
use crate::transport::auth::Caller;

/// Longest `worker_id`.
pub const MAX_WORKER_ID_BYTES: usize = 256;
/// Most kinds one session serves.
pub const MAX_WORKER_KINDS: usize = 64;
/// Longest error text kept from a `Fail` (the job's `last_error`).
pub const MAX_FAIL_ERROR_BYTES: usize = 4096;
/// Most lines in one `Log` message.
pub const MAX_LOG_LINES_PER_MESSAGE: usize = 1000;
/// The same bounds as local handlers': `Progress.message`,
/// `Progress.details`, a log line, `Touch.checkpoint`.
pub use crate::handlers::{
    MAX_CHECKPOINT_BYTES, MAX_LOG_LINE_BYTES, MAX_PROGRESS_DETAILS_BYTES,
    MAX_PROGRESS_MESSAGE_BYTES,
};

/// Longest `Fail.retry_after` honoured (as the http handler caps
/// Retry-After): a worker cannot park a job for years.
pub use crate::handlers::MAX_RETRY_AFTER;
/// Silent intervals after which a session is lost.
pub const LOST_AFTER_INTERVALS: u32 = 3;

pub struct WorkerApi {
    engine: Arc<Engine>,
    workers: Arc<Workers>,
    /// Sessions per client (token, or peer IP without auth):
    /// `workers.max_sessions_per_client`.
    per_client: Places<ClientKey>,
    /// Ends every session when the daemon stops (after drain).
    streams_stop: CancellationToken,
}

impl std::fmt::Debug for WorkerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerApi").finish_non_exhaustive()
    }
}

impl WorkerApi {
    pub fn new(
        engine: Arc<Engine>,
        workers: Arc<Workers>,
        max_sessions_per_client: usize,
        streams_stop: CancellationToken,
    ) -> Self {
        WorkerApi {
            engine,
            workers,
            per_client: Places::new(max_sessions_per_client, "per client"),
            streams_stop,
        }
    }

    /// Checks a hello against DESIGN.md's rules for bad input.
    fn check_hello(&self, h: &proto::Hello) -> Result<(), ApiError> {
        if h.worker_id.len() > MAX_WORKER_ID_BYTES || h.worker_id.contains('\0') {
            return Err(ApiError::invalid(
                "hello.worker_id",
                format!("at most {MAX_WORKER_ID_BYTES} bytes, no NUL"),
            ));
        }
        if h.kinds.is_empty() || h.kinds.len() > MAX_WORKER_KINDS {
            return Err(ApiError::invalid(
                "hello.kinds",
                format!("1 to {MAX_WORKER_KINDS} kinds"),
            ));
        }
        for (i, k) in h.kinds.iter().enumerate() {
            match self.engine.kind(k) {
                Some(s) if matches!(s.handler, HandlerSpec::Remote) => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("hello.kinds[{i}]"),
                        format!("kind {k:?} is not declared handler = \"remote\""),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        format!("hello.kinds[{i}]"),
                        format!("unknown kind {k:?}"),
                    ))
                }
            }
        }
        if h.max_in_flight == 0 || h.max_in_flight > MAX_IN_FLIGHT {
            return Err(ApiError::invalid(
                "hello.max_in_flight",
                format!("must be 1 to {MAX_IN_FLIGHT}"),
            ));
        }
        if h.labels.len() > MAX_LABELS
            || h.labels.iter().any(|(k, v)| {
                k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES
            })
        {
            return Err(ApiError::invalid(
                "hello.labels",
                format!(
                    "at most {MAX_LABELS} labels, keys 1 to {MAX_LABEL_KEY_BYTES} bytes, values at most {MAX_LABEL_VALUE_BYTES}"
                ),
            ));
        }
        Ok(())
    }
}

fn message(msg: server_message::Msg) -> Result<proto::ServerMessage, Status> {
    Ok(proto::ServerMessage { msg: Some(msg) })
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// A worker's report as the engine takes it; `None` for a malformed id.
fn report(msg: worker_message::Msg) -> Option<(String, u32, Result<Output, HandlerError>)> {
    match msg {
        worker_message::Msg::Complete(c) => Some((
            c.job_id,
            c.attempt,
            Ok(Output {
                result: c.result.into(),
            }),
        )),
        worker_message::Msg::Fail(f) => {
            let error = cut(f.error, MAX_FAIL_ERROR_BYTES);
            let e = if f.permanent {
                HandlerError::permanent(error)
            } else {
                HandlerError::Retryable {
                    message: error,
                    // Negative or past the proto range: no delay of its own.
                    after: f
                        .retry_after
                        .and_then(|d| Duration::try_from(d).ok())
                        .map(|d| d.min(MAX_RETRY_AFTER)),
                }
            };
            Some((f.job_id, f.attempt, Err(e)))
        }
        _ => None,
    }
}

/// A worker's `Progress` or `Log`: checked against the bounds (a message
/// past one ends the stream with INVALID_ARGUMENT), then stored for the
/// attempt if this session holds it (otherwise it changes nothing).
async fn long_running(
    engine: &Arc<Engine>,
    workers: &Workers,
    session: u64,
    outbox: &Outbox,
    msg: worker_message::Msg,
) -> Result<(), Status> {
    match msg {
        worker_message::Msg::Touch(t) => {
            let extend_by = t
                .extend_by
                .map(Duration::try_from)
                .transpose()
                .map_err(|_| ApiError::invalid("touch.extend_by", "must not be negative"))?
                .unwrap_or_default();
            if t.checkpoint
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CHECKPOINT_BYTES)
            {
                let m = format!("at most {MAX_CHECKPOINT_BYTES} bytes");
                return Err(ApiError::invalid("touch.checkpoint", m).into());
            }
            let mut deadline = match held(workers, session, &t.job_id, t.attempt) {
                Some(id) => engine.touch(id, t.attempt, extend_by).await,
                None => None,
            };
            // The ack waits for the checkpoint's commit: not stale means kept.
            if let (Some(at), Some(c)) = (deadline, t.checkpoint) {
                let id = Uuid::try_parse(&t.job_id).ok();
                let kept = match id {
                    Some(id) => engine.save_checkpoint(id, t.attempt, c.into()).await,
                    None => false,
                };
                deadline = kept.then_some(at);
            }
            let ack = message(server_message::Msg::TouchAck(proto::TouchAck {
                job_id: t.job_id,
                attempt: t.attempt,
                deadline: deadline.map(crate::api::convert::timestamp),
                stale: deadline.is_none(),
            }));
            let _ = outbox.try_send(ack);
        }
        worker_message::Msg::Progress(p) => {
            if p.percent > 100 {
                return Err(ApiError::invalid("progress.percent", "0 to 100").into());
            }
            if p.message.len() > MAX_PROGRESS_MESSAGE_BYTES {
                let m = format!("at most {MAX_PROGRESS_MESSAGE_BYTES} bytes");
                return Err(ApiError::invalid("progress.message", m).into());
            }
            if p.details.len() > MAX_PROGRESS_DETAILS_BYTES {
                let m = format!("at most {MAX_PROGRESS_DETAILS_BYTES} bytes");
                return Err(ApiError::invalid("progress.details", m).into());
            }
            let Some(id) = held(workers, session, &p.job_id, p.attempt) else {
                return Ok(());
            };
            let progress = crate::job::Progress {
                percent: p.percent,
                message: p.message,
                details: p.details.into(),
                updated_at: 0,
            };
            engine.progress(id, p.attempt, progress);
        }
        worker_message::Msg::Log(l) => {
            if l.lines.len() > MAX_LOG_LINES_PER_MESSAGE {
                let m = format!("at most {MAX_LOG_LINES_PER_MESSAGE} lines a message");
                return Err(ApiError::invalid("log.lines", m).into());
            }
            if let Some(i) = l.lines.iter().position(|x| x.len() > MAX_LOG_LINE_BYTES) {
                let m = format!("at most {MAX_LOG_LINE_BYTES} bytes a line");
                return Err(ApiError::invalid(format!("log.lines[{i}]"), m).into());
            }
            let Some(id) = held(workers, session, &l.job_id, l.attempt) else {
                return Ok(());
            };
            if let Err(e) = engine.append_logs(id, l.attempt, l.lines).await {
                tracing::debug!(job = %id, error = %e, "log lines not written");
            }
        }
        _ => {}
    }
    Ok(())
}

/// The job id of `(job_id, attempt)` if this session holds that attempt.
fn held(workers: &Workers, session: u64, job_id: &str, attempt: u32) -> Option<Uuid> {
    let id = Uuid::try_parse(job_id).ok()?;
    workers.holds(session, id, attempt).then_some(id)
}

/// Longest an ack waits for its outcome's commit (the completion path
/// gives up on a group well before); then it says stale.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// How long a session ended by the drain waits for the acks still on their
/// way before it sends "shutting down", which ends the stream. The drain
/// has already waited for the outcomes' commits, so they come at once; only
/// an outcome the store gave up on keeps its ack waiting, and this stays
/// well inside the server's close timeout (`SERVER_CLOSE_TIMEOUT`, 5 s).
const ACKS_AT_STOP: Duration = Duration::from_secs(2);

/// A session's ack tasks. When the session's task ends (a panic included)
/// the ones still waiting go on alone: a worker that closed its side of the
/// stream may still read them.
struct Acks(JoinSet<()>);

impl Drop for Acks {
    fn drop(&mut self) {
        self.0.detach_all();
    }
}

/// Sends the ack of `(job_id, attempt)` once its outcome is committed, from
/// a task of `acks`, so the session goes on reading meanwhile.
fn ack_when_written(
    acks: &mut JoinSet<()>,
    written: tokio::sync::oneshot::Receiver<bool>,
    outbox: &Outbox,
    job_id: String,
    attempt: u32,
) {
    let outbox = outbox.clone();
    acks.spawn(async move {
        let counted = tokio::time::timeout(ACK_WAIT, written)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        ack(&outbox, job_id, attempt, counted);
    });
}

/// Queues a `ReportAck`; false when the worker's outbox is full.
fn ack(outbox: &Outbox, job_id: String, attempt: u32, counted: bool) -> bool {
    let ack = message(server_message::Msg::Ack(proto::ReportAck {
        job_id,
        attempt,
        stale: !counted,
    }));
    outbox.try_send(ack).is_ok()
}

/// How often a session's silence is looked at, per heartbeat interval.
const SILENCE_CHECKS_PER_INTERVAL: u32 = 4;
/// A silence check this late means the daemon itself did not run (stopped,
/// or starved): the gap is not held against the worker.
const STALL: Duration = Duration::from_secs(1);

/// Where a session runs: the engine, the sessions, its id, its outbox and
/// the daemon's stop for streams.
struct SessionAt<'a> {
    engine: &'a Arc<Engine>,
    workers: &'a Workers,
    session: u64,
    outbox: &'a Outbox,
    stop: &'a CancellationToken,
}

/// Reads one session's messages until it ends; returns whether it was lost
/// (silent, broken, or closed by the worker) rather than ended by jobd.
///
/// Silence is time with no bytes from the worker (a large report still
/// uploading is not silence) while the daemon itself ran: a check that
/// comes late (the daemon was stopped or starved) moves the last sign of
/// life forward by the delay, and a session found silent is looked at
/// once more after its queued input had a chance to be read.
async fn serve_session(
    at: SessionAt<'_>,
    mut inbound: Streaming<proto::WorkerMessage>,
    seen: Option<BytesSeen>,
    acks: &mut JoinSet<()>,
) -> bool {
    let SessionAt {
        engine,
        workers,
        session,
        outbox,
        stop,
    } = at;
    let interval = workers.heartbeat_interval();
    let silent = interval * LOST_AFTER_INTERVALS;
    let every = interval / SILENCE_CHECKS_PER_INTERVAL;
    let seen = seen.unwrap_or_else(BytesSeen::detached);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = tokio::time::Instant::now();
    let mut second_look = false;
    loop {
        let next = tokio::select! {
            r = inbound.message() => r,
            _ = ticks.tick() => {
                let now = tokio::time::Instant::now();
                let late = now.duration_since(last_tick).saturating_sub(every);
                last_tick = now;
                if late > every.max(STALL) {
                    // The daemon did not run for a while: not the worker's silence.
                    tracing::debug!(session, ?late, "silence check came late; not counted");
                    seen.touch();
                    continue;
                }
                if seen.last().elapsed() < silent {
                    second_look = false;
                    continue;
                }
                if !second_look {
                    // Queued input may not have been read yet: look again.
                    second_look = true;
                    continue;
                }
                tracing::info!(
                    session,
                    "worker silent for {LOST_AFTER_INTERVALS} heartbeat intervals"
                );
                return true;
            }
            _ = stop.cancelled() => return false,
            _ = outbox.closed() => return true,
            Some(_) = acks.join_next(), if !acks.is_empty() => continue,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return true,
            Err(status) => {
                tracing::debug!(session, %status, "worker stream broke");
                return true;
            }
        };
        seen.touch();
        workers.seen(session);
        let Some(msg) = msg.msg else { continue };
        if let worker_message::Msg::Heartbeat(_) = msg {
            continue;
        }
        if let worker_message::Msg::Hello(_) = msg {
            // A second hello changes nothing; the session stays as opened.
            continue;
        }
        if matches!(
            msg,
            worker_message::Msg::Progress(_)
                | worker_message::Msg::Log(_)
                | worker_message::Msg::Touch(_)
        ) {
            if let Err(status) = long_running(engine, workers, session, outbox, msg).await {
                let _ = outbox.try_send(Err(status));
                return true;
            }
            continue;
        }
        let Some((job_id, attempt, outcome)) = report(msg) else {
            continue;
        };
        let Ok(id) = Uuid::try_parse(&job_id) else {
            if !ack(outbox, job_id, attempt, false) {
                tracing::info!(session, "worker does not read its stream; dropped");
                return true;
            }
            continue;
        };
        // The ack follows the commit of the outcome (a non-stale ack is a
        // durability promise). At most one per attempt in flight.
        let written = workers.report_and_wait(session, id, attempt, outcome);
        ack_when_written(acks, written, outbox, job_id, attempt);
    }
}

type ConnectStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<proto::ServerMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<ConnectStream>, Status> {
        if !self.engine.is_accepting() {
            return Err(ApiError::Draining.into());
        }
        let address = request.remote_addr();
        let seen = request.extensions().get::<BytesSeen>().cloned();
        // Held for the session's life.
        let client_place = ClientKey::of(request.extensions().get::<Caller>(), address)
            .map(|k| {
                self.per_client
                    .take(k)
                    .map_err(|_| ApiError::TooManySessionsPerClient {
                        max: self.per_client.max(),
                    })
            })
            .transpose()?;
        let mut inbound = request.into_inner();
        let silent = self.workers.heartbeat_interval() * LOST_AFTER_INTERVALS;
        let first = match tokio::time::timeout(silent, inbound.message()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ApiError::invalid(
                    "hello",
                    format!("no hello within {silent:?} (3 heartbeat intervals)"),
                )
                .into())
            }
        };
        let hello = match first.and_then(|m| m.msg) {
            Some(worker_message::Msg::Hello(h)) => h,
            _ => return Err(ApiError::invalid("hello", "the first message must be hello").into()),
        };
        self.check_hello(&hello)?;
        let max_in_flight = hello.max_in_flight as usize;
        let (tx, rx) = mpsc::channel(max_in_flight + OUTBOX_SLACK);
        // Assignments' bytes not yet taken by the stream (the worker's
        // flow-control window): bounded per session, see MAX_QUEUED_BYTES.
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        // `open` queues the Welcome (with the session id) first.
        let labels: HashMap<String, String> = hello.labels.into_iter().collect();
        let worker_id = hello.worker_id.clone();
        let session = self
            .workers
            .open(
                hello.worker_id,
                hello.kinds,
                max_in_flight,
                labels,
                address,
                tx.clone(),
                queued_bytes.clone(),
            )
            .map_err(|e| ApiError::TooManySessions { max: e.max })?;
        tracing::info!(session, worker = %worker_id, max_in_flight, "worker connected");
        let (workers, stop) = (self.workers.clone(), self.streams_stop.clone());
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let _client_place = client_place;
            let mut acks = Acks(JoinSet::new());
            let at = SessionAt {
                engine: &engine,
                workers: &workers,
                session,
                outbox: &tx,
                stop: &stop,
            };
            let lost = serve_session(at, inbound, seen, &mut acks.0).await;
            workers.close(session, lost);
            if stop.is_cancelled() {
                // A report the drain saw committed is acked before the
                // stream ends (the ack and the drain's end race otherwise).
                let all = async { while acks.0.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(ACKS_AT_STOP, all).await;
                let _ = tx.try_send(Err(Status::unavailable("jobd is shutting down")));
                // The stream ends with that error: later acks cannot reach it.
                acks.0.abort_all();
            }
        });
        let out = ReceiverStream::new(rx).map(move |m| {
            if let Ok(proto::ServerMessage {
                msg: Some(server_message::Msg::Assign(_)),
            }) = &m
            {
                let bytes = m.as_ref().map_or(0, prost::Message::encoded_len);
                queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
            m
        });
        Ok(Response::new(Box::pin(out)))
    }
}
