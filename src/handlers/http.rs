//! The `http` handler: sends the payload to an operator-configured URL.
//! 2xx = success (the body, capped, is the result); 408, 429, 5xx and
//! connection errors = retry, honouring `Retry-After`; other 4xx =
//! permanent. Each kind has one pooled client. Every attempt of a job sends
//! the same `Idempotency-Key` (the job id), so the receiver can deduplicate.
//! `https://` URLs use rustls (ring): the system's roots or the kind's `ca`,
//! and a client certificate when the kind sets `cert`/`key`. A TLS failure
//! (bad certificate) is a connection error: retried, its cause in
//! `last_error`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use tokio_rustls::rustls;

use super::{trace_headers, Handler, HandlerError, JobContext, Output};
use crate::client_tls::{client_config, error_chain as chain, ClientTlsError, Fields};
use crate::config::{ClientTls, ServerCheck};

use super::MAX_RETRY_AFTER;
/// Bytes of an error response kept for `last_error`.
const ERROR_BODY_BYTES: usize = 1024;

pub struct HttpHandler {
    client: reqwest::Client,
    url: String,
    method: Method,
    headers: HeaderMap,
    max_response_bytes: usize,
}

impl std::fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandler")
            .field("url", &self.url)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Why an `http` kind's handler cannot be built. Each message starts with
/// the kind's key it concerns (`ca: ...`, `headers.X: ...`).
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("headers.{name}: {source}")]
    HeaderName {
        name: String,
        source: reqwest::header::InvalidHeaderName,
    },
    #[error("headers.{name}: {source}")]
    HeaderValue {
        name: String,
        source: reqwest::header::InvalidHeaderValue,
    },
    #[error(transparent)]
    Tls(#[from] crate::client_tls::ClientTlsError),
    #[error("url: {}", chain(.0))]
    Client(#[source] reqwest::Error),
    #[error("method: {0}")]
    Method(#[source] http::method::InvalidMethod),
}

/// What an `http` kind's handler is built from (checked by the config).
pub struct HttpSettings<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub tls: &'a ClientTls,
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
}

impl std::fmt::Debug for HttpSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpHandler {
    /// Reads the kind's TLS files once. Errors start with the config key
    /// they concern (`ca: ...`).
    pub fn new(s: HttpSettings<'_>) -> Result<HttpHandler, HttpSetupError> {
        let mut map = HeaderMap::new();
        for (k, v) in s.headers {
            let name =
                HeaderName::try_from(k.as_str()).map_err(|source| HttpSetupError::HeaderName {
                    name: k.clone(),
                    source,
                })?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|source| {
                HttpSetupError::HeaderValue {
                    name: k.clone(),
                    source,
                }
            })?;
            map.insert(name, value);
        }
        // Always a config of our own: reqwest has no crypto provider built
        // in (it would pick one at run time), so plain http:// kinds get
        // one too.
        let client = reqwest::Client::builder()
            .connect_timeout(s.connect_timeout)
            .tls_backend_preconfigured(client_tls(s.tls)?)
            .build()
            .map_err(HttpSetupError::Client)?;
        Ok(HttpHandler {
            client,
            url: s.url.to_string(),
            method: Method::from_bytes(s.method.as_bytes()).map_err(HttpSetupError::Method)?,
            headers: map,
            max_response_bytes: s.max_response_bytes,
        })
    }
}

/// The rustls client config of one kind: its `ca` or the system's roots
/// (name checked), its client certificate if any; HTTP/1.1 only (the
/// client speaks no h2).
fn client_tls(tls: &ClientTls) -> Result<rustls::ClientConfig, ClientTlsError> {
    let fields = Fields {
        ca: "ca",
        cert: "cert",
        key: "key",
    };
    let mut config = client_config(tls, ServerCheck::Full, &fields)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `Retry-After` as delta-seconds (an HTTP-date falls back to the backoff).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

async fn body_capped(resp: &mut reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room < chunk.len() {
            break;
        }
    }
    out
}

#[async_trait]
impl Handler for HttpHandler {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        // One map, so a configured header replaces the default of the same
        // name (a configured Content-Type is the only one sent) while the
        // job's own identifiers always win.
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
        let id = HeaderValue::from_str(&job.id.to_string())
            .map_err(|e| HandlerError::permanent(format!("job id header: {e}")))?;
        headers.insert("idempotency-key", id.clone());
        headers.insert("x-jobd-job-id", id);
        headers.insert("x-jobd-attempt", HeaderValue::from(job.attempt));
        for (name, value) in trace_headers(&job.trace) {
            // Checked printable ASCII when the job was submitted.
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        let request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(headers)
            .body(job.payload.clone())
            .send();
        let mut resp = tokio::select! {
            r = request => r.map_err(|e| HandlerError::retryable(format!("request to {} failed: {}", self.url, chain(&e))))?,
            _ = job.cancel.cancelled() => return Err(HandlerError::retryable("request stopped")),
        };
        let status = resp.status();
        if status.is_success() {
            let body = body_capped(&mut resp, self.max_response_bytes).await;
            return Ok(Output {
                result: body.into(),
            });
        }
        let after = retry_after(resp.headers());
        let body = body_capped(&mut resp, ERROR_BODY_BYTES).await;
        let message = format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
        let retry = status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error();
        if retry {
            Err(HandlerError::Retryable { message, after })
        } else {
            Err(HandlerError::Permanent { message })
        }
    }
}
