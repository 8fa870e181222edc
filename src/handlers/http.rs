//! The `http` handler: sends the payload to an operator-configured URL.
//! 2xx = success (the body, capped, is the result); 408, 429, 5xx and
//! connection errors = retry, honouring `Retry-After`; other 4xx =
//! permanent. Each kind has one pooled client. Every attempt of a job sends
//! the same `Idempotency-Key` (the job id), so the receiver can deduplicate.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use super::{Handler, HandlerError, JobContext, Output};

/// The longest `Retry-After` honoured; a larger one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of an error response kept for `last_error`.
const ERROR_BODY_BYTES: usize = 1024;

pub struct HttpHandler {
    client: reqwest::Client,
    url: String,
    method: Method,
    headers: HeaderMap,
    max_response_bytes: usize,
}

impl HttpHandler {
    pub fn new(
        url: &str,
        method: &str,
        headers: &BTreeMap<String, String>,
        max_response_bytes: usize,
    ) -> Result<HttpHandler, String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            let value =
                HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpHandler {
            client,
            url: url.to_string(),
            method: Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?,
            headers: map,
            max_response_bytes,
        })
    }
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
        let request = self
            .client
            .request(self.method.clone(), &self.url)
            .headers(headers)
            .body(job.payload.clone())
            .send();
        let mut resp = tokio::select! {
            r = request => r.map_err(|e| HandlerError::retryable(format!("request to {} failed: {e}", self.url)))?,
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
