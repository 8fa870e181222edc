//! One attempt of one job: run the handler under its timeout and stop
//! token, catch a panic, decide the outcome, and hand it to the completion
//! path ([`super::completer`]), which writes it with the attempt's fencing
//! token. The worker's slot is free as soon as the outcome is handed over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::{retry, Engine};
use crate::config::DEFAULT_STOP_GRACE;
use crate::handlers::{HandlerError, JobContext, Output};
use crate::job::{add_micros, now_micros, Job};
use crate::store::Outcome;

/// How an attempt ended before the retry decision.
#[derive(Debug)]
enum Ended {
    Ran(Result<Output, HandlerError>),
    TimedOut,
    /// No progress or log line for the kind's `heartbeat_timeout`.
    Silent(Duration),
    Panicked(String),
    /// Cancelled by a client: the store already says CANCELLED.
    Cancelled,
    /// Stopped by drain: back to QUEUED, attempt not counted.
    Drained,
}

impl Ended {
    /// The `outcome` label of `jobd_job_attempts_total`.
    fn label(&self) -> &'static str {
        match self {
            Ended::Ran(Ok(_)) => "succeeded",
            Ended::Ran(Err(HandlerError::Permanent { .. })) => "permanent_error",
            Ended::Ran(Err(HandlerError::Retryable { .. })) => "error",
            Ended::TimedOut => "timeout",
            Ended::Silent(_) => "heartbeat_timeout",
            Ended::Panicked(_) => "panic",
            Ended::Cancelled => "cancelled",
            Ended::Drained => "drained",
        }
    }
}

/// Batches of log lines a local attempt may have waiting for the store.
const LOG_BATCHES_QUEUED: usize = 256;
/// The longest an attempt's end waits for its log lines to be written.
const LOG_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Log batches of a local attempt not yet written, and a wake-up when none
/// are left.
#[derive(Default)]
struct LogsWritten {
    queued: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<tokio::sync::Notify>,
}

impl LogsWritten {
    /// Until every batch queued so far is written, at most `max`.
    async fn wait(&self, max: std::time::Duration) {
        let all = async {
            loop {
                // Registered before the check, so a wake-up between the
                // two is not missed.
                let woken = self.done.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if self.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                woken.await;
            }
        };
        let _ = tokio::time::timeout(max, all).await;
    }
}

