//! Builtin kinds for demos, tests and benchmarks.

use std::time::Duration;

use async_trait::async_trait;

use super::{Handler, HandlerError, JobContext, Output};

/// `echo`: the result is the payload.
#[derive(Debug)]
pub struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        Ok(Output {
            result: job.payload,
        })
    }
}

/// `sleep`: the payload is a number of milliseconds (decimal text; empty = 0).
#[derive(Debug)]
pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        let text = std::str::from_utf8(&job.payload).unwrap_or("").trim();
        let ms: u64 = if text.is_empty() {
            0
        } else {
            text.parse().map_err(|_| {
                HandlerError::permanent(format!(
                    "sleep: payload must be a number of milliseconds, got {text:?}"
                ))
            })?
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(Output::default()),
            _ = job.cancel.cancelled() => Err(HandlerError::retryable("sleep: interrupted")),
        }
    }
}

/// `fail`: fails on purpose. The payload picks how:
/// empty or any text → retryable error with that text; `permanent` →
/// permanent error; `panic` → the handler panics; `until:N` → fails while
/// the attempt number is below N, then succeeds (retry-then-success).
#[derive(Debug)]
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        let text = String::from_utf8_lossy(&job.payload).trim().to_string();
        if text == "permanent" {
            return Err(HandlerError::permanent("fail: permanent failure requested"));
        }
        if text == "panic" {
            panic!("fail: panic requested by payload");
        }
        if let Some(n) = text.strip_prefix("until:") {
            let n: u32 = n
                .parse()
                .map_err(|_| HandlerError::permanent(format!("fail: bad payload {text:?}")))?;
            if job.attempt >= n {
                return Ok(Output {
                    result: format!("succeeded on attempt {}", job.attempt).into(),
                });
            }
            return Err(HandlerError::retryable(format!(
                "fail: attempt {} of until:{n}",
                job.attempt
            )));
        }
        let why = if text.is_empty() {
            "failure requested"
        } else {
            &text
        };
        Err(HandlerError::retryable(format!("fail: {why}")))
    }
}
