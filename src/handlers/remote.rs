//! Remote workers: sessions of worker processes connected over
//! `jobd.v1.WorkerService` (see `api::worker` for the stream itself), and
//! the [`RemoteHandler`] that hands an attempt of a `handler = "remote"`
//! kind to one of them and awaits its report.
//!
//! A remote attempt runs on an engine worker task like any other: timeouts,
//! cancel, drain, retries, fencing and metrics are the engine's. This module
//! only keeps, per session, the attempts it holds (each with the channel its
//! report goes back on), so that:
//! - no session ever holds more than its `max_in_flight` unreported jobs;
//! - a report for an attempt the session no longer holds is `stale`;
//! - a lost session fails every attempt it held ("worker lost");
//! - one bad session cannot drain a kind: attempts go to the session with
//!   the fewest in flight, a retry avoids the session that lost (or timed
//!   out) the attempt before it, a session whose attempts keep timing out is
//!   benched with a growing back-off, and the bytes of assignments queued
//!   towards a session that does not read them are bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::{Handler, HandlerError, JobContext, Output};
use crate::metrics::Metrics;
use crate::proto;

/// Most unreported jobs one session may ask for (`Hello.max_in_flight`).
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Messages queued towards one worker beyond its in-flight jobs (acks,
/// cancels, the welcome, a drain). A worker that lets more pile up is not
/// reading its stream and is dropped as lost.
pub const OUTBOX_SLACK: usize = 64;

/// Bytes of assignments (payloads) queued towards one session and not yet
/// taken by its stream, at most: a worker that never grants flow-control
/// window gets no more work once it holds this much, instead of jobd's
/// memory growing with its `max_in_flight`. One assignment is always let
/// through to an empty queue, however large.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Consecutive attempts timed out on one session before it is benched.
pub const STRIKES_BEFORE_BENCH: u32 = 3;
/// The longest a benched session waits for work (the bench doubles from
/// 1 s with each further timeout).
pub const MAX_BENCH: Duration = Duration::from_secs(60);
/// Jobs remembered with the session that lost their last attempt, at most
/// (cleared when full: the memory is a preference, not a rule).
const LOST_BY_BOUND: usize = 100_000;

/// How an attempt ended, as its worker reported it.
pub type Report = Result<Output, HandlerError>;

/// Where to send a worker's messages; bounded (see [`OUTBOX_SLACK`]).
pub type Outbox = mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>;

/// One connected worker process.
struct Session {
    worker_id: String,
    kinds: Vec<String>,
    max_in_flight: usize,
    labels: HashMap<String, String>,
    address: Option<std::net::SocketAddr>,
    connected_at: SystemTime,
    last_seen: SystemTime,
    /// Attempts assigned and not yet reported, with where their report goes.
    in_flight: HashMap<(Uuid, u32), oneshot::Sender<Report>>,
    outbox: Outbox,
    /// Set on drain: nothing more is assigned.
    draining: bool,
    /// Attempts timed out on this session in a row (a report resets it).
    strikes: u32,
    /// No work before then (see [`STRIKES_BEFORE_BENCH`]).
    benched_until: Option<Instant>,
    /// Bytes of assignments queued in `outbox` not yet taken by the stream
    /// (see [`MAX_QUEUED_BYTES`]); the stream subtracts as it takes them.
    queued_bytes: Arc<AtomicUsize>,
}

impl Session {
    fn room(&self) -> usize {
        if self.draining {
            0
        } else {
            self.max_in_flight.saturating_sub(self.in_flight.len())
        }
    }

    fn benched(&self, now: Instant) -> bool {
        self.benched_until.is_some_and(|t| now < t)
    }

    /// Whether an assignment of `bytes` may be queued now.
    fn takes_bytes(&self, bytes: usize) -> bool {
        let queued = self.queued_bytes.load(Ordering::Acquire);
        queued == 0 || queued + bytes <= MAX_QUEUED_BYTES
    }
}

/// What a caller learns about a session (ListWorkers, tests).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: u64,
    pub worker_id: String,
    pub kinds: Vec<String>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub labels: HashMap<String, String>,
    pub address: Option<std::net::SocketAddr>,
    pub connected_at: SystemTime,
    pub last_seen: SystemTime,
}

