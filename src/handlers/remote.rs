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
//! - a lost session fails every attempt it held ("worker lost").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

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
}

impl Session {
    fn room(&self) -> usize {
        if self.draining {
            0
        } else {
            self.max_in_flight.saturating_sub(self.in_flight.len())
        }
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

    /// A worker's report on `(job, attempt)`: delivered to the attempt if
    /// the session holds it, else stale (returns false).
    pub fn report(&self, session: u64, job: Uuid, attempt: u32, report: Report) -> bool {
        let waiting = self
            .lock()
            .get_mut(&session)
            .and_then(|s| s.in_flight.remove(&(job, attempt)));
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

    /// Assigns the attempt to the session with the most room for its kind;
    /// `None` when no session has room now.
    fn assign(&self, job: &JobContext) -> Option<Assigned> {
        let mut sessions = self.lock();
        // Most room first; a session whose outbox is full is not reading
        // its stream: it is dropped (its attempts fail "worker lost") and
        // the next one is tried, so it cannot stall its kinds.
        let mut candidates: Vec<(usize, u64)> = sessions
            .iter()
            .filter(|(_, s)| s.kinds.contains(&job.kind) && s.room() > 0)
            .map(|(id, s)| (s.room(), *id))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
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
                    ..Default::default()
                }),
                payload: job.payload.to_vec(),
                deadline: Some(deadline.into()),
                headers: super::trace_headers(&job.trace)
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })),
        };
        for (_, id) in candidates {
            let Some(s) = sessions.get_mut(&id) else {
                continue;
            };
            if s.outbox.try_send(Ok(msg.clone())).is_err() {
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
                Err(HandlerError::retryable("stopped"))
            }
        }
    }
}
