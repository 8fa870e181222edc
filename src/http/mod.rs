//! The HTTP/JSON door on the gRPC port, for curl users, scripts and
//! browsers: `/v1/...` routes whose bodies are the proto3 JSON mapping
//! ([`json`]), and `GET /v1/jobs/{id}/events` as server-sent events.
//!
//! Each route calls the same `JobService` / `AdminService` implementation
//! that gRPC does, with a `tonic::Request` built from the HTTP request, after
//! the same token check for the same method path: validation, auth, limits
//! and error mapping are shared, not copied. Refusals are the HTTP status
//! for the gRPC code with a `google.rpc.Status` JSON body.
//!
//! [`one_port`] puts gRPC, gRPC-Web and this door on one listener, chosen
//! by content type.

pub mod hosts;
pub mod json;
mod raw_submit;
mod routes;
mod schedule_routes;
mod stats;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tower::Service;

use crate::api::operations::AdminApi;
use crate::api::JobApi;
use crate::proto::{self, admin_service_server::AdminService, job_service_server::JobService};
use crate::transport::auth::Tokens;
use json::{Json, Named};
use routes::{missed, route, Route};

/// SSE comment lines this often keep proxies from closing a quiet stream.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the JSON routes share.
pub struct HttpApi {
    jobs: Arc<JobApi>,
    admin: Arc<AdminApi>,
    tokens: Tokens,
    json: Json,
    /// The largest request body read (twice `max_message_bytes`: the same
    /// requests as gRPC, in JSON).
    max_body: usize,
    /// `limits.request_timeout`. The server's own timer (tonic's) answers
    /// in gRPC's manner, a 200 with `grpc-status`, which a JSON client
    /// would take for success: the routes stop a tenth earlier with 504.
    request_timeout: Duration,
    /// JSON calls count in `jobd_grpc_requests_total` under the RPC they
    /// call: they are the same calls.
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi").finish_non_exhaustive()
    }
}

impl HttpApi {
    pub fn new(
        jobs: Arc<JobApi>,
        admin: Arc<AdminApi>,
        tokens: Tokens,
        json: Json,
        max_body: usize,
        request_timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        HttpApi {
            jobs,
            admin,
            tokens,
            json,
            max_body,
            request_timeout,
            metrics,
        }
    }
}

/// A refusal: a gRPC status, and the HTTP status when the code's usual one
/// is not the right answer (413, 415, 405).
struct HttpError {
    status: Status,
    http: Option<StatusCode>,
    allow: Option<&'static str>,
}

impl From<Status> for HttpError {
    fn from(status: Status) -> Self {
        HttpError {
            status,
            http: None,
            allow: None,
        }
    }
}

impl HttpError {
    fn with_http(status: Status, http: StatusCode) -> Self {
        HttpError {
            status,
            http: Some(http),
            allow: None,
        }
    }
}

/// The HTTP status for a gRPC code (google.rpc.Code's documented mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as google.rpc.Code gives it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON door as an axum router (every path; [`route`] does the routing).
pub fn router(api: Arc<HttpApi>) -> axum::Router {
    axum::Router::new()
        .fallback(
            |axum::extract::State(api): axum::extract::State<Arc<HttpApi>>,
             req: http::Request<Body>| async move { api.serve(req).await },
        )
        .with_state(api)
}

