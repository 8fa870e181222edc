//! Bearer-token authentication for `jobd.v1.JobService`, as a tower layer
//! wrapped around that service only: health and reflection stay open so
//! probes and `grpcurl list` work. Tokens are compared in constant time and
//! never logged.
//!
//! Roles: `submit` may call Submit, SubmitBatch, GetStatus, WatchStatus and
//! ListJobs (of every job: jobs have no owner); `admin` may also Cancel.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use subtle::ConstantTimeEq;
use tonic::server::NamedService;
use tonic::Status;

use crate::config::{Role, TokenConfig};

/// Methods a `submit` token may call.
const SUBMIT_METHODS: &[&str] = &[
    "Submit",
    "SubmitBatch",
    "GetStatus",
    "WatchStatus",
    "ListJobs",
];

/// The configured tokens; empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(std::sync::Arc<Vec<TokenConfig>>);

impl Tokens {
    pub fn new(tokens: Vec<TokenConfig>) -> Tokens {
        Tokens(std::sync::Arc::new(tokens))
    }

    /// The role of a presented token; every configured token is compared,
    /// so the time taken does not tell which one nearly matched.
    fn role(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for t in self.0.iter() {
            if bool::from(t.token.expose().as_bytes().ct_eq(presented)) {
                found = Some(t.role);
            }
        }
        found
    }

    /// Whether a request with these headers may call `path`.
    pub fn check(&self, headers: &http::HeaderMap, path: &str) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let role = self
            .role(presented)
            .ok_or_else(|| Status::unauthenticated("invalid token"))?;
        let method = path.rsplit('/').next().unwrap_or("");
        match role {
            Role::Admin => Ok(()),
            Role::Submit if SUBMIT_METHODS.contains(&method) => Ok(()),
            Role::Submit => Err(Status::permission_denied(format!(
                "a submit token may not call {method}; it needs an admin token"
            ))),
        }
    }
}

/// Wraps a gRPC service with the token check.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    tokens: Tokens,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, tokens: Tokens) -> Self {
        Authenticated { inner, tokens }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.tokens.check(req.headers(), req.uri().path()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
