//! The gRPC surface: `jobd.v1.JobService`. Validates requests
//! ([`validate`]), calls the engine, converts results ([`convert`]) and maps
//! every refusal to a status in one place ([`error`]).

pub mod convert;
pub mod error;
mod graph;
pub mod logs;
pub mod operations;
pub mod places;
pub mod validate;
mod validate_schedule;
pub mod workers;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::events::Subscription;
use crate::job::{Job, TraceContext};
use crate::proto::{self, job_service_server::JobService};
use crate::store::dedup::DedupOutcome;
use crate::store::{CancelOutcome, InsertOutcome, ListQuery};
use crate::transport::auth::{Caller, Tokens};
use error::{to_rpc_status, ApiError};
use places::{ClientKey, Places};

/// Bounds on open WatchStatus streams besides the global one.
#[derive(Debug)]
pub struct WatchLimits {
    /// `limits.max_watchers_per_connection`.
    pub per_connection: usize,
    /// `limits.max_watchers_per_client`.
    pub per_client: usize,
    /// `limits.watch_idle_timeout`.
    pub idle_timeout: Duration,
}

pub struct JobApi {
    engine: Arc<Engine>,
    /// Charges submitted jobs to each token's `auth.submit_rate`.
    tokens: Tokens,
    max_batch: usize,
    /// Open watch streams per connection (by peer IP:port).
    per_connection: Places<SocketAddr>,
    /// Open watch streams per client (token, or peer IP), so one client
    /// cannot take every place of `queue.max_watchers`.
    per_client: Places<ClientKey>,
    watch_idle: Duration,
    /// The largest reply encoded; ListJobs pages stop short of it.
    max_reply_bytes: usize,
    /// Ends every WatchStatus stream when the daemon drains (with
    /// UNAVAILABLE), so the server's graceful close is not held up by them.
    streams_stop: CancellationToken,
}

impl std::fmt::Debug for JobApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobApi")
            .field("max_batch", &self.max_batch)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish_non_exhaustive()
    }
}

impl JobApi {
    /// Also starts the task that ends stalled watch streams (until
    /// `streams_stop`); call within a Tokio runtime.
    pub fn new(
        engine: Arc<Engine>,
        tokens: Tokens,
        max_batch: usize,
        watch: WatchLimits,
        max_reply_bytes: usize,
        streams_stop: CancellationToken,
    ) -> Self {
        tokio::spawn(end_stalled_watches(
            engine.clone(),
            watch.idle_timeout,
            streams_stop.clone(),
        ));
        JobApi {
            engine,
            tokens,
            max_batch,
            per_connection: Places::new(watch.per_connection, "on this connection"),
            per_client: Places::new(watch.per_client, "for this client"),
            watch_idle: watch.idle_timeout,
            max_reply_bytes,
            streams_stop,
        }
    }

    /// A job for a reply: cut to fit the reply limit (see
    /// [`convert::job_within`]), so no stored job makes a reply fail.
    fn job(&self, j: &Job) -> proto::Job {
        convert::job_within(j, self.max_job_bytes())
    }

    /// The most a job may take in a reply, leaving room for the rest.
    fn max_job_bytes(&self) -> usize {
        self.max_reply_bytes.saturating_sub(REPLY_SLACK)
    }

    fn err(&self, e: EngineError) -> Status {
        ApiError::from(e).into()
    }