impl HttpApi {
    async fn serve(&self, req: http::Request<Body>) -> Response {
        let started = std::time::Instant::now();
        let method = match route(req.method(), req.uri().path()) {
            // The dashboard's files are not calls.
            Ok(Route::Ui(asset)) => return ui::response(asset),
            Ok(Route::Favicon) => return ui::response(&ui::FAVICON),
            Ok(Route::UiRedirect) => {
                return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")])
                    .into_response()
            }
            // Nor are these: no RPC's metrics.
            Ok(r @ (Route::WhoAmI | Route::Throughput)) => {
                return self.info(&r, &req).unwrap_or_else(|e| self.error(e))
            }
            Ok(r) => r.grpc_method().unwrap_or("other"),
            Err(_) => "other",
        };
        let deadline = self.request_timeout - self.request_timeout / 10;
        let outcome = tokio::time::timeout(deadline, self.handle(req))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the request took longer than limits.request_timeout ({})",
                    humantime::format_duration(self.request_timeout)
                ))
                .into())
            });
        let code = outcome
            .as_ref()
            .map_or_else(|e| e.status.code(), |_| Code::Ok);
        self.metrics.grpc_request(
            method,
            crate::transport::grpc_metrics::code_name(code),
            started.elapsed(),
        );
        outcome.unwrap_or_else(|e| self.error(e))
    }

    async fn handle(&self, req: http::Request<Body>) -> Result<Response, HttpError> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let route = route(&parts.method, path).map_err(|m| missed(&parts.method, path, m))?;
        refuse_cross_origin(&parts.headers)?;
        let caller = match route.grpc_method() {
            Some(method) => self.tokens.check(&parts.headers, method)?,
            None => self.tokens.identify(&parts.headers)?,
        };
        // The gRPC request the route stands for: same metadata (the
        // authorization header, traceparent, ...), same connection info
        // (per-connection and per-client bounds), and the caller.
        let grpc = GrpcParts {
            headers: &parts.headers,
            extensions: &parts.extensions,
            caller,
        };
        let query = parts.uri.query().unwrap_or("");
        let (jobs, admin) = (&*self.jobs, &*self.admin);
        match route {
            Route::Submit => {
                let m: proto::SubmitRequest = self.body(&parts.headers, body).await?;
                self.reply(jobs.submit(grpc.request(m)).await?.get_ref())
            }
            Route::SubmitRaw(kind) => {
                let payload = self.raw_body(body).await?;
                let m = raw_submit::request(kind, payload, query)?;
                self.reply(jobs.submit(grpc.request(m)).await?.get_ref())
            }
            Route::SubmitBatch => {
                let m: proto::SubmitBatchRequest = self.body(&parts.headers, body).await?;
                self.reply(jobs.submit_batch(grpc.request(m)).await?.get_ref())
            }
            Route::List => {
                let m: proto::ListJobsRequest = self.json.from_query(query)?;
                self.reply(jobs.list_jobs(grpc.request(m)).await?.get_ref())
            }
            Route::Get(id) => {
                let m = proto::GetStatusRequest { id };
                self.reply(jobs.get_status(grpc.request(m)).await?.get_ref())
            }
            Route::Cancel(id) => {
                let m = proto::CancelRequest { id };
                self.reply(jobs.cancel(grpc.request(m)).await?.get_ref())
            }
            Route::Events(id) => {
                let after_sequence = resume_position(&parts.headers, query)?;
                let m = proto::WatchStatusRequest { id, after_sequence };
                let stream = jobs.watch_status(grpc.request(m)).await?.into_inner();
                Ok(self.sse(stream, |e: &proto::JobEvent| e.sequence))
            }
            Route::Logs(id) => self.logs(jobs, &grpc, id, query).await,
            Route::Graph(id) => self.graph(jobs, &grpc, id, query).await,
            Route::AllEvents => {
                let mut m: proto::WatchJobsRequest = self.json.from_query(query)?;
                if let Some(after) = last_event_id(&parts.headers)? {
                    m.after = after;
                }
                let stream = jobs.watch_jobs(grpc.request(m)).await?.into_inner();
                Ok(self.sse(stream, |e: &proto::WatchJobsResponse| e.position))
            }
            Route::Retry => {
                let m: proto::RetryJobsRequest = self.body(&parts.headers, body).await?;
                self.reply(admin.retry_jobs(grpc.request(m)).await?.get_ref())
            }
            Route::Kinds => {
                let m: proto::ListKindsRequest = self.json.from_query(query)?;
                self.reply(admin.list_kinds(grpc.request(m)).await?.get_ref())
            }
            Route::PauseKind(kind) => {
                let m = proto::PauseKindRequest { kind };
                self.reply(admin.pause_kind(grpc.request(m)).await?.get_ref())
            }
            Route::ResumeKind(kind) => {
                let m = proto::ResumeKindRequest { kind };
                self.reply(admin.resume_kind(grpc.request(m)).await?.get_ref())
            }
            Route::Schedules
            | Route::TriggerSchedule(_)
            | Route::PauseSchedule(_)
            | Route::ResumeSchedule(_)
            | Route::CreateSchedule
            | Route::UpdateSchedule(_)
            | Route::DeleteSchedule(_) => {
                self.schedules(admin, &grpc, route, query, &parts.headers, body)
                    .await
            }
            Route::Workers => {
                let m: proto::ListWorkersRequest = self.json.from_query(query)?;
                self.reply(admin.list_workers(grpc.request(m)).await?.get_ref())
            }
            // Answered in `serve`.
            Route::Ui(asset) => Ok(ui::response(asset)),
            Route::UiRedirect | Route::Favicon | Route::WhoAmI | Route::Throughput => {
                Err(Status::internal("this route is answered earlier").into())
            }
        }
    }

    /// Reads a JSON body of at most `max_body` bytes as `M`; an empty body
    /// is `{}`.
    async fn body<M: Named>(&self, headers: &HeaderMap, body: Body) -> Result<M, HttpError> {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let essence = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(HttpError::with_http(
                    json::bad_body(format!(
                        "content type {essence:?} is not accepted: send Content-Type: application/json"
                    )),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ));
            }
        }
        let bytes = http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| self.body_error(e))?
            .to_bytes();
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        Ok(self.json.from_slice(bytes)?)
    }

    /// The request body as it is, at most `max_body` bytes (the same bound
    /// and refusal as a JSON body).
    async fn raw_body(&self, body: Body) -> Result<Vec<u8>, HttpError> {
        Ok(http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| self.body_error(e))?
            .to_bytes()
            .to_vec())
    }

    fn body_error(&self, e: Box<dyn std::error::Error + Send + Sync>) -> HttpError {
        if e.is::<http_body_util::LengthLimitError>() {
            return HttpError::with_http(
                Status::resource_exhausted(format!(
                    "request body is over {} bytes (twice limits.max_message_bytes)",
                    self.max_body
                )),
                StatusCode::PAYLOAD_TOO_LARGE,
            );
        }
        // The request budgets fail a body with a status of their own.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(c) = cause {
            if let Some(s) = c.downcast_ref::<Status>() {
                return s.clone().into();
            }
            cause = c.source();
        }
        json::bad_body(format!("cannot read the request body: {e}")).into()
    }

    fn reply<M: Named>(&self, msg: &M) -> Result<Response, HttpError> {
        let body = self.json.to_vec(msg)?;
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    }

    /// `GET /v1/jobs/{id}/logs?after=&limit=` (GetLogs, JSON), or with
    /// `follow=true` the lines as server-sent events (WatchLogs; `id:` is
    /// the line's seq, and `Last-Event-ID` resumes).
    async fn logs(
        &self,
        jobs: &JobApi,
        grpc: &GrpcParts<'_>,
        id: String,
        query: &str,
    ) -> Result<Response, HttpError> {
        let (mut after, mut limit, mut follow) = (0u64, 0u32, false);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad = |what: &str| Status::invalid_argument(format!("{k}: {what}, got {v:?}"));
            match k.as_ref() {
                "after" => after = v.parse().map_err(|_| bad("a number"))?,
                "limit" => limit = v.parse().map_err(|_| bad("a number"))?,
                "follow" => follow = v.parse().map_err(|_| bad("true or false"))?,
                _ => {
                    return Err(Status::invalid_argument(format!("unknown parameter {k:?}")).into())
                }
            }
        }
        if follow {
            if let Some(a) = last_event_id(grpc.headers)? {
                after = a;
            }
            let m = proto::WatchLogsRequest { id, after };
            let stream = jobs.watch_logs(grpc.request(m)).await?.into_inner();
            return Ok(self.sse(stream, |l: &proto::LogLine| l.seq));
        }
        let m = proto::GetLogsRequest { id, after, limit };
        self.reply(jobs.get_logs(grpc.request(m)).await?.get_ref())
    }

    /// `GET /v1/jobs/{id}/graph?depth=N` (GetJobGraph): `depth` a number
    /// (absent or 0: the default), no other parameter.
    async fn graph(
        &self,
        jobs: &JobApi,
        grpc: &GrpcParts<'_>,
        id: String,
        query: &str,
    ) -> Result<Response, HttpError> {
        let mut depth = 0;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "depth" => {
                    depth = v.parse().map_err(|_| {
                        json::bad_query(&k, &format!("expected a number of steps, got {v:?}"))
                    })?;
                }
                _ => return Err(json::bad_query(&k, "unknown query parameter").into()),
            }
        }
        let m = proto::GetJobGraphRequest { id, depth };
        self.reply(jobs.get_job_graph(grpc.request(m)).await?.get_ref())
    }

    /// A watch stream as server-sent events: `id:` is the event's resume
    /// position (WatchStatus' sequence, WatchJobs' position), so a
    /// browser's EventSource resumes by itself; `data:` the message. A
    /// stream that ends with an error (drain, a stalled reader, a resume
    /// position too old) sends it as an `error` event with the status JSON,
    /// then ends.
    fn sse<S, M>(&self, stream: S, position: fn(&M) -> u64) -> Response
    where
        S: futures_util::Stream<Item = Result<M, Status>> + Send + 'static,
        M: Named + Send + 'static,
    {
        let json = self.json.clone();
        let events = stream.map(move |item| {
            let event = match item.and_then(|ev| Ok((position(&ev), json.to_vec(&ev)?))) {
                Ok((sequence, data)) => Event::default()
                    .id(sequence.to_string())
                    .data(String::from_utf8_lossy(&data)),
                Err(status) => Event::default()
                    .event("error")
                    .data(String::from_utf8_lossy(&json.status(&status))),
            };
            Ok::<_, Infallible>(event)
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
            .into_response()
    }

    fn error(&self, e: HttpError) -> Response {
        use tonic_types::StatusExt;
        let code = e.http.unwrap_or_else(|| http_status(e.status.code()));
        let mut res = (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            self.json.status(&e.status),
        )
            .into_response();
        let h = res.headers_mut();
        if let Some(allow) = e.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if code == StatusCode::UNSUPPORTED_MEDIA_TYPE && e.status.code() == Code::Unimplemented {
            // As gRPC answers a wrong content type, for gRPC clients.
            h.insert("grpc-status", HeaderValue::from_static("12"));
        }
        let wait = e
            .status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay);
        if let Some(wait) = wait {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

/// The `Last-Event-ID` header (what EventSource sends when it
/// reconnects), if there is one; empty counts as none.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        Status::from(crate::api::error::ApiError::invalid(
            "Last-Event-ID",
            "expected a resume position (an unsigned integer)",
        ))
        .into()
    })
}

