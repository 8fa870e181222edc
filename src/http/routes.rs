//! Which route a request is for: the `/v1/` paths (custom methods as a
//! `:verb` suffix), the dashboard's files, and what a miss answers.

use http::{Method, StatusCode};
use tonic::Status;

use super::{ui, HttpError};

/// A route of the JSON door; ids and names as they appear in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Submit,
    /// `POST /v1/kinds/{kind}/jobs`: Submit with the raw body as payload.
    SubmitRaw(String),
    SubmitBatch,
    List,
    Get(String),
    Cancel(String),
    Events(String),
    Logs(String),
    /// `GET /v1/jobs/{id}/graph?depth=N`: GetJobGraph.
    Graph(String),
    AllEvents,
    Retry,
    Kinds,
    PauseKind(String),
    ResumeKind(String),
    Schedules,
    TriggerSchedule(String),
    PauseSchedule(String),
    ResumeSchedule(String),
    CreateSchedule,
    /// `PUT /v1/schedules/{id}`: the whole new definition.
    UpdateSchedule(String),
    DeleteSchedule(String),
    Workers,
    /// A file of the dashboard (no token needed: it holds no data).
    Ui(&'static ui::Asset),
    /// `/ui` → `/ui/`, so the page's relative links resolve; `/` too.
    UiRedirect,
    /// `/favicon.ico`: the dashboard's icon, where browsers look for it.
    Favicon,
    /// `GET /v1/whoami`: the caller's role, and whether auth is on.
    WhoAmI,
    /// `GET /v1/stats/throughput`: jobs finished per minute.
    Throughput,
}

