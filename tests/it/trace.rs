//! W3C trace context end to end: a submitter's `traceparent`/`tracestate`
//! (gRPC metadata, or HTTP headers on the JSON door) is stored with the job
//! and reaches every attempt; with `[tracing] otlp_endpoint`, spans reach a
//! real OTLP/gRPC collector (a tonic TraceService in the test). Also checked in `handlers` (the `http` kind's
//! headers), `worker_protocol` (`Assign.headers`) and `store_contract` (each
//! store keeps it).

use std::sync::{Arc, Mutex};

use jobd::proto::JobState;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::helpers::*;

const ENV_KIND: &str = r#"
[kinds.env]
handler = "command"
command = ["sh", "-c", "printf '%s|%s|%s' \"$TRACEPARENT\" \"$TRACESTATE\" \"$JOBD_ATTEMPT\"; [ \"$JOBD_ATTEMPT\" -ge 2 ]"]
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_command_sees_the_submitters_trace_context() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!("store = \"sqlite:{}/t.db\"\n", dir.path().display());
    let d = start_with(&head, &format!("{KINDS}\n{ENV_KIND}")).await;
    let mut c = d.client().await;

    let r = traced(req("env", ""), TRACEPARENT, "congo=t61rcWkgMzE");
    let j = c.submit(r).await.unwrap().into_inner().job.unwrap();
    assert_eq!(j.traceparent, TRACEPARENT, "the reply shows it");
    let done = wait_terminal(&mut c, &j.id).await;
    // The first attempt fails on purpose: the second sees the same context.
    assert_eq!((state(&done), done.attempt), (JobState::Succeeded, 2));
    assert_eq!(
        String::from_utf8_lossy(&done.result),
        format!("{TRACEPARENT}|congo=t61rcWkgMzE|2")
    );
    assert_eq!(status(&mut c, &j.id).await.traceparent, TRACEPARENT);

    // None sent, or one that is not W3C's format: the job runs without.
    let plain = submit(&mut c, req("env", "")).await;
    let bad = traced(req("env", ""), "00-not-a-trace-01", "x=y");
    let bad = c.submit(bad).await.unwrap().into_inner().job.unwrap();
    for id in [&plain.id, &bad.id] {
        let done = wait_terminal(&mut c, id).await;
        assert_eq!(String::from_utf8_lossy(&done.result), "||2");
        assert_eq!(done.traceparent, "");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_door_takes_traceparent_from_http_headers() {
    let d = start_with("", &format!("{KINDS}\n{ENV_KIND}")).await;
    let resp = http_client()
        .post(format!("{}/v1/jobs", d.url()))
        .header("content-type", "application/json")
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "k=v")
        .body(r#"{"kind":"echo","payload":"aGk="}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["job"]["traceparent"], TRACEPARENT);
    let id = body["job"]["id"].as_str().unwrap().to_string();
    let mut c = d.client().await;
    assert_eq!(status(&mut c, &id).await.traceparent, TRACEPARENT);
    // SubmitBatch: the call's context goes to each job.
    let batch = jobd::proto::SubmitBatchRequest {
        requests: vec![req("echo", "a"), req("echo", "b")],
    };
    let mut r = tonic::Request::new(batch);
    r.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let out = c.submit_batch(r).await.unwrap().into_inner();
    for res in out.results {
        let Some(jobd::proto::submit_result::Result::Accepted(resp)) = res.result else {
            panic!("accepted");
        };
        assert_eq!(resp.job.unwrap().traceparent, TRACEPARENT);
    }
    d.stop().await;
}

/// A small OTLP/gRPC collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut all = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs.resource.map(|r| format!("{:?}", r.attributes));
            assert!(
                service.unwrap_or_default().contains("jobd-test"),
                "service.name"
            );
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn collector() -> (String, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = Collector::default();
    let svc = TraceServiceServer::new(c.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, c)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_the_otlp_collector_linked_to_the_submitter() {
    let (url, col) = collector().await;
    let head = format!(
        "[tracing]\notlp_endpoint = \"{url}\"\nservice_name = \"jobd-test\"\nexport_interval = \"50ms\"\n"
    );
    let d = start_with(&head, &format!("{KINDS}\n{ENV_KIND}")).await;
    let mut c = d.client().await;
    let (trace_id, parent) = (&TRACEPARENT[3..35], &TRACEPARENT[36..52]);
    let r = traced(req("env", ""), TRACEPARENT, "");
    let j = c.submit(r).await.unwrap().into_inner().job.unwrap();
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!((state(&done), done.attempt), (JobState::Succeeded, 2));
    d.stop().await; // flushes the exporter
    let spans = col.spans.lock().unwrap().clone();

    // The Submit RPC: a server span, child of the submitter's span.
    let submit = spans
        .iter()
        .find(|s| s.name == "jobd.v1.JobService/Submit")
        .expect("a Submit span");
    assert_eq!(hex(&submit.trace_id), trace_id);
    assert_eq!(hex(&submit.parent_span_id), parent);
    assert_eq!(submit.kind, SpanKind::Server as i32);

    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.name == "process env").collect();
    assert_eq!(attempts.len(), 2, "one span per attempt: {attempts:?}");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    // Attempt 1: in the submitter's trace, its child; failed.
    let first = attempts[0];
    assert_eq!(hex(&first.trace_id), trace_id);
    assert_eq!(hex(&first.parent_span_id), parent);
    assert_eq!(
        first.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    // Attempt 2 (a retry): a trace of its own, linked to the submitter.
    let second = attempts[1];
    assert_ne!(hex(&second.trace_id), trace_id);
    assert!(second.parent_span_id.is_empty());
    assert_eq!(second.links.len(), 1);
    assert_eq!(hex(&second.links[0].trace_id), trace_id);
    assert_eq!(hex(&second.links[0].span_id), parent);
    assert_ne!(
        second.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    // The command ran inside its attempt's span.
    assert_eq!(
        String::from_utf8_lossy(&done.result),
        format!(
            "00-{}-{}-01||2",
            hex(&second.trace_id),
            hex(&second.span_id)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_slows_no_job_and_no_drain() {
    // A port with nothing listening: every export is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let head = format!("[tracing]\notlp_endpoint = \"{url}\"\nexport_interval = \"10ms\"\n");
    let d = start_with(&head, &format!("{KINDS}\n{ENV_KIND}")).await;
    let mut c = d.client().await;
    let r = traced(req("env", ""), TRACEPARENT, "");
    let j = c.submit(r).await.unwrap().into_inner().job.unwrap();
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!((state(&done), done.attempt), (JobState::Succeeded, 2));
    // The handler still gets a context: the attempt span's, in the
    // submitter's trace on the first attempt, a new one on the retry.
    assert!(String::from_utf8_lossy(&done.result).starts_with("00-"));
    // Drain sends what is queued; a refused export does not hold it up.
    tokio::time::timeout(std::time::Duration::from_secs(15), d.stop())
        .await
        .expect("drain ends with the collector down");
}

#[test]
fn bad_tracing_settings_are_config_errors() {
    for (table, key) in [
        (
            "otlp_endpoint = \"collector:4317\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"ftp://collector\"",
            "tracing.otlp_endpoint",
        ),
        ("export_interval = \"1ms\"", "tracing.export_interval"),
        ("max_queued_spans = 0", "tracing.max_queued_spans"),
        ("service_name = \"\"", "tracing.service_name"),
    ] {
        let (code, err) = check_config(&format!("[tracing]\n{table}\n"));
        assert_eq!(code, Some(64), "{table}: {err}");
        assert!(err.contains(key), "{table}: {key} not named in {err}");
    }
}
