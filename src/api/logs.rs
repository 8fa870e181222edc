//! `GetLogs` and `WatchLogs`: a job's log lines, paged or followed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, Stream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::error::ApiError;
use super::places::ClientKey;
use super::{convert, validate, JobApi};
use crate::engine::Engine;
use crate::proto;
use crate::transport::auth::Caller;

/// Lines per GetLogs page, default and ceiling; also what WatchLogs reads
/// per look.
pub const MAX_LOG_PAGE: usize = 1000;
/// How often a followed job's log is read while no event of the job came.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

pub(super) type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogLine, Status>> + Send>>;

pub(super) async fn get(
    api: &JobApi,
    request: Request<proto::GetLogsRequest>,
) -> Result<Response<proto::GetLogsResponse>, Status> {
    let r = request.into_inner();
    let id = validate::job_id("id", &r.id)?;
    let limit = match r.limit as usize {
        0 => MAX_LOG_PAGE,
        n if n > MAX_LOG_PAGE => {
            return Err(ApiError::invalid("limit", format!("at most {MAX_LOG_PAGE}")).into())
        }
        n => n,
    };
    let lines = api
        .engine
        .logs(id, r.after, limit)
        .await
        .map_err(|e| api.err(e))?;
    Ok(Response::new(proto::GetLogsResponse {
        lines: lines.iter().map(convert::log_line_to_proto).collect(),
    }))
}

pub(super) async fn watch(
    api: &JobApi,
    request: Request<proto::WatchLogsRequest>,
) -> Result<Response<LogStream>, Status> {
    let id = validate::job_id("id", &request.get_ref().id)?;
    if api.streams_stop.is_cancelled() {
        return Err(ApiError::Draining.into());
    }
    // The same places as a WatchStatus stream.
    let peer = request.remote_addr();
    let on_connection = peer.map(|p| api.per_connection.take(p)).transpose()?;
    let client = ClientKey::of(request.extensions().get::<Caller>(), peer);
    let for_client = client.map(|c| api.per_client.take(c)).transpose()?;
    let after = request.get_ref().after;
    let (snapshot, sub) = api.engine.watch(id).await.map_err(|e| api.err(e))?;
    sub.hold((on_connection, for_client));
    let follow = Follow {
        engine: api.engine.clone(),
        id,
        cursor: after,
        sub,
        ended: snapshot.state.is_terminal(),
        page: std::collections::VecDeque::new(),
        stop: api.streams_stop.clone(),
        idle: api.watch_idle,
    };
    Ok(Response::new(Box::pin(futures_util::stream::unfold(
        Some(follow),
        |f| async move {
            let mut f = f?;
            match f.next().await {
                Ok(Some(line)) => Some((Ok(line), Some(f))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        },
    ))))
}

/// A WatchLogs stream's state.
struct Follow {
    engine: Arc<Engine>,
    id: Uuid,
    /// The last line's seq sent.
    cursor: u64,
    /// The job's events: its terminal state ends the stream (once every
    /// line was sent), and it holds the stream's watcher places.
    sub: crate::events::Subscription,
    /// The job was seen terminal.
    ended: bool,
    /// Lines read and not yet sent (at most a page).
    page: std::collections::VecDeque<proto::LogLine>,
    stop: CancellationToken,
    idle: Duration,
}

impl Follow {
    /// The next line; `None` when the job is terminal and every line was
    /// sent.
    async fn next(&mut self) -> Result<Option<proto::LogLine>, Status> {
        loop {
            if let Some(l) = self.page.pop_front() {
                self.cursor = l.seq;
                return Ok(Some(l));
            }
            // Take the job's events without waiting: they only tell whether
            // it ended (and keep the watcher from counting as stalled).
            while let Some(ev) = self.sub.next().now_or_never() {
                match ev {
                    Some(job) => self.ended |= job.state.is_terminal(),
                    None => return Err(ApiError::WatchStalled { idle: self.idle }.into()),
                }
            }
            let ended = self.ended;
            let lines = self
                .engine
                .logs(self.id, self.cursor, MAX_LOG_PAGE)
                .await
                .map_err(|e| Status::from(ApiError::from(e)))?;
            if !lines.is_empty() {
                self.page = lines.iter().map(convert::log_line_to_proto).collect();
                continue;
            }
            // Read after the end was seen: nothing more can come.
            if ended {
                return Ok(None);
            }
            tokio::select! {
                ev = self.sub.next() => match ev {
                    Some(job) => self.ended |= job.state.is_terminal(),
                    None => return Err(ApiError::WatchStalled { idle: self.idle }.into()),
                },
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = self.stop.cancelled() => return Err(ApiError::Draining.into()),
            }
        }
    }
}
