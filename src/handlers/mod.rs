//! What a job does. A [`Handler`] per kind, looked up in a [`Registry`]
//! built from the config's kinds (clients pick a kind, never a command).
//! Library users can register their own handlers.

pub mod builtin;
pub mod command;
pub mod http;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{HandlerSpec, KindSettings};

/// What a handler gets for one attempt.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: Uuid,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload: Bytes,
    /// The attempt's timeout (remote workers get it as a deadline).
    pub timeout: Duration,
    /// The submitter's W3C trace context: `TRACEPARENT`/`TRACESTATE` for a
    /// command, `traceparent`/`tracestate` headers for http and remote.
    pub trace: Option<crate::job::TraceContext>,
    /// Fires when the attempt must stop (cancel, timeout, drain). Handlers
    /// that hold outside resources should watch it and clean up; the engine
    /// stops waiting for the handler either way.
    pub cancel: CancellationToken,
    /// Where [`JobContext::progress`], [`JobContext::log`] and
    /// [`JobContext::save_checkpoint`] go.
    pub notes: Notes,
    /// The checkpoint an earlier attempt stored; empty for none.
    pub checkpoint: Bytes,
    /// Its parents' outcomes (depends_on order), results inlined up to
    /// [`MAX_PARENT_RESULTS_BYTES`] in all.
    pub parents: Vec<ParentResult>,
    /// Where the attempt ran, for its history: a handler that hands the
    /// work elsewhere (remote) names the worker here.
    pub ran_on: RanOn,
}

/// Where an attempt ran: set once by the handler that knows; "local"
/// otherwise.
#[derive(Debug, Clone, Default)]
pub struct RanOn(Arc<std::sync::OnceLock<String>>);

impl RanOn {
    pub fn set(&self, worker: &str) {
        let _ = self.0.set(worker.to_string());
    }

    pub fn name(&self) -> String {
        self.0.get().cloned().unwrap_or_else(|| "local".into())
    }
}

/// Parents' results inlined for one attempt, in all; past it the rest are
/// named with `omitted` set (GetStatus reads them).
pub const MAX_PARENT_RESULTS_BYTES: usize = 1024 * 1024;

/// One parent's outcome, handed to its child's attempt (fan-in).
#[derive(Debug, Clone, PartialEq)]
pub struct ParentResult {
    pub id: Uuid,
    pub kind: String,
    pub state: crate::job::JobState,
    pub result: Bytes,
    /// The result was not inlined (over the attempt's bound).
    pub omitted: bool,
}

impl ParentResult {
    pub fn to_proto(&self) -> crate::proto::ParentResult {
        crate::proto::ParentResult {
            id: self.id.to_string(),
            kind: self.kind.clone(),
            state: self.state.to_proto() as i32,
            result: self.result.to_vec(),
            result_omitted: self.omitted,
        }
    }

    /// A remote worker's view of `Assign.parents`; `None` for a malformed
    /// id.
    pub fn from_proto(p: crate::proto::ParentResult) -> Option<ParentResult> {
        let state = crate::proto::JobState::try_from(p.state).ok();
        Some(ParentResult {
            id: Uuid::try_parse(&p.id).ok()?,
            kind: p.kind,
            state: state
                .and_then(crate::job::JobState::from_proto)
                .unwrap_or(crate::job::JobState::Succeeded),
            result: p.result.into(),
            omitted: p.result_omitted,
        })
    }

    /// The parents of a job as its attempt gets them: `jobs` in order,
    /// results inlined while they fit in [`MAX_PARENT_RESULTS_BYTES`].
    pub fn from_jobs(jobs: impl IntoIterator<Item = crate::job::Job>) -> Vec<ParentResult> {
        let mut budget = MAX_PARENT_RESULTS_BYTES;
        jobs.into_iter()
            .map(|j| {
                let fits = j.result.len() <= budget;
                if fits {
                    budget -= j.result.len();
                }
                ParentResult {
                    id: j.id,
                    kind: j.kind,
                    state: j.state,
                    result: if fits { j.result } else { Bytes::new() },
                    omitted: !fits,
                }
            })
            .collect()
    }
}

/// Longest progress message, in bytes (longer ones are cut).
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 256;
/// Longest progress details, in bytes (longer ones are dropped).
pub const MAX_PROGRESS_DETAILS_BYTES: usize = 4096;
/// Longest log line, in bytes (longer ones are cut).
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Largest checkpoint, in bytes (a remote worker's larger one ends its
/// session with INVALID_ARGUMENT; a local handler's is not kept).
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;

/// What an attempt says while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// How far it got (the engine keeps the latest, coalesced).
    Progress {
        percent: u32,
        message: String,
        details: Bytes,
    },
    /// Lines for the job's log.
    Log(Vec<String>),
    /// Where the attempt got, for the next attempt to resume from.
    Checkpoint(Bytes),
}

/// Where an attempt's notes go: the engine stores them for the attempt
/// that runs (a remote worker sends its own over its session).
#[derive(Clone)]
pub struct Notes(Arc<dyn Fn(Note) + Send + Sync>);

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notes")
    }
}

impl Notes {
    pub fn new(f: impl Fn(Note) + Send + Sync + 'static) -> Notes {
        Notes(Arc::new(f))
    }

    /// Notes that go nowhere.
    pub fn none() -> Notes {
        Notes::new(|_| {})
    }