impl Engine {
    pub(super) async fn run_attempt(
        self: Arc<Self>,
        job: Job,
        _global: OwnedSemaphorePermit,
        _kind: OwnedSemaphorePermit,
    ) {
        let span =
            tracing::debug_span!("attempt", job = %job.id, kind = %job.kind, attempt = job.attempt);
        let kind = job.kind.clone();
        self.attempt_inner(job).instrument(span).await;
        // Counted before the permits drop, so a claim that sees the slot
        // free also sees it counted.
        if let Some(k) = self.kinds.get(&kind) {
            k.freed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn attempt_inner(self: &Arc<Self>, job: Job) {
        // A cancel that came between the claim and this point left an
        // already-cancelled token here: the attempt then stops at once.
        let stop = self.attempt_token(job.id, job.attempt, job.sequence);
        let began = std::time::Instant::now();
        let span = self.wiring.spans.get().map(|s| process_span(s, &job));
        let (notes, logs_written) = self.notes_for(job.id, job.attempt);
        let ran_on = crate::handlers::RanOn::default();
        let ended = self
            .execute(&job, stop, notes, span.as_ref(), &ran_on)
            .await;
        // In the attempt's span: RUST_LOG=jobd=debug shows why it failed.
        if let Ended::Ran(Err(e)) = &ended {
            tracing::debug!(error = %e, "attempt failed");
        }
        if let Some(mut span) = span {
            span.attr("jobd.attempt.outcome", ended.label());
            let error = match &ended {
                Ended::Ran(Ok(_)) => None,
                Ended::Ran(Err(e)) => Some(e.to_string()),
                other => Some(other.label().to_string()),
            };
            span.end(error);
        }
        self.lock_running().remove(&(job.id, job.attempt));
        self.metrics
            .attempt(&job.kind, ended.label(), began.elapsed());
        let outcome = match self.decide(&job, ended) {
            Some(o) => o,
            None => return,
        };
        // The permits (`run_attempt`'s arguments) are released when this
        // returns: right after the hand-over, not after the commit.
        // Log lines and a progress value still on their way are written
        // first, while the attempt still holds the job: the last ones an
        // attempt reported are kept.
        logs_written.wait(LOG_DRAIN_WAIT).await;
        self.flush_progress(job.id, job.attempt).await;
        self.complete(job, outcome, ran_on.name()).await;
    }

    /// Where a local handler's progress and log lines go: stored for this
    /// attempt (progress coalesced; log lines in order, one write at a
    /// time per attempt).
    fn notes_for(
        self: &Arc<Self>,
        id: uuid::Uuid,
        attempt: u32,
    ) -> (crate::handlers::Notes, LogsWritten) {
        let engine = Arc::downgrade(self);
        let written = LogsWritten::default();
        let (queued, done) = (written.queued.clone(), written.done.clone());
        // Bounded: a handler that logs faster than the store writes loses
        // lines (log writes are the first dropped), never memory.
        // Checkpoints take the same queue, so they are written in order
        // with the lines and before the outcome.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::handlers::Note>(LOG_BATCHES_QUEUED);
        let writer = engine.clone();
        tokio::spawn(async move {
            while let Some(note) = rx.recv().await {
                let Some(e) = writer.upgrade() else { return };
                match note {
                    crate::handlers::Note::Checkpoint(c) => {
                        e.save_checkpoint(id, attempt, c).await;
                    }
                    crate::handlers::Note::Log(lines) => {
                        if let Err(err) = e.append_logs(id, attempt, lines).await {
                            tracing::debug!(job = %id, error = %err, "log lines not written");
                        }
                    }
                    crate::handlers::Note::Progress { .. } => {}
                }
                if queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    done.notify_waiters();
                }
            }
        });
        let queued = written.queued.clone();
        let notes = crate::handlers::Notes::new(move |note| match note {
            crate::handlers::Note::Progress {
                percent,
                message,
                details,
            } => {
                if let Some(e) = engine.upgrade() {
                    let p = crate::job::Progress {
                        percent,
                        message,
                        details,
                        updated_at: 0,
                    };
                    e.progress(id, attempt, p);
                }
            }
            note @ (crate::handlers::Note::Log(_) | crate::handlers::Note::Checkpoint(_)) => {
                queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if tx.try_send(note).is_err() {
                    queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
        });
        (notes, written)
    }

    /// Runs the handler; it gets `span`'s context as its trace context when
    /// spans are exported, else the submitter's.
    async fn execute(
        self: &Arc<Self>,
        job: &Job,
        stop: tokio_util::sync::CancellationToken,
        notes: crate::handlers::Notes,
        span: Option<&crate::otel::ActiveSpan>,
        ran_on: &crate::handlers::RanOn,
    ) -> Ended {
        let Some(handler) = self.registry.get(&job.kind) else {
            return Ended::Ran(Err(HandlerError::permanent(format!(
                "no handler registered for kind {:?}",
                job.kind
            ))));
        };
        let ctx = JobContext {
            id: job.id,
            kind: job.kind.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload: job.payload.clone(),
            timeout: job.timeout,
            trace: span.map(|s| s.context()).or_else(|| job.trace.clone()),
            cancel: stop.clone(),
            notes,
            checkpoint: job.checkpoint.clone(),
            ran_on: ran_on.clone(),
            parents: if job.parents.is_empty() {
                Vec::new()
            } else {
                self.parent_results(job).await
            },
        };
        // Its own task, so a panic is caught as a JoinError and fails only
        // this attempt.
        let mut task = tokio::spawn(async move { handler.run(ctx).await });
        let stopped = || {
            if self.stops.stop_attempts.is_cancelled() {
                Ended::Drained
            } else {
                Ended::Cancelled
            }
        };
        let heartbeat = self.kind(&job.kind).and_then(|k| k.heartbeat_timeout);
        let (heard, deadline) = {
            let running = self.lock_running();
            let r = running.get(&(job.id, job.attempt));
            (r.map(|r| r.heard.clone()), r.map(|r| r.deadline.clone()))
        };
        let started = crate::job::now_micros();
        if let Some(d) = &deadline {
            d.store(
                crate::job::add_micros(started, job.timeout),
                std::sync::atomic::Ordering::Release,
            );
        }
        let ended = tokio::select! {
            r = &mut task => return match r {
                // A handler that fails once told to stop failed because of
                // the stop (both branches can be ready at once).
                Ok(Err(_)) | Err(_) if stop.is_cancelled() => stopped(),
                Ok(r) => Ended::Ran(r),
                Err(e) if e.is_panic() => Ended::Panicked(panic_message(e.into_panic())),
                Err(e) => Ended::Ran(Err(HandlerError::retryable(format!("handler task ended: {e}")))),
            },
            _ = Engine::until_deadline(deadline, job.timeout) => Ended::TimedOut,
            _ = Engine::silent_for(heard, heartbeat) => {
                let h = heartbeat.unwrap_or_default();
                self.metrics.heartbeat_timeout(&job.kind);
                Ended::Silent(h)
            }
            _ = stop.cancelled() => stopped(),
        };
        // Tell the handler to stop, give it a moment to clean up, then abort.
        stop.cancel();
        let grace = self
            .kind(&job.kind)
            .map_or(DEFAULT_STOP_GRACE, |k| k.stop_grace);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
        ended
    }

    /// The outcome to store, or `None` when there is nothing to write.
    fn decide(&self, job: &Job, ended: Ended) -> Option<Outcome> {
        let kind = self.kind(&job.kind);
        let (error, after) = match ended {
            Ended::Cancelled => return None,
            Ended::Drained => {
                return Some(Outcome::Requeue {
                    reason: format!("attempt {} stopped by drain; not counted", job.attempt),
                })
            }
            Ended::Ran(Ok(out)) => {
                let cap = kind.map_or(usize::MAX, |k| k.max_result_bytes);
                let result = if out.result.len() > cap {
                    out.result.slice(..cap)
                } else {
                    out.result
                };
                return Some(Outcome::Succeeded { result });
            }
            Ended::Ran(Err(HandlerError::Permanent { message })) => {
                return Some(Outcome::Failed {
                    error: format!("permanent error: {message}"),
                })
            }
            Ended::Ran(Err(HandlerError::Retryable { message, after })) => (message, after),
            Ended::TimedOut => (
                format!(
                    "timed out after {}",
                    humantime::format_duration(job.timeout)
                ),
                None,
            ),
            Ended::Silent(h) => (
                format!(
                    "heartbeat timeout: no progress or log line for {}",
                    humantime::format_duration(h)
                ),
                None,
            ),
            Ended::Panicked(msg) => (format!("handler panicked: {msg}"), None),
        };
        if job.attempt >= job.max_attempts {
            return Some(Outcome::Failed {
                error: format!(
                    "{error} (attempt {} of {}, no attempts left)",
                    job.attempt, job.max_attempts
                ),
            });
        }
        // A handler's own delay (a worker's `Fail.retry_after`, a
        // Retry-After) is capped: no job parks for years, and no
        // `next_attempt_at` leaves the range a reply can carry.
        let delay = after
            .map(|a| a.min(crate::handlers::MAX_RETRY_AFTER))
            .unwrap_or_else(|| {
                kind.map_or(Duration::from_secs(1), |k| {
                    retry::backoff_delay(&k.backoff, job.attempt)
                })
            });
        Some(Outcome::Retry {
            error,
            at: add_micros(now_micros(), delay),
        })
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".into()
    }
}

/// `process {kind}`: a child of the submitter's span on the first attempt; a
/// retry starts a trace of its own, linked to the submitter's.
fn process_span(spans: &crate::otel::Spans, job: &Job) -> crate::otel::ActiveSpan {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let first = job.attempt <= 1;
    let trace = job.trace.as_ref();
    let mut span = spans.start(
        format!("process {}", job.kind),
        SpanKind::Consumer,
        trace.filter(|_| first),
        trace.filter(|_| !first),
    );
    span.attr("jobd.job.id", &job.id.to_string());
    span.attr("jobd.job.kind", &job.kind);
    span.attr("jobd.job.attempt", &job.attempt.to_string());
    span
}