/// What a gRPC request carries besides its message, taken from the HTTP
/// request.
struct GrpcParts<'a> {
    headers: &'a HeaderMap,
    extensions: &'a http::Extensions,
    caller: Option<crate::transport::auth::Caller>,
}

impl GrpcParts<'_> {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::from_parts(
            MetadataMap::from_headers(self.headers.clone()),
            self.extensions.clone(),
            msg,
        );
        if let Some(c) = self.caller {
            r.extensions_mut().insert(c);
        }
        r
    }
}

/// Where a watch resumes: `Last-Event-ID` (what EventSource sends when it
/// reconnects), else `?after_sequence=`, else 0.
fn resume_position(headers: &HeaderMap, query: &str) -> Result<u64, HttpError> {
    let bad = |what: &str| {
        crate::api::error::ApiError::invalid(
            what,
            "expected a sequence number (an unsigned integer)",
        )
    };
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().unwrap_or("").trim();
        if v.is_empty() {
            return Ok(0);
        }
        return v
            .parse()
            .map_err(|_| Status::from(bad("Last-Event-ID")).into());
    }
    let mut after = 0;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "after_sequence" && k != "afterSequence" {
            return Err(Status::from(crate::api::error::ApiError::invalid(
                format!("query.{k}"),
                "unknown query parameter",
            ))
            .into());
        }
        after = v
            .parse()
            .map_err(|_| Status::from(bad("query.after_sequence")))?;
    }
    Ok(after)
}