    pub fn send(&self, note: Note) {
        (self.0)(note);
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    let mut at = s.len().min(max);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

impl JobContext {
    /// Reports how far the attempt got: `percent` (capped at 100), a short
    /// message (cut to 256 bytes) and details (dropped past 4 KiB).
    pub fn progress(&self, percent: u32, message: &str, details: &[u8]) {
        let details = if details.len() > MAX_PROGRESS_DETAILS_BYTES {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(details)
        };
        self.notes.send(Note::Progress {
            percent: percent.min(100),
            message: cut_str(message, MAX_PROGRESS_MESSAGE_BYTES).to_string(),
            details,
        });
    }

    /// Appends lines to the job's log (each cut to 4 KiB).
    pub fn log<S: AsRef<str>>(&self, lines: impl IntoIterator<Item = S>) {
        let lines: Vec<String> = lines
            .into_iter()
            .map(|l| cut_str(l.as_ref(), MAX_LOG_LINE_BYTES).to_string())
            .collect();
        if !lines.is_empty() {
            self.notes.send(Note::Log(lines));
        }
    }

    /// Stores where the attempt got, for the next attempt (its
    /// [`JobContext::checkpoint`]); written in order with the log lines,
    /// before the attempt's outcome. One over [`MAX_CHECKPOINT_BYTES`] is
    /// not kept (a log line says so).
    pub fn save_checkpoint(&self, checkpoint: impl Into<Bytes>) {
        let checkpoint = checkpoint.into();
        if checkpoint.len() > MAX_CHECKPOINT_BYTES {
            self.log([format!(
                "jobd: checkpoint of {} bytes not kept (at most {MAX_CHECKPOINT_BYTES})",
                checkpoint.len()
            )]);
            return;
        }
        self.notes.send(Note::Checkpoint(checkpoint));
    }
}

/// The trace context as the headers an attempt carries (`http` kinds and
/// remote workers' `Assign.headers`); none without a context.
pub fn trace_headers(
    trace: &Option<crate::job::TraceContext>,
) -> impl Iterator<Item = (&'static str, String)> + '_ {
    trace.iter().flat_map(|t| {
        let state = (!t.tracestate.is_empty()).then(|| ("tracestate", t.tracestate.clone()));
        std::iter::once(("traceparent", t.traceparent.clone())).chain(state)
    })
}

/// A successful attempt's output; the engine caps it at the kind's
/// `max_result_bytes`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub result: Bytes,
}

/// Longest retry delay a handler may ask for (`HandlerError::Retryable`'s
/// `after`: a worker's `Fail.retry_after`, an http kind's Retry-After); the
/// engine waits this long for a longer one, so no job parks for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed attempt. The retry decision lives in the type.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Try again (after `after` if given, else after the kind's backoff).
    #[error("{message}")]
    Retryable {
        message: String,
        after: Option<Duration>,
    },
    /// Do not try again: the job goes straight to FAILED.
    #[error("{message}")]
    Permanent { message: String },
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            after: None,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            message: message.into(),
        }
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError>;
}

/// A kind whose handler cannot be built; the message starts with its key
/// (`kinds.NAME.KEY: why`).
#[derive(Debug, thiserror::Error)]
#[error("kinds.{kind}.{source}")]
pub struct RegistryError {
    pub kind: String,
    /// Boxed: the error is large and rare.
    pub source: Box<http::HttpSetupError>,
}

/// Handlers by kind name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The handlers for the configured kinds.
    /// `workers`: the sessions `handler = "remote"` kinds hand their jobs to.
    pub fn from_kinds(
        kinds: &[KindSettings],
        workers: &Arc<crate::handlers::remote::Workers>,
    ) -> Result<Registry, RegistryError> {
        let mut r = Registry::default();
        for k in kinds {
            let h: Arc<dyn Handler> = match &k.handler {
                HandlerSpec::Echo => Arc::new(builtin::Echo),
                HandlerSpec::Sleep => Arc::new(builtin::Sleep),
                HandlerSpec::Fail => Arc::new(builtin::Fail),
                HandlerSpec::Command {
                    argv,
                    env,
                    working_dir,
                    permanent_exit_codes,
                    kill_grace,
                } => Arc::new(command::CommandHandler {
                    argv: argv.clone(),
                    env: env.clone(),
                    working_dir: working_dir.clone(),
                    permanent_exit_codes: permanent_exit_codes.clone(),
                    kill_grace: *kill_grace,
                    max_output_bytes: k.max_result_bytes,
                }),
                HandlerSpec::Http {
                    url,
                    method,
                    headers,
                    tls,
                    connect_timeout,
                } => Arc::new(
                    http::HttpHandler::new(http::HttpSettings {
                        url,
                        method,
                        headers,
                        tls,
                        connect_timeout: *connect_timeout,
                        max_response_bytes: k.max_result_bytes,
                    })
                    .map_err(|source| RegistryError {
                        kind: k.name.clone(),
                        source: Box::new(source),
                    })?,
                ),
                HandlerSpec::Remote => Arc::new(crate::handlers::remote::RemoteHandler {
                    workers: workers.clone(),
                    max_result_bytes: k.max_result_bytes,
                }),
            };
            r.register(&k.name, h);
        }
        Ok(r)
    }

    /// Adds or replaces the handler of a kind.
    pub fn register(&mut self, kind: &str, handler: Arc<dyn Handler>) {
        self.handlers.insert(kind.to_string(), handler);
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parents' results are inlined while they fit the attempt's 1 MiB;
    /// the rest are named with `omitted`, in order.
    #[test]
    fn parents_results_are_bounded() {
        let job = |n: usize| {
            let mut j = crate::job::NewJob::example().into_job();
            j.id = Uuid::now_v7();
            j.result = Bytes::from(vec![7; n]);
            j
        };
        let half = MAX_PARENT_RESULTS_BYTES / 2;
        let got = ParentResult::from_jobs([job(half), job(half + 1), job(half)]);
        let omitted: Vec<bool> = got.iter().map(|p| p.omitted).collect();
        assert_eq!(omitted, [false, true, false]);
        assert!(got[1].result.is_empty());
        assert_eq!(got[2].result.len(), half);
    }
}