/// Every connected session. One mutex: each operation is a few map lookups
/// and never awaits while holding it.
pub struct Workers {
    sessions: Mutex<HashMap<u64, Session>>,
    next_id: AtomicU64,
    heartbeat: Duration,
    max_sessions: usize,
    /// Woken whenever room may have appeared (a session came, a report
    /// freed a place), for handlers waiting for room.
    room: Notify,
    /// Wakes the engine's dispatcher for the same reason: a remote kind's
    /// jobs are claimed only while some session has room.
    waker: OnceLock<mpsc::Sender<()>>,
    /// Set by [`Workers::drain`]: its deadline, for sessions opened after it.
    drain_deadline: Mutex<Option<SystemTime>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// The session that lost (or timed out) each job's last attempt: its
    /// retry goes elsewhere while another session serves the kind.
    lost_by: Mutex<HashMap<Uuid, u64>>,
    /// Reports delivered and not yet committed, by (job, attempt): told
    /// whether the outcome was written, so the worker's ack follows the
    /// commit. At most one per attempt in flight.
    acks: Mutex<HashMap<(Uuid, u32), oneshot::Sender<bool>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("heartbeat", &self.heartbeat)
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{max} worker sessions are open already (workers.max_sessions)")]
pub struct TooManySessions {
    pub max: usize,
}

impl Workers {
    pub fn new(heartbeat: Duration, max_sessions: usize) -> Arc<Workers> {
        Arc::new(Workers {
            sessions: Mutex::default(),
            next_id: AtomicU64::new(1),
            heartbeat,
            max_sessions,
            room: Notify::new(),
            waker: OnceLock::new(),
            drain_deadline: Mutex::new(None),
            metrics: OnceLock::new(),
            lost_by: Mutex::default(),
            acks: Mutex::default(),
        })
    }

    /// How often a worker must speak; silent for 3 of these, it is lost.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Called once by the engine: the dispatcher's wake-up hint channel.
    pub fn connect_engine(&self, waker: mpsc::Sender<()>, metrics: Arc<Metrics>) {
        let _ = self.waker.set(waker);
        let _ = self.metrics.set(metrics);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn room_changed(&self) {
        self.room.notify_waiters();
        if let Some(w) = self.waker.get() {
            let _ = w.try_send(());
        }
    }

    fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.get()
    }

