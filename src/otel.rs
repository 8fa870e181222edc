//! Span export over OTLP/gRPC (`[tracing] otlp_endpoint`): a span per RPC
//! and a `process {kind}` span per attempt, joined to the submitter's trace
//! (its W3C context is the RPC span's parent; the first attempt's span is
//! its child, a retry's span starts a trace of its own with a link to it).
//!
//! Spans are built as OTLP protobuf messages (opentelemetry-proto) and sent
//! in batches by one task on the daemon's runtime with the tonic client
//! jobd already has; the SDK's batch processor runs its own thread, which
//! the tonic exporter cannot use. Off (no endpoint) there is no [`Spans`]
//! at all: each call site is one `Option` check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::config::TracingConfig;
use crate::job::TraceContext;

/// Spans sent in one export call at most.
const MAX_BATCH: usize = 512;
/// One export call may take this long; then the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where finished spans go; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spans {
    tx: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
}

/// The export task, stopped (and flushed) at the end of `run`.
#[derive(Debug)]
pub struct Exporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Sends what is queued, then ends; waits at most `EXPORT_TIMEOUT`.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(EXPORT_TIMEOUT, self.task).await;
    }
}

/// Why span export could not start. The config checks the endpoint first,
/// so this is rare; it names the key so that it is not taken for a server
/// failure.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tracing.otlp_endpoint: {0}")]
    Uri(#[from] http::uri::InvalidUri),
    #[error("tracing.otlp_endpoint: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// Starts the exporter when `otlp_endpoint` is set (checked by the config).
pub fn start(cfg: &TracingConfig) -> Result<Option<(Spans, Exporter)>, StartError> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let mut ch = Channel::from_shared(endpoint.clone())?.timeout(EXPORT_TIMEOUT);
    if endpoint.starts_with("https://") {
        ch = ch.tls_config(ClientTlsConfig::new().with_native_roots())?;
    }
    let client = TraceServiceClient::new(ch.connect_lazy());
    let (tx, rx) = mpsc::channel(cfg.max_queued_spans);
    let spans = Spans {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let stop = CancellationToken::new();
    let resource = Resource {
        attributes: vec![kv("service.name", &cfg.service_name)],
        ..Default::default()
    };
    let task = tokio::spawn(export_loop(
        client,
        rx,
        resource,
        cfg.export_interval,
        spans.dropped.clone(),
        stop.clone(),
    ));
    Ok(Some((spans, Exporter { stop, task })))
}

async fn export_loop(
    mut client: TraceServiceClient<Channel>,
    mut rx: mpsc::Receiver<Span>,
    resource: Resource,
    every: Duration,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let room = MAX_BATCH - batch.len();
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
            n = rx.recv_many(&mut batch, room) => {
                if n > 0 && batch.len() < MAX_BATCH {
                    continue;
                }
                n == 0
            }
        };
        if last {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
        }
        for chunk in batch.chunks(MAX_BATCH) {
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "jobd".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            if let Err(e) = client.export(req).await {
                tracing::warn!(error = %e, spans = chunk.len(), "OTLP export failed; spans dropped");
            }
        }
        batch.clear();
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                spans = lost,
                "span queue full (tracing.max_queued_spans); spans dropped"
            );
        }
        if last {
            return;
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Fresh random ids (never all zero: a v4 UUID has fixed version bits).
fn random_ids() -> ([u8; 16], [u8; 8]) {
    let t = *uuid::Uuid::new_v4().as_bytes();
    let s = uuid::Uuid::new_v4().as_bytes()[..8]
        .try_into()
        .unwrap_or([1; 8]);
    (t, s)
}

/// A span under way; sent when [`ActiveSpan::end`] is called (dropped
/// unended, it is not sent).
#[derive(Debug)]
pub struct ActiveSpan {
    span: Span,
    sampled: bool,
    spans: Spans,
}

impl Spans {
    /// Starts a span. `parent` makes it a child in the parent's trace (and
    /// takes its sampled flag); `link` starts a new trace linked to it.
    pub fn start(
        &self,
        name: String,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        link: Option<&TraceContext>,
    ) -> ActiveSpan {
        let (mut trace_id, span_id) = random_ids();
        let mut parent_span_id = Vec::new();
        let mut sampled = true;
        if let Some((t, s, flags)) = parent.and_then(TraceContext::ids) {
            trace_id = t;
            parent_span_id = s.to_vec();
            sampled = flags & 1 == 1;
        }
        let links = link
            .and_then(|l| {
                let (t, s, _) = l.ids()?;
                Some(Link {
                    trace_id: t.to_vec(),
                    span_id: s.to_vec(),
                    trace_state: l.tracestate.clone(),
                    ..Default::default()
                })
            })
            .into_iter()
            .collect();
        ActiveSpan {
            span: Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id,
                name,
                kind: kind as i32,
                start_time_unix_nano: now_nanos(),
                links,
                trace_state: parent.map(|p| p.tracestate.clone()).unwrap_or_default(),
                ..Default::default()
            },
            sampled,
            spans: self.clone(),
        }
    }
}

impl ActiveSpan {
    /// This span as the context its children get (`TRACEPARENT`, headers).
    pub fn context(&self) -> TraceContext {
        TraceContext {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                hex(&self.span.trace_id),
                hex(&self.span.span_id),
                self.sampled as u8
            ),
            tracestate: self.span.trace_state.clone(),
        }
    }

    pub fn attr(&mut self, key: &str, value: &str) {
        self.span.attributes.push(kv(key, value));
    }

    /// Ends the span, as an error with this message if there is one, and
    /// queues it (or counts it dropped when the queue is full).
    pub fn end(mut self, error: Option<String>) {
        if !self.sampled {
            return;
        }
        self.span.end_time_unix_nano = now_nanos();
        self.span.status = Some(match error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: status::StatusCode::Unset as i32,
            },
        });
        if self.spans.tx.try_send(self.span).is_err() {
            self.spans.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