    /// Validates a submit, counting refusals; the job keeps the request's
    /// trace context.
    /// `earlier`: the ids of a batch's entries before this one (`None`
    /// for a refused entry), for `$N` in depends_on.
    fn validate(
        &self,
        mut req: proto::SubmitRequest,
        prefix: &str,
        trace: &Option<TraceContext>,
        earlier: &[Option<Uuid>],
    ) -> Result<crate::job::NewJob, ApiError> {
        let refs = std::mem::take(&mut req.depends_on);
        let max = self.engine.max_parents();
        let deps = validate::depends_on(&refs, req.on_dependency_failure, prefix, earlier, max);
        // An unknown kind's refusal names the closest configured one.
        let lookup = |k: &str| {
            self.engine.kind(k).ok_or_else(|| {
                let names: Vec<String> = self.engine.kinds().map(|k| k.name.clone()).collect();
                crate::suggest::unknown("kind", k, names.iter().map(String::as_str))
            })
        };
        let new = validate::submit(req, prefix, lookup);
        let r = match (new, deps) {
            (Ok(mut new), Ok((parents, policy))) => {
                new.parents = parents;
                new.on_parent_failure = policy;
                new.trace = trace.clone();
                Ok(new)
            }
            (Err(ApiError::InvalidArgument(mut a)), Err(ApiError::InvalidArgument(b))) => {
                a.extend(b);
                Err(ApiError::InvalidArgument(a))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        r.inspect_err(|_| self.engine.metrics().reject("invalid_argument"))
    }

    fn outcome(
        &self,
        o: InsertOutcome,
        key: Option<&str>,
        prefix: &str,
    ) -> Result<proto::SubmitResponse, ApiError> {
        match o {
            InsertOutcome::Created(job) => Ok(proto::SubmitResponse {
                job: Some(self.job(&job)),
                deduplicated: false,
                dedup_outcome: match job.dedup_key {
                    Some(_) => proto::DedupOutcome::Created,
                    None => proto::DedupOutcome::Unspecified,
                } as i32,
            }),
            InsertOutcome::Deduplicated(job) => Ok(proto::SubmitResponse {
                job: Some(self.job(&job)),
                deduplicated: true,
                dedup_outcome: proto::DedupOutcome::Unspecified as i32,
            }),
            InsertOutcome::Merged { job, outcome } => Ok(proto::SubmitResponse {
                job: Some(self.job(&job)),
                deduplicated: outcome == DedupOutcome::Kept,
                dedup_outcome: convert::dedup_outcome(outcome) as i32,
            }),
            InsertOutcome::Conflict { existing_id } => Err(ApiError::IdempotencyConflict {
                key: key.unwrap_or_default().to_string(),
                existing_id,
            }),
            InsertOutcome::BacklogFull => Err(ApiError::BacklogFull {
                max: self.engine_max_backlog(),
            }),
            InsertOutcome::UnknownParent(id) => Err(ApiError::invalid(
                format!("{prefix}depends_on"),
                format!("job {id} not found (or, for $N, not stored)"),
            )),
        }
    }

    fn engine_max_backlog(&self) -> u64 {
        self.engine.max_backlog()
    }
}

/// Room in a reply for what is not a job (ListJobs' page token, a
/// JobEvent's sequence, framing).
const REPLY_SLACK: usize = 1024;
/// Bytes of the payload GetStatus shows (`payload_preview`).
const PAYLOAD_PREVIEW_BYTES: usize = 4096;
/// A job's tag and length prefix in a ListJobs page, rounded up.
const PAGE_ENTRY_FRAMING: usize = 16;
/// ListJobs with a label filter reads jobs in pages of this many rows and
/// at most [`MAX_LABEL_SCAN`] rows per call (labels are not indexed); a
/// page the bound cut short ends with a token to continue.
const LABEL_SCAN_PAGE: usize = 500;
const MAX_LABEL_SCAN: usize = 10_000;

/// Ends, now and then, the watch streams whose clients stopped reading
/// (see [`crate::events::Events::end_stalled`]). Checks four times per
/// `idle`, at most every 5 s, so a stream ends at most a quarter late.
async fn end_stalled_watches(engine: Arc<Engine>, idle: Duration, stop: CancellationToken) {
    let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let ended = engine.events().end_stalled(idle);
        if ended > 0 {
            tracing::info!(
                ended,
                idle = %humantime::format_duration(idle),
                "ended watch streams whose clients read nothing while events waited"
            );
        }
    }
}

/// The W3C trace context of a request (the HTTP door passes its headers
/// on as metadata); one that is malformed is ignored, as W3C asks.
fn trace_context(md: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    let get = |k| md.get(k).and_then(|v| v.to_str().ok());
    let t = TraceContext::from_headers(get("traceparent"), get("tracestate"));
    if t.is_none() && md.contains_key("traceparent") {
        tracing::debug!("malformed traceparent ignored");
    }
    t
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        self.tokens
            .charge(request.extensions().get::<Caller>(), 1)?;
        let trace = trace_context(request.metadata());
        let req = request.into_inner();
        let key = req.idempotency_key.clone();
        let new = self.validate(req, "", &trace, &[])?;
        let mut out = self
            .engine
            .submit(vec![new])
            .await
            .map_err(|e| self.err(e))?;
        let o = out
            .pop()
            .ok_or_else(|| ApiError::Internal("store returned no outcome".into()))?;
        Ok(Response::new(self.outcome(o, Some(&key), "")?))
    }

