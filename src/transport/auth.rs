//! Bearer-token authentication for `jobd.v1.JobService`, as a tower layer
//! wrapped around that service only: health and reflection stay open so
//! probes and `grpcurl list` work. Tokens are compared in constant time and
//! never logged.
//!
//! Roles: `submit` may call Submit, SubmitBatch, GetStatus, WatchStatus,
//! WatchJobs and ListJobs (of every job: jobs have no owner); `viewer` may
//! only read (GetStatus, ListJobs, the watches, and AdminService's List*
//! calls); `worker` may call WorkerService (and nothing else); `admin` may
//! call everything. Which role may call what is a column of the one table
//! of RPCs ([`super::methods`]); the HTTP/JSON routes check the same
//! methods (see [`crate::http`]).

use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use subtle::ConstantTimeEq;
use tonic::server::NamedService;
use tonic::Status;

use crate::config::{Role, TokenConfig};

use super::methods::allowed;

/// The role as the config spells it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Submit => "submit",
        Role::Viewer => "viewer",
        Role::Worker => "worker",
        Role::Admin => "admin",
    }
}

/// Per-token submit rate: a token bucket per configured token.
struct Buckets {
    rate: f64,
    /// (tokens left, last refill) per configured token, by index.
    state: Mutex<Vec<(f64, Instant)>>,
}

impl Buckets {
    /// Takes `jobs` jobs' worth; `Err(wait)` when the bucket has too few.
    /// A batch larger than the burst (one second of the rate) goes through
    /// once the bucket is full and leaves it in debt, so the average rate
    /// holds and such a batch is not refused forever.
    fn take(&self, i: usize, jobs: usize) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (left, last) = &mut s[i];
        let now = Instant::now();
        *left = (*left + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        let jobs = jobs as f64;
        let need = jobs.min(self.rate);
        if *left >= need {
            *left -= jobs;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - *left) / self.rate))
        }
    }
}

/// Who made a request, put in the request's extensions by
/// [`Authenticated`] when authentication is on: submit rates and per-client
/// bounds key on the token rather than the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The token's place among the configured tokens (never the token).
    pub token: usize,
    pub role: Role,
}

/// The token of an `authorization` header: the scheme is matched without
/// regard to case (RFC 7235), and spaces after it are skipped.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let at = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(at);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

/// UNAUTHENTICATED without a token: how to send one, from the CLI and
/// from anything else.
pub const MISSING_TOKEN: &str = "missing bearer token: this daemon has [auth] on; pass --token \
     TOKEN or set JOBD_TOKEN (jobd's commands), or send the header `authorization: Bearer TOKEN`";

/// UNAUTHENTICATED with a token that is none of the configured ones.
pub const UNKNOWN_TOKEN: &str = "token not recognised: it matches none of the daemon's [auth] \
     tokens; check --token / JOBD_TOKEN (or the `authorization: Bearer` header)";

/// The configured tokens; empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: std::sync::Arc<Vec<TokenConfig>>,
    buckets: Option<std::sync::Arc<Buckets>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.tokens.len())
            .field("rate_limited", &self.buckets.is_some())
            .finish_non_exhaustive()
    }
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

    /// Whether authentication is on (some token is configured).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Who sent a request with these headers (`None` when authentication
    /// is off). A missing token and a token that matches none are told
    /// apart, each saying what to do.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .ok_or_else(|| Status::unauthenticated(MISSING_TOKEN))?;
        let (token, role) = self
            .role(presented)
            .ok_or_else(|| Status::unauthenticated(UNKNOWN_TOKEN))?;
        Ok(Some(Caller { token, role }))
    }

    /// Whether a request with these headers may call `path`, and who made
    /// it (`None` when authentication is off).
    pub fn check(&self, headers: &http::HeaderMap, path: &str) -> Result<Option<Caller>, Status> {
        let Some(Caller { token: index, role }) = self.identify(headers)? else {
            return Ok(None);
        };
        if !allowed(role, path) {
            let method = path.rsplit('/').next().unwrap_or("");
            let needs = [Role::Submit, Role::Viewer, Role::Worker]
                .into_iter()
                .filter(|r| allowed(*r, path))
                .map(role_name)
                .chain(["admin"])
                .collect::<Vec<_>>()
                .join(" or ");
            let article = if needs.starts_with('a') { "an" } else { "a" };
            return Err(Status::permission_denied(format!(
                "a {} token may not call {method}; it needs {article} {needs} token",
                role_name(role)
            )));
        }
        Ok(Some(Caller { token: index, role }))
    }

    /// Charges `jobs` submitted jobs to the caller's `submit_rate` (every
    /// job of a SubmitBatch counts, not the call).
    pub fn charge(&self, caller: Option<&Caller>, jobs: usize) -> Result<(), Status> {
        let (Some(b), Some(c)) = (&self.buckets, caller) else {
            return Ok(());
        };
        b.take(c.token, jobs).map_err(|wait| {
            use tonic_types::StatusExt;
            Status::with_error_details(
                tonic::Code::ResourceExhausted,
                format!("submit rate limit of {} jobs/s for this token", b.rate),
                tonic_types::ErrorDetails::with_retry_info(Some(wait)),
            )
        })
    }
}

/// Wraps a gRPC service with the token check.
#[derive(Debug, Clone)]
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

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for ok in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc"] {
            assert_eq!(bearer(ok.as_bytes()), Some(&b"abc"[..]), "{ok}");
        }
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer(bad.as_bytes()), None, "{bad}");
        }
    }
}