    /// Opens a session; its messages go to `outbox`, the first of them its
    /// `Welcome` (and a `Drain` when jobd drains already). Returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        worker_id: String,
        kinds: Vec<String>,
        max_in_flight: usize,
        labels: HashMap<String, String>,
        address: Option<std::net::SocketAddr>,
        outbox: Outbox,
        queued_bytes: Arc<AtomicUsize>,
    ) -> Result<u64, TooManySessions> {
        let mut sessions = self.lock();
        if sessions.len() >= self.max_sessions {
            return Err(TooManySessions {
                max: self.max_sessions,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Queued under the lock, so before anything can be assigned.
        let _ = outbox.try_send(Ok(proto::ServerMessage {
            msg: Some(proto::server_message::Msg::Welcome(proto::Welcome {
                session_id: id.to_string(),
                heartbeat_interval: prost_types::Duration::try_from(self.heartbeat).ok(),
            })),
        }));
        // A session that said hello while jobd started draining is told too.
        let drain_deadline = *self
            .drain_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(deadline) = drain_deadline {
            let _ = outbox.try_send(Ok(drain_message(deadline)));
        }
        if let Some(m) = self.metrics() {
            m.worker_sessions(&kinds, 1);
        }
        sessions.insert(
            id,
            Session {
                worker_id,
                kinds,
                max_in_flight,
                labels,
                address,
                connected_at: SystemTime::now(),
                last_seen: SystemTime::now(),
                in_flight: HashMap::new(),
                outbox,
                draining: drain_deadline.is_some(),
                strikes: 0,
                benched_until: None,
                queued_bytes,
            },
        );
        drop(sessions);
        self.room_changed();
        Ok(id)
    }

    /// Ends a session. Every attempt it still held fails with "worker lost"
    /// (its report channel closes); `lost` counts it in the metrics.
    pub fn close(&self, id: u64, lost: bool) {
        let mut sessions = self.lock();
        let Some(s) = sessions.remove(&id) else {
            return;
        };
        drop(sessions);
        if let Some(m) = self.metrics() {
            m.worker_sessions(&s.kinds, -1);
        }
        self.remember_lost(s.in_flight.keys().map(|(job, _)| *job), id);
        if lost {
            if let Some(m) = self.metrics() {
                m.worker_lost();
            }
            if !s.in_flight.is_empty() {
                tracing::warn!(worker = %s.worker_id, jobs = s.in_flight.len(), "worker lost; its jobs are retried");
            }
        }
        drop(s);
        self.room_changed();
    }

    /// The worker spoke (any message counts as a heartbeat).
    pub fn seen(&self, session: u64) {
        if let Some(s) = self.lock().get_mut(&session) {
            s.last_seen = SystemTime::now();
        }
    }

    fn remember_lost(&self, jobs: impl Iterator<Item = Uuid>, session: u64) {
        let mut lost = self.lost_by.lock().unwrap_or_else(|p| p.into_inner());
        for job in jobs {
            if lost.len() >= LOST_BY_BOUND {
                lost.clear();
            }
            lost.insert(job, session);
        }
    }

    /// An attempt on `session` timed out: a strike, and the job's retry
    /// avoids this session. The third strike in a row benches it for 1 s,
    /// each further one twice as long (at most [`MAX_BENCH`]).
    fn timed_out(&self, session: u64, job: Uuid) {
        self.remember_lost(std::iter::once(job), session);
        let mut sessions = self.lock();
        let Some(s) = sessions.get_mut(&session) else {
            return;
        };
        s.strikes += 1;
        if s.strikes >= STRIKES_BEFORE_BENCH {
            let doublings = (s.strikes - STRIKES_BEFORE_BENCH).min(6);
            let bench = (Duration::from_secs(1) * (1 << doublings)).min(MAX_BENCH);
            s.benched_until = Some(Instant::now() + bench);
            tracing::warn!(
                worker = %s.worker_id,
                strikes = s.strikes,
                bench = ?bench,
                "worker's attempts keep timing out; it gets no work for a while"
            );
        }
    }

    fn lock_acks(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, u32), oneshot::Sender<bool>>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker's report on `(job, attempt)`, delivered to the attempt if
    /// the session holds it. Resolves once its outcome is committed: true
    /// when it counted, false when it was stale (at once) or changed
    /// nothing or could not be written. The ack to the worker waits for it.
    pub fn report_and_wait(
        &self,
        session: u64,
        job: Uuid,
        attempt: u32,
        report: Report,
    ) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        // Registered before delivery: the commit may come quickly.
        let replaced = self.lock_acks().insert((job, attempt), tx);
        drop(replaced);
        if !self.report(session, job, attempt, report) {
            if let Some(tx) = self.lock_acks().remove(&(job, attempt)) {
                let _ = tx.send(false);
            }
        }
        rx
    }

    /// Whether `session` holds `(job, attempt)` (assigned, not reported).
    pub fn holds(&self, session: u64, job: Uuid, attempt: u32) -> bool {
        self.lock()
            .get(&session)
            .is_some_and(|s| s.in_flight.contains_key(&(job, attempt)))
    }

    /// The engine committed (or gave up on) the outcome of `(job, attempt)`.
    pub fn outcome_written(&self, job: Uuid, attempt: u32, counted: bool) {
        if let Some(tx) = self.lock_acks().remove(&(job, attempt)) {
            let _ = tx.send(counted);
        }
    }

    /// A worker's report on `(job, attempt)`: delivered to the attempt if
    /// the session holds it, else stale (returns false).
    pub fn report(&self, session: u64, job: Uuid, attempt: u32, report: Report) -> bool {
        let waiting = self.lock().get_mut(&session).and_then(|s| {
            let w = s.in_flight.remove(&(job, attempt));
            if w.is_some() {
                // It answers: whatever timed out before, it works now.
                s.strikes = 0;
                s.benched_until = None;
            }
            w
        });
        let delivered = match waiting {
            Some(tx) => tx.send(report).is_ok(),
            None => false,
        };
        if !delivered {
            if let Some(m) = self.metrics() {
                m.worker_stale_report();
            }
        }
        self.room_changed();
        delivered
    }

    /// Places (`max_in_flight`) of the sessions that serve `kind` and take
    /// work. A session serving several kinds counts for each: claims may
    /// then take more than fits at once, and the extra attempts wait here
    /// for a place (never beyond `max_in_flight`).
    pub fn capacity(&self, kind: &str) -> usize {
        self.lock()
            .values()
            .filter(|s| !s.draining && s.kinds.iter().any(|k| k == kind))
            .map(|s| s.max_in_flight)
            .sum()
    }

    /// Free places for `kind` among sessions that serve it.
    pub fn room(&self, kind: &str) -> usize {
        self.lock()
            .values()
            .filter(|s| s.kinds.iter().any(|k| k == kind))
            .map(Session::room)
            .sum()
    }

    /// Drain: tells every session to report what it holds by `deadline`,
    /// and assigns nothing more.
    pub fn drain(&self, deadline: SystemTime) {
        let mut sessions = self.lock();
        *self
            .drain_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        for s in sessions.values_mut() {
            s.draining = true;
            let _ = s.outbox.try_send(Ok(drain_message(deadline)));
        }
    }

    /// Every session, for ListWorkers and tests.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .lock()
            .iter()
            .map(|(id, s)| SessionInfo {
                session_id: *id,
                worker_id: s.worker_id.clone(),
                kinds: s.kinds.clone(),
                in_flight: s.in_flight.len(),
                max_in_flight: s.max_in_flight,
                labels: s.labels.clone(),
                address: s.address,
                connected_at: s.connected_at,
                last_seen: s.last_seen,
            })
            .collect();
        out.sort_by_key(|s| s.session_id);
        out
    }

    /// The sessions that may take an attempt of `job` now, best first:
    /// fewest in flight (so a session announcing a huge `max_in_flight`
    /// does not take every attempt), then most room. The session that lost
    /// the job's last attempt and benched sessions are left out while
    /// another session serves the kind (the attempt then waits for room
    /// rather than going back to them); a session with `bytes` of
    /// assignments it has not taken yet is left out too.
    fn candidates(
        &self,
        sessions: &HashMap<u64, Session>,
        job: &JobContext,
        bytes: usize,
    ) -> Vec<u64> {
        let now = Instant::now();
        let avoid = self
            .lost_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.id)
            .copied();
        let serving: Vec<(&u64, &Session)> = sessions
            .iter()
            .filter(|(_, s)| s.kinds.contains(&job.kind) && !s.draining)
            .collect();
        let good = |id: &u64, s: &Session| Some(*id) != avoid && !s.benched(now);
        let any_good = serving.iter().any(|(id, s)| good(id, s));
        let mut out: Vec<(bool, usize, usize, u64)> = serving
            .into_iter()
            .filter(|(id, s)| s.room() > 0 && s.takes_bytes(bytes) && (!any_good || good(id, s)))
            .map(|(id, s)| (s.strikes > 0, s.in_flight.len(), usize::MAX - s.room(), *id))
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, _, _, id)| id).collect()
    }

    /// Assigns the attempt to the best session for it (see
    /// [`Workers::candidates`]); `None` when none may take it now.
    fn assign(&self, job: &JobContext) -> Option<Assigned> {
        let mut sessions = self.lock();
        let deadline = SystemTime::now() + job.timeout;
        let msg = proto::ServerMessage {
            msg: Some(proto::server_message::Msg::Assign(proto::Assign {
                job: Some(proto::Job {
                    id: job.id.to_string(),
                    kind: job.kind.clone(),
                    state: proto::JobState::Running as i32,
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    payload_size: job.payload.len() as u64,
                    checkpoint_size: job.checkpoint.len() as u64,
                    ..Default::default()
                }),
                payload: job.payload.to_vec(),
                deadline: Some(deadline.into()),
                headers: super::trace_headers(&job.trace)
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                checkpoint: job.checkpoint.to_vec(),
                parents: job
                    .parents
                    .iter()
                    .map(super::ParentResult::to_proto)
                    .collect(),
            })),
        };
        let bytes = prost::Message::encoded_len(&msg);
        // A session whose outbox is full is not reading its stream: it is
        // dropped (its attempts fail "worker lost") and the next one is
        // tried, so it cannot stall its kinds.
        for id in self.candidates(&sessions, job, bytes) {
            let Some(s) = sessions.get_mut(&id) else {
                continue;
            };
            s.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            if s.outbox.try_send(Ok(msg.clone())).is_err() {
                s.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                if let Some(gone) = sessions.remove(&id) {
                    tracing::warn!(worker = %gone.worker_id, "worker does not read its stream; session dropped");
                    if let Some(m) = self.metrics() {
                        m.worker_sessions(&gone.kinds, -1);
                        m.worker_lost();
                    }
                }
                continue;
            }
            let (tx, rx) = oneshot::channel();
            s.in_flight.insert((job.id, job.attempt), tx);
            job.ran_on.set(&s.worker_id);
            if let Some(m) = self.metrics() {
                m.worker_assigned(&job.kind);
            }
            return Some(Assigned {
                session: id,
                report: rx,
            });
        }
        None
    }

    /// The attempt ended on jobd's side (cancel, timeout, drain): forget it
    /// and tell its worker to stop.
    fn revoke(&self, session: u64, job: &JobContext, reason: &str) {
        let mut sessions = self.lock();
        if let Some(s) = sessions.get_mut(&session) {
            if s.in_flight.remove(&(job.id, job.attempt)).is_some() {
                let msg = proto::ServerMessage {
                    msg: Some(proto::server_message::Msg::Cancel(proto::CancelJob {
                        job_id: job.id.to_string(),
                        attempt: job.attempt,
                        reason: reason.to_string(),
                    })),
                };
                let _ = s.outbox.try_send(Ok(msg));
            }
        }
        drop(sessions);
        self.room_changed();
    }
}