impl Route {
    /// The gRPC method the route calls: the token check and the metrics
    /// label are that method's. `None` for what is not a call: the
    /// dashboard's files, and the routes that only need a known token
    /// (whoami, throughput).
    pub(super) fn grpc_method(&self) -> Option<&'static str> {
        Some(match self {
            Route::Submit | Route::SubmitRaw(_) => "/jobd.v1.JobService/Submit",
            Route::SubmitBatch => "/jobd.v1.JobService/SubmitBatch",
            Route::List => "/jobd.v1.JobService/ListJobs",
            Route::Get(_) => "/jobd.v1.JobService/GetStatus",
            Route::Cancel(_) => "/jobd.v1.JobService/Cancel",
            Route::Events(_) => "/jobd.v1.JobService/WatchStatus",
            // `?follow=true` calls WatchLogs: the same roles.
            Route::Logs(_) => "/jobd.v1.JobService/GetLogs",
            Route::Graph(_) => "/jobd.v1.JobService/GetJobGraph",
            Route::AllEvents => "/jobd.v1.JobService/WatchJobs",
            Route::Retry => "/jobd.v1.AdminService/RetryJobs",
            Route::Kinds => "/jobd.v1.AdminService/ListKinds",
            Route::PauseKind(_) => "/jobd.v1.AdminService/PauseKind",
            Route::ResumeKind(_) => "/jobd.v1.AdminService/ResumeKind",
            Route::Schedules => "/jobd.v1.AdminService/ListSchedules",
            Route::TriggerSchedule(_) => "/jobd.v1.AdminService/TriggerSchedule",
            Route::PauseSchedule(_) => "/jobd.v1.AdminService/PauseSchedule",
            Route::ResumeSchedule(_) => "/jobd.v1.AdminService/ResumeSchedule",
            Route::CreateSchedule => "/jobd.v1.AdminService/CreateSchedule",
            Route::UpdateSchedule(_) => "/jobd.v1.AdminService/UpdateSchedule",
            Route::DeleteSchedule(_) => "/jobd.v1.AdminService/DeleteSchedule",
            Route::Workers => "/jobd.v1.AdminService/ListWorkers",
            Route::Ui(_)
            | Route::UiRedirect
            | Route::Favicon
            | Route::WhoAmI
            | Route::Throughput => return None,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Miss {
    NotFound,
    /// The path exists for these methods only.
    Method(&'static str),
}

/// The answer to a request that matches no route: 415 for a gRPC path
/// without a gRPC content type, 404 for an unknown path, 405 (with
/// `Allow`) for a known path and another method.
pub(super) fn missed(method: &Method, path: &str, miss: Miss) -> HttpError {
    match miss {
        Miss::NotFound if GRPC_PREFIXES.iter().any(|p| path.starts_with(p)) => {
            HttpError::with_http(
                Status::unimplemented(
                    "unsupported content type: send application/grpc (or use the /v1/ JSON routes)",
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            )
        }
        Miss::NotFound => HttpError::with_http(
            Status::not_found(format!("no route for {method} {path}")),
            StatusCode::NOT_FOUND,
        ),
        Miss::Method(allow) => HttpError {
            status: Status::unimplemented(format!(
                "{path} does not take {method}; it takes {allow}"
            )),
            http: Some(StatusCode::METHOD_NOT_ALLOWED),
            allow: Some(allow),
        },
    }
}

/// Matches a request to its route. Hand-written rather than axum's router:
/// custom methods are a `:verb` suffix on the last segment
/// (`/v1/jobs/{id}:cancel`, Google's API style), which path patterns cannot
/// split, and a wrong method must say which ones the path takes.
pub(super) fn route(method: &Method, path: &str) -> Result<Route, Miss> {
    if path == "/ui" || path == "/" {
        return (method == Method::GET)
            .then_some(Route::UiRedirect)
            .ok_or(Miss::Method("GET"));
    }
    if path == "/favicon.ico" {
        return (method == Method::GET)
            .then_some(Route::Favicon)
            .ok_or(Miss::Method("GET"));
    }
    if let Some(file) = path.strip_prefix("/ui/") {
        let asset = ui::asset(file).ok_or(Miss::NotFound)?;
        return (method == Method::GET)
            .then_some(Route::Ui(asset))
            .ok_or(Miss::Method("GET"));
    }
    let rest = path.strip_prefix("/v1/").ok_or(Miss::NotFound)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let pick = |get: Option<Route>, post: Option<Route>| match (method, get, post) {
        (&Method::GET, Some(r), _) | (&Method::POST, _, Some(r)) => Ok(r),
        (_, Some(_), Some(_)) => Err(Miss::Method("GET, POST")),
        (_, Some(_), None) => Err(Miss::Method("GET")),
        (_, None, _) => Err(Miss::Method("POST")),
    };
    // `name:verb` → (name, verb); a name must not be empty.
    let verb = |s: &str| -> Option<(String, Option<String>)> {
        let (name, verb) = match s.rsplit_once(':') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (s, None),
        };
        (!name.is_empty()).then(|| (name.to_string(), verb))
    };
    match segments.as_slice() {
        ["jobs"] => pick(Some(Route::List), Some(Route::Submit)),
        ["jobs:batch"] => pick(None, Some(Route::SubmitBatch)),
        ["jobs:retry"] => pick(None, Some(Route::Retry)),
        ["jobs", last] => match verb(last).ok_or(Miss::NotFound)? {
            (id, None) => pick(Some(Route::Get(id)), None),
            (id, Some(v)) if v == "cancel" => pick(None, Some(Route::Cancel(id))),
            _ => Err(Miss::NotFound),
        },
        ["jobs", id, "events"] if !id.is_empty() && !id.contains(':') => {
            pick(Some(Route::Events(id.to_string())), None)
        }
        ["jobs", id, "logs"] if !id.is_empty() && !id.contains(':') => {
            pick(Some(Route::Logs(id.to_string())), None)
        }
        ["jobs", id, "graph"] if !id.is_empty() && !id.contains(':') => {
            pick(Some(Route::Graph(id.to_string())), None)
        }
        ["events"] => pick(Some(Route::AllEvents), None),
        ["kinds"] => pick(Some(Route::Kinds), None),
        ["kinds", kind, "jobs"] if !kind.is_empty() && !kind.contains(':') => {
            pick(None, Some(Route::SubmitRaw(kind.to_string())))
        }
        ["kinds", last] => match verb(last).ok_or(Miss::NotFound)? {
            (k, Some(v)) if v == "pause" => pick(None, Some(Route::PauseKind(k))),
            (k, Some(v)) if v == "resume" => pick(None, Some(Route::ResumeKind(k))),
            _ => Err(Miss::NotFound),
        },
        ["schedules"] => pick(Some(Route::Schedules), Some(Route::CreateSchedule)),
        ["schedules", last] => match verb(last).ok_or(Miss::NotFound)? {
            (s, None) => match *method {
                Method::PUT => Ok(Route::UpdateSchedule(s)),
                Method::DELETE => Ok(Route::DeleteSchedule(s)),
                _ => Err(Miss::Method("PUT, DELETE")),
            },
            (s, Some(v)) if v == "trigger" => pick(None, Some(Route::TriggerSchedule(s))),
            (s, Some(v)) if v == "pause" => pick(None, Some(Route::PauseSchedule(s))),
            (s, Some(v)) if v == "resume" => pick(None, Some(Route::ResumeSchedule(s))),
            _ => Err(Miss::NotFound),
        },
        ["workers"] => pick(Some(Route::Workers), None),
        ["whoami"] => pick(Some(Route::WhoAmI), None),
        ["stats", "throughput"] => pick(Some(Route::Throughput), None),
        _ => Err(Miss::NotFound),
    }
}

/// gRPC service paths: a request for one without a gRPC content type is a
/// gRPC client's mistake, answered as gRPC answers it (415, UNIMPLEMENTED).
pub(super) const GRPC_PREFIXES: &[&str] = &["/jobd.v1.", "/grpc.health.", "/grpc.reflection."];
