//! A tower layer that counts every gRPC request by method and status code
//! and times it, so no handler carries metrics code. For streams the time
//! and code are those of the response headers (the stream's start).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use tonic::Code;

use crate::metrics::Metrics;

/// The canonical upper-case name of a status code.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    pub metrics: Arc<Metrics>,
    /// A span per RPC when spans are exported.
    pub spans: Option<crate::otel::Spans>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
            spans: self.spans.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    spans: Option<crate::otel::Spans>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // The table's label: a client cannot grow the label set.
        let method = super::methods::label(path);
        let metrics = self.metrics.clone();
        let span = self.spans.as_ref().map(|s| rpc_span(s, method, &req));
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                // An error in the headers means a trailers-only response;
                // no grpc-status header means the call is under way (OK so far).
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(Code::from_i32(c))),
                Err(_) => "UNKNOWN",
            };
            metrics.grpc_request(method, code, started.elapsed());
            if let Some(mut span) = span {
                span.attr("rpc.grpc.status_code", code);
                span.end((code != "OK").then(|| code.to_string()));
            }
            // In the RPC's span (RUST_LOG=jobd=debug): one line per call.
            tracing::debug!(code, elapsed = ?started.elapsed(), "rpc answered");
            res
        })
    }
}

/// The RPC's server span, a child of the caller's `traceparent` if it sent
/// one (named by the bounded method label, so a client cannot mint names).
fn rpc_span<B>(
    spans: &crate::otel::Spans,
    method: &str,
    req: &http::Request<B>,
) -> crate::otel::ActiveSpan {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let h = |k| req.headers().get(k).and_then(|v| v.to_str().ok());
    let parent = crate::job::TraceContext::from_headers(h("traceparent"), h("tracestate"));
    let mut span = spans.start(
        method.trim_start_matches('/').to_string(),
        SpanKind::Server,
        parent.as_ref(),
        None,
    );
    span.attr("rpc.system", "grpc");
    span
}