/// Refuses requests a browser sends on another site's behalf: a page
/// elsewhere could otherwise make a visitor's browser submit jobs to a
/// daemon on localhost without auth (a form POST needs no preflight).
/// Browsers always send `Origin` on such requests; curl and gRPC clients
/// do not, and a same-origin page (`Origin` = this host) is let through.
fn refuse_cross_origin(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "cross-origin request from {origin:?} refused (the JSON routes serve their own origin only)"
    ))
    .into())
}

/// The branches of the port.
#[derive(Clone)]
struct Branches {
    grpc: axum::Router,
    grpc_web: axum::Router,
    json: axum::Router,
    hosts: hosts::AllowedHosts,
}

/// The name a request was sent to: HTTP/2's `:authority`, else `Host`.
fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// 403 for a browser-facing request to a name not served here.
fn wrong_host(name: &str) -> http::Response<Body> {
    let body = serde_json::json!({
        "code": Code::PermissionDenied as i32,
        "codeName": "PERMISSION_DENIED",
        "details": [],
        "message": format!(
            "host {name:?} is not served here: add it to [http] allowed_hosts (requests \
             naming other hosts are refused, against DNS rebinding)"
        ),
    });
    http::Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// One router for the port: `application/grpc-web*` to gRPC-Web (tonic-web
/// turns it into gRPC), `application/grpc*` to gRPC, anything else to the
/// JSON door. Browser-facing requests (all but plain gRPC) must name an
/// allowed host ([`hosts`]).
pub fn one_port(
    grpc: axum::Router,
    grpc_web: axum::Router,
    json: axum::Router,
    hosts: hosts::AllowedHosts,
) -> axum::Router {
    let branches = Arc::new(Branches {
        grpc,
        grpc_web,
        json,
        hosts,
    });
    axum::Router::new()
        .fallback(
            |axum::extract::State(b): axum::extract::State<Arc<Branches>>,
             req: http::Request<Body>| async move {
                let ct = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes())
                    .unwrap_or(b"");
                let grpc =
                    ct.starts_with(b"application/grpc") && !ct.starts_with(b"application/grpc-web");
                if !grpc {
                    if let Some(name) = authority(&req).filter(|n| !b.hosts.allows(n)) {
                        return wrong_host(name);
                    }
                }
                let mut target = if grpc {
                    b.grpc.clone()
                } else if ct.starts_with(b"application/grpc-web") {
                    b.grpc_web.clone()
                } else {
                    b.json.clone()
                };
                match target.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            },
        )
        .with_state(branches)
}

#[cfg(test)]
mod tests;
