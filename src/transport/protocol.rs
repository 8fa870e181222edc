//! A tower layer for requests that are not well-formed gRPC, so they get
//! the client-error codes DESIGN.md promises instead of INTERNAL:
//! - a content type other than `application/grpc*` answers HTTP 415 with
//!   UNIMPLEMENTED (the gRPC spec's answer to an unsupported content type);
//! - a message that does not decode as the method's protobuf answers
//!   INVALID_ARGUMENT (tonic's codec reports it as INTERNAL, and the metrics
//!   would count a client's mistake as a server error).

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::{Code, Status};

/// The message tonic's prost codec gives an undecodable request, as it is
/// sent (grpc-message is percent-encoded).
const DECODE_FAILURE: &str = "failed%20to%20decode%20Protobuf%20message";

#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolErrorsLayer;

impl<S> tower::Layer<S> for ProtocolErrorsLayer {
    type Service = ProtocolErrors<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProtocolErrors { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ProtocolErrors<S> {
    inner: S,
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Rewrites an INTERNAL decode failure to INVALID_ARGUMENT. tonic answers
/// it before the handler runs, so it is always a trailers-only response:
/// the status is in the headers.
fn fix_decode_failure(h: &mut http::HeaderMap) {
    let internal = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13");
    let decode = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.starts_with(DECODE_FAILURE));
    if internal && decode {
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for ProtocolErrors<S>
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
        if !is_grpc(req.headers()) {
            let status = Status::new(
                Code::Unimplemented,
                "unsupported content type: send application/grpc",
            );
            let mut res: Self::Response = status.into_http();
            *res.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Box::pin(async move { Ok(res) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            fix_decode_failure(res.headers_mut());
            Ok(res)
        })
    }
}
