//! The routes that are not RPCs and need only a known token:
//! `GET /v1/whoami` (the caller's role and the methods it may call, so the
//! dashboard shows only the actions that will work) and
//! `GET /v1/stats/throughput` (jobs finished per minute, the dashboard's
//! chart). Their bodies are plain JSON in the API's camelCase.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::json;
use tonic::Status;

use super::routes::Route;
use super::{refuse_cross_origin, HttpApi, HttpError};
use crate::config::Role;
use crate::transport::auth::role_name;
use crate::transport::methods::{allowed, RPCS};

/// Minutes `GET /v1/stats/throughput` answers without `?minutes=`.
const DEFAULT_MINUTES: u64 = 60;

impl HttpApi {
    /// Answers [`Route::WhoAmI`] and [`Route::Throughput`].
    pub(super) fn info(
        &self,
        route: &Route,
        req: &http::Request<Body>,
    ) -> Result<Response, HttpError> {
        refuse_cross_origin(req.headers())?;
        let caller = self.tokens.identify(req.headers())?;
        let body = match route {
            Route::WhoAmI => whoami(caller.map(|c| c.role), self.tokens.enabled()),
            Route::Throughput => self.throughput(req.uri().query().unwrap_or(""))?,
            _ => return Err(Status::internal("not an info route").into()),
        };
        Ok((
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response())
    }

    fn throughput(&self, query: &str) -> Result<serde_json::Value, HttpError> {
        let mut minutes = DEFAULT_MINUTES;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad = |why: &str| {
                Status::from(crate::api::error::ApiError::invalid(
                    format!("query.{k}"),
                    why,
                ))
            };
            match k.as_ref() {
                "minutes" => {
                    minutes = v
                        .parse()
                        .ok()
                        .filter(|m| (1..=crate::throughput::WINDOW_MINUTES).contains(m))
                        .ok_or_else(|| bad("expected a number of minutes, 1 to 60"))?;
                }
                _ => return Err(bad("unknown query parameter; this route takes minutes").into()),
            }
        }
        let rows: Vec<serde_json::Value> = self
            .metrics
            .throughput()
            .last(minutes)
            .into_iter()
            .map(|m| {
                let total = |f: fn(&crate::throughput::Counts) -> u64| -> u64 {
                    m.kinds.values().map(f).sum()
                };
                json!({
                    "start": prost_types::Timestamp {
                        seconds: i64::try_from(m.minute * 60).unwrap_or(i64::MAX),
                        nanos: 0,
                    }
                    .to_string(),
                    "succeeded": total(|c| c.succeeded),
                    "failed": total(|c| c.failed),
                    "cancelled": total(|c| c.cancelled),
                    "kinds": m.kinds,
                })
            })
            .collect();
        Ok(json!({ "minutes": rows }))
    }
}

/// The caller's role and the methods it may call (every method when auth
/// is off: anyone who reaches the port may do everything).
fn whoami(role: Option<Role>, auth: bool) -> serde_json::Value {
    let effective = role.unwrap_or(Role::Admin);
    let methods: Vec<&str> = RPCS
        .iter()
        .filter(|r| r.path.starts_with("/jobd.v1.") && allowed(effective, r.path))
        .filter_map(|r| r.path.rsplit('/').next())
        .collect();
    json!({
        "authEnabled": auth,
        "role": role.map(role_name),
        "methods": methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_lists_what_the_role_may_call() {
        let v = whoami(Some(Role::Viewer), true);
        assert_eq!(v["role"], "viewer");
        let methods: Vec<&str> = v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(methods.contains(&"ListJobs") && methods.contains(&"ListKinds"));
        assert!(!methods.contains(&"RetryJobs") && !methods.contains(&"PauseKind"));
        let open = whoami(None, false);
        assert_eq!(open["authEnabled"], false);
        assert_eq!(open["role"], serde_json::Value::Null);
        assert!(open["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "Cancel"));
    }
}