    async fn submit_batch(
        &self,
        request: Request<proto::SubmitBatchRequest>,
    ) -> Result<Response<proto::SubmitBatchResponse>, Status> {
        let caller = request.extensions().get::<Caller>().copied();
        let trace = trace_context(request.metadata());
        let reqs = request.into_inner().requests;
        if reqs.len() > self.max_batch {
            return Err(ApiError::invalid(
                "requests",
                format!(
                    "{} entries is over the limit of {}",
                    reqs.len(),
                    self.max_batch
                ),
            )
            .into());
        }
        self.tokens.charge(caller.as_ref(), reqs.len())?;
        let mut results: Vec<Option<Result<proto::SubmitResponse, ApiError>>> =
            Vec::with_capacity(reqs.len());
        let mut accepted = Vec::new();
        let mut keys = Vec::new();
        let mut ids = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let key = req.idempotency_key.clone();
            match self.validate(req, &format!("requests[{i}]."), &trace, &ids) {
                Ok(new) => {
                    ids.push(Some(new.id));
                    accepted.push(new);
                    keys.push((i, key));
                    results.push(None);
                }
                Err(e) => {
                    ids.push(None);
                    results.push(Some(Err(e)));
                }
            }
        }
        if !accepted.is_empty() {
            let out = self
                .engine
                .submit(accepted)
                .await
                .map_err(|e| self.err(e))?;
            for ((i, key), o) in keys.into_iter().zip(out) {
                results[i] = Some(self.outcome(o, Some(&key), &format!("requests[{i}].")));
            }
        }
        let results = results
            .into_iter()
            .map(|r| proto::SubmitResult {
                result: Some(match r {
                    Some(Ok(resp)) => proto::submit_result::Result::Accepted(resp),
                    Some(Err(e)) => proto::submit_result::Result::Error(to_rpc_status(e)),
                    None => proto::submit_result::Result::Error(to_rpc_status(ApiError::Internal(
                        "no outcome for batch entry".into(),
                    ))),
                }),
            })
            .collect();
        Ok(Response::new(proto::SubmitBatchResponse { results }))
    }

    async fn get_job_graph(
        &self,
        request: Request<proto::GetJobGraphRequest>,
    ) -> Result<Response<proto::GetJobGraphResponse>, Status> {
        graph::get(self, request).await
    }

    async fn get_logs(
        &self,
        request: Request<proto::GetLogsRequest>,
    ) -> Result<Response<proto::GetLogsResponse>, Status> {
        logs::get(self, request).await
    }

    type WatchLogsStream = logs::LogStream;

    async fn watch_logs(
        &self,
        request: Request<proto::WatchLogsRequest>,
    ) -> Result<Response<logs::LogStream>, Status> {
        logs::watch(self, request).await
    }

    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let id = validate::job_id("id", &request.get_ref().id)?;
        let job = self.engine.get(id).await.map_err(|e| self.err(e))?;
        let preview = job
            .payload
            .slice(..job.payload.len().min(PAYLOAD_PREVIEW_BYTES));
        Ok(Response::new(proto::GetStatusResponse {
            // The preview's room comes out of the job's, so the reply fits.
            job: Some(convert::job_within(
                &job,
                self.max_job_bytes().saturating_sub(preview.len()),
            )),
            payload_preview: preview.to_vec(),
        }))
    }

    type WatchStatusStream = EventStream;

    async fn watch_status(
        &self,
        request: Request<proto::WatchStatusRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let id = validate::job_id("id", &request.get_ref().id)?;
        if self.streams_stop.is_cancelled() {
            return Err(ApiError::Draining.into());
        }
        // Places first: a refused watch costs no store read.
        let peer = request.remote_addr();
        let on_connection = peer.map(|p| self.per_connection.take(p)).transpose()?;
        let client = ClientKey::of(request.extensions().get::<Caller>(), peer);
        let for_client = client.map(|c| self.per_client.take(c)).transpose()?;
        let after = request.get_ref().after_sequence;
        let (snapshot, sub) = self.engine.watch(id).await.map_err(|e| self.err(e))?;
        // Given back when the stream ends, or when it is ended as stalled.
        sub.hold((on_connection, for_client));
        Ok(Response::new(watch_stream(
            snapshot,
            after,
            sub,
            self.max_job_bytes(),
            self.watch_idle,
            self.streams_stop.clone(),
        )))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let id = validate::job_id("id", &request.get_ref().id)?;
        let job = match self.engine.cancel(id).await.map_err(|e| self.err(e))? {
            CancelOutcome::NotFound => return Err(ApiError::NotFound(id).into()),
            CancelOutcome::AlreadyFinished(job) => {
                return Err(ApiError::AlreadyFinished {
                    id,
                    state: job.state,
                }
                .into())
            }
            CancelOutcome::Cancelled { job, .. } | CancelOutcome::AlreadyCancelled(job) => job,
        };
        Ok(Response::new(proto::CancelResponse {
            job: Some(self.job(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let (query, labels) = validate::list(request.into_inner())?;
        // One more than asked tells whether another page exists.
        let limit = query.limit - 1;
        let (jobs, resume) = if labels.is_empty() {
            (
                self.engine.list(&query).await.map_err(|e| self.err(e))?,
                None,
            )
        } else {
            // Labels are matched here, over a bounded number of rows; a
            // page cut short by the bound continues after its last row.
            let query = ListQuery {
                limit: LABEL_SCAN_PAGE,
                ..query
            };
            self.engine
                .scan(query, limit + 1, MAX_LABEL_SCAN, |j| {
                    labels.iter().all(|(k, v)| j.labels.get(k) == Some(v))
                })
                .await
                .map_err(|e| self.err(e))?
        };
        // A page ends early rather than outgrow the reply limit (results
        // can be large); the token then continues after its last job.
        // Each job is cut to fit on its own, so a page always holds at
        // least one and paging never sticks at a large one.
        let budget = self.max_job_bytes();
        let (mut page, mut size) = (Vec::new(), 0);
        for j in jobs.iter().take(limit) {
            let p = convert::job_within(j, budget.saturating_sub(PAGE_ENTRY_FRAMING));
            let n = prost::Message::encoded_len(&p) + PAGE_ENTRY_FRAMING;
            if !page.is_empty() && size + n > budget {
                break;
            }
            size += n;
            page.push(p);
        }
        let next_page_token = if let (true, Some(after)) = (page.len() == jobs.len(), resume) {
            validate::encode_page_token(after)
        } else if page.len() < jobs.len() {
            page.len()
                .checked_sub(1)
                .map(|last| validate::encode_page_token(jobs[last].id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListJobsResponse {
            jobs: page,
            next_page_token,
        }))
    }

    type WatchJobsStream = JobsStream;

    async fn watch_jobs(
        &self,
        request: Request<proto::WatchJobsRequest>,
    ) -> Result<Response<JobsStream>, Status> {
        if self.streams_stop.is_cancelled() {
            return Err(ApiError::Draining.into());
        }
        let state = match request.get_ref().state {
            0 => None,
            s => proto::JobState::try_from(s)
                .ok()
                .and_then(convert::state_from_proto)
                .map(Some)
                .ok_or_else(|| ApiError::invalid("state", format!("unknown state {s}")))?,
        };
        let peer = request.remote_addr();
        let on_connection = peer.map(|p| self.per_connection.take(p)).transpose()?;
        let client = ClientKey::of(request.extensions().get::<Caller>(), peer);
        let for_client = client.map(|c| self.per_client.take(c)).transpose()?;
        let req = request.into_inner();
        let log = self.engine.events().clone();
        let cursor = match req.after {
            0 => log.log().head(),
            after => {
                log.log()
                    .after(after, 0)
                    .map_err(|g| ApiError::PositionGone {
                        after,
                        oldest: g.oldest,
                    })?;
                after
            }
        };
        let reader = log
            .reserve(cursor)
            .map_err(|e| self.err(EngineError::TooManyWatchers { max: e.max }))?;
        // Given back with the reader, even when it ends as stalled.
        reader.hold((on_connection, for_client));
        Ok(Response::new(jobs_stream(
            JobsFollow {
                events: log,
                kind: req.kind,
                state,
                cursor,
                reader,
                max_job_bytes: self.max_job_bytes(),
                idle: self.watch_idle,
            },
            self.streams_stop.clone(),
        )))
    }
}

type JobsStream = Pin<Box<dyn Stream<Item = Result<proto::WatchJobsResponse, Status>> + Send>>;

/// A WatchJobs stream's state.
struct JobsFollow {
    events: Arc<crate::events::Events>,
    kind: String,
    state: Option<crate::job::JobState>,
    /// The position of the last change read (sent or filtered out).
    cursor: u64,
    /// Its places in the watcher bounds (given back when the stream ends,
    /// or when it stops reading for `idle`).
    reader: crate::events::LogReader,
    max_job_bytes: usize,
    idle: Duration,
}

/// Every change after the cursor that matches the filter, in order, from
/// the all-jobs log; waits for more when caught up. Changes are taken and
/// converted one at a time, so a stream whose client stopped reading holds
/// one encoded message (and its flow-control window), not a queue of
/// copies. Ends with OUT_OF_RANGE if the reader fell so far behind that the
/// log dropped changes it has not read (never a silent gap), with
/// RESOURCE_EXHAUSTED once ended as stalled (`limits.watch_idle_timeout`),
/// and with UNAVAILABLE on drain.
fn jobs_stream(follow: JobsFollow, stop: CancellationToken) -> JobsStream {
    let wake = follow.events.log().subscribe();
    Box::pin(futures_util::stream::unfold(
        (Some(follow), wake),
        move |(follow, mut wake)| {
            let stop = stop.clone();
            async move {
                let mut f = follow?;
                loop {
                    if f.reader.is_ended() {
                        let e = ApiError::WatchStalled { idle: f.idle };
                        return Some((Err(e.into()), (None, wake)));
                    }
                    // Marked seen before reading, so an append after the
                    // read wakes the wait below.
                    wake.borrow_and_update();
                    match f.events.log().next_after(f.cursor) {
                        Err(g) => {
                            let e = ApiError::PositionGone {
                                after: f.cursor,
                                oldest: g.oldest,
                            };
                            return Some((Err(e.into()), (None, wake)));
                        }
                        Ok(None) => {
                            tokio::select! {
                                r = wake.changed() => if r.is_err() { return None },
                                _ = stop.cancelled() => {
                                    let e = ApiError::Draining.into();
                                    return Some((Err(e), (None, wake)));
                                }
                            }
                        }
                        Ok(Some(change)) => {
                            f.cursor = change.position;
                            f.reader.took(change.position);
                            let job = &change.job;
                            let kind_ok = f.kind.is_empty() || job.kind == f.kind;
                            let state_ok = f.state.is_none_or(|s| job.state == s);
                            if kind_ok && state_ok {
                                let mut p = convert::job_within(job, f.max_job_bytes);
                                p.payload_size = change.payload_size;
                                let r = proto::WatchJobsResponse {
                                    job: Some(p),
                                    position: change.position,
                                };
                                return Some((Ok(r), (Some(f), wake)));
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// Snapshot first, then each later change, ending after a terminal state
/// (OK) or on drain (UNAVAILABLE).
///
/// A resume (`after` > 0) skips what the client already has: the snapshot
/// is sent only when it is newer than `after`; otherwise the stream waits
/// for the next change, or, for a finished job, ends OK at once. Changes
/// are followed from the snapshot's sequence, not from `after`, so an
/// `after` from the future cannot hide real changes.
fn watch_stream(
    snapshot: Job,
    after: u64,
    sub: Subscription,
    max_job_bytes: usize,
    idle: Duration,
    stop: CancellationToken,
) -> EventStream {
    enum St {
        Start(Box<Job>, Subscription),
        Follow(Subscription, u64),
        Done,
    }
    let first = if after == 0 || after < snapshot.sequence {
        St::Start(Box::new(snapshot), sub)
    } else if snapshot.state.is_terminal() {
        St::Done
    } else {
        St::Follow(sub, snapshot.sequence)
    };
    Box::pin(futures_util::stream::unfold(first, move |st| {
        let stop = stop.clone();
        async move {
            match st {
                St::Done => None,
                St::Start(job, sub) => {
                    let next = if job.state.is_terminal() {
                        St::Done
                    } else {
                        St::Follow(sub, job.sequence)
                    };
                    Some((Ok(convert::event_within(&job, max_job_bytes)), next))
                }
                St::Follow(sub, last) => loop {
                    tokio::select! {
                        job = sub.next() => {
                            let Some(job) = job else {
                                let e = ApiError::WatchStalled { idle };
                                return Some((Err(e.into()), St::Done));
                            };
                            if job.sequence <= last {
                                continue;
                            }
                            let next = if job.state.is_terminal() {
                                St::Done
                            } else {
                                St::Follow(sub, job.sequence)
                            };
                            return Some((Ok(convert::event_within(&job, max_job_bytes)), next));
                        }
                        _ = stop.cancelled() => {
                            return Some((Err(ApiError::Draining.into()), St::Done));
                        }
                    }
                },
            }
        }
    }))
}
