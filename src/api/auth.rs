//! Bearer-token authentication for `jobd.v1.JobService`, as a tower layer
//! wrapped around that service only: health and reflection stay open so
//! probes and `grpcurl list` work. Tokens are compared in constant time and
//! never logged.
//!
//! Roles: `submit` may call Submit, SubmitBatch, GetStatus, WatchStatus and
//! ListJobs (of every job: jobs have no owner); `admin` may also Cancel.

use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// Per-token submit rate: a token bucket per configured token.
struct Buckets {
    rate: f64,
    /// (tokens left, last refill) per configured token, by index.
    state: Mutex<Vec<(f64, Instant)>>,
}

impl Buckets {
    /// Takes one call's worth; `Err(wait)` when the bucket is empty.
    fn take(&self, i: usize) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (left, last) = &mut s[i];
        let now = Instant::now();
        *left = (*left + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *left) / self.rate))
        }
    }
}

/// The configured tokens; empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: std::sync::Arc<Vec<TokenConfig>>,
    buckets: Option<std::sync::Arc<Buckets>>,
}

impl Tokens {
    /// `submit_rate` 0 means no rate limit.
    pub fn new(tokens: Vec<TokenConfig>, submit_rate: u32) -> Tokens {
        let buckets = (submit_rate > 0).then(|| {
            let rate = f64::from(submit_rate);
            std::sync::Arc::new(Buckets {
                rate,
                state: Mutex::new(vec![(rate, Instant::now()); tokens.len()]),
            })
        });
        Tokens {
            tokens: std::sync::Arc::new(tokens),
            buckets,
        }
    }

    /// The index and role of a presented token; every configured token is
    /// compared, so the time taken does not tell which one nearly matched.
    fn role(&self, presented: &[u8]) -> Option<(usize, Role)> {
        let mut found = None;
        for (i, t) in self.tokens.iter().enumerate() {
            if bool::from(t.token.expose().as_bytes().ct_eq(presented)) {
                found = Some((i, t.role));
            }
        }
        found
    }

    /// Whether a request with these headers may call `path`; which
    /// configured token it presented (`None` when auth is off).
    pub fn check(&self, headers: &http::HeaderMap, path: &str) -> Result<Option<Caller>, Status> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let (index, role) = self
            .role(presented)
            .ok_or_else(|| Status::unauthenticated("invalid token"))?;
        let method = path.rsplit('/').next().unwrap_or("");
        if role == Role::Submit && !SUBMIT_METHODS.contains(&method) {
            return Err(Status::permission_denied(format!(
                "a submit token may not call {method}; it needs an admin token"
            )));
        }
        if let (Some(b), "Submit" | "SubmitBatch") = (&self.buckets, method) {
            b.take(index).map_err(|wait| {
                use tonic_types::StatusExt;
                Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!("submit rate limit of {} calls/s for this token", b.rate),
                    tonic_types::ErrorDetails::with_retry_info(Some(wait)),
                )
            })?;
        }
        Ok(Some(Caller { token: index }))
    }
}

/// Who made a request, when auth is on: put in the request's extensions,
/// so per-client bounds can key on the token rather than the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The token's place in the configured list (never the token itself).
    pub token: usize,
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.tokens.check(req.headers(), req.uri().path()) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