fn drain_message(deadline: SystemTime) -> proto::ServerMessage {
    proto::ServerMessage {
        msg: Some(proto::server_message::Msg::Drain(proto::Drain {
            deadline: Some(deadline.into()),
        })),
    }
}

/// An attempt stopped this close to its timeout counts as timed out.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// An attempt handed to a session.
struct Assigned {
    session: u64,
    report: oneshot::Receiver<Report>,
}

/// Runs attempts of `handler = "remote"` kinds on connected workers.
#[derive(Debug)]
pub struct RemoteHandler {
    pub workers: Arc<Workers>,
    pub max_result_bytes: usize,
}

#[async_trait]
impl Handler for RemoteHandler {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        // Claims follow the room, so there is nearly always a place; if a
        // session left in between, wait for one (the attempt's timeout or a
        // cancel still ends the wait).
        let assigned = loop {
            let room = self.workers.room.notified();
            if let Some(a) = self.workers.assign(&job) {
                break a;
            }
            tokio::select! {
                _ = room => {}
                _ = job.cancel.cancelled() => {
                    return Err(HandlerError::retryable("no worker took the job before it was stopped"));
                }
            }
        };
        let Assigned { session, report } = assigned;
        let started = Instant::now();
        tokio::select! {
            r = report => match r {
                Ok(Ok(mut out)) => {
                    if out.result.len() > self.max_result_bytes {
                        out.result = Bytes::copy_from_slice(&out.result[..self.max_result_bytes]);
                    }
                    Ok(out)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(HandlerError::retryable("worker lost")),
            },
            _ = job.cancel.cancelled() => {
                self.workers.revoke(session, &job, "attempt stopped by jobd (cancelled, timed out or draining)");
                // Stopped at its deadline: the engine's timeout, a strike
                // against the session (a cancel or a drain is not).
                if started.elapsed() + TIMEOUT_SLACK >= job.timeout {
                    self.workers.timed_out(session, job.id);
                }
                Err(HandlerError::retryable("stopped"))
            }
        }
    }
}
