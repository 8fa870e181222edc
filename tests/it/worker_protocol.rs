//! `jobd.v1.WorkerService` seen from a worker written against the proto:
//! the Welcome, and Drain for a session that said hello while jobd drained.

use std::time::Duration;

use jobd::proto::worker_service_client::WorkerServiceClient;
use jobd::proto::{self, server_message, worker_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::helpers::*;

const KIND_R: &str = r#"
[kinds.r]
handler = "remote"
timeout = "30s"
"#;

fn hello() -> proto::WorkerMessage {
    proto::WorkerMessage {
        msg: Some(worker_message::Msg::Hello(proto::Hello {
            worker_id: "test".into(),
            kinds: vec!["r".into()],
            max_in_flight: 1,
            labels: Default::default(),
        })),
    }
}

/// The next message, within 5 s.
async fn next(s: &mut Streaming<proto::ServerMessage>) -> server_message::Msg {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a message within 5 s")
        .expect("stream ok")
        .expect("stream open")
        .msg
        .expect("a message")
}

type Outbox = mpsc::Sender<proto::WorkerMessage>;

/// Opens a Connect stream; the call answers once jobd has read the hello,
/// so the caller sends it on the returned outbox.
fn open(
    d: &TestDaemon,
) -> (
    Outbox,
    tokio::task::JoinHandle<Streaming<proto::ServerMessage>>,
) {
    let (tx, rx) = mpsc::channel(16);
    let url = d.url();
    let call = tokio::spawn(async move {
        // (`WorkerServiceClient::connect` is the RPC here, not the dialer.)
        let ch = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut c = WorkerServiceClient::new(ch);
        c.connect(ReceiverStream::new(rx))
            .await
            .expect("connect")
            .into_inner()
    });
    (tx, call)
}

async fn welcome(s: &mut Streaming<proto::ServerMessage>) -> proto::Welcome {
    match next(s).await {
        server_message::Msg::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_carries_the_submitters_trace_context_in_headers() {
    let d = start_with("", KIND_R).await;
    let (tx, call) = open(&d);
    tx.send(hello()).await.unwrap();
    let mut s = call.await.unwrap();
    welcome(&mut s).await;
    let mut c = d.client().await;
    let r = traced(req("r", "x"), TRACEPARENT, "a=1,b=2");
    c.submit(r).await.unwrap();
    let assign = match next(&mut s).await {
        server_message::Msg::Assign(a) => a,
        other => panic!("expected assign, got {other:?}"),
    };
    assert_eq!(
        assign.headers.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    assert_eq!(
        assign.headers.get("tracestate").map(String::as_str),
        Some("a=1,b=2")
    );
    assert_eq!(assign.headers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_names_the_session_and_late_sessions_are_told_to_drain() {
    let d = start_with("", KIND_R).await;

    // Worker A takes a job and holds it, so the drain waits for it.
    let (a_tx, a_call) = open(&d);
    a_tx.send(hello()).await.unwrap();
    let mut a = a_call.await.unwrap();
    let wa = welcome(&mut a).await;
    assert!(!wa.session_id.is_empty(), "Welcome.session_id is set");
    assert_eq!(
        wa.heartbeat_interval,
        Some(prost_types::Duration {
            seconds: 5,
            nanos: 0
        })
    );
    let mut c = d.client().await;
    let job = submit(&mut c, req("r", "x")).await;
    let assign = match next(&mut a).await {
        server_message::Msg::Assign(a) => a,
        other => panic!("expected assign, got {other:?}"),
    };
    assert_eq!(assign.job.as_ref().unwrap().id, job.id);

    // Worker B's Connect starts before the drain; its hello comes after.
    let (b_tx, b_call) = open(&d);
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.shutdown.drain.cancel();
    match next(&mut a).await {
        server_message::Msg::Drain(_) => {}
        other => panic!("expected drain, got {other:?}"),
    }
    b_tx.send(hello()).await.unwrap();
    let mut b = b_call.await.unwrap();
    let wb = welcome(&mut b).await;
    assert!(!wb.session_id.is_empty() && wb.session_id != wa.session_id);
    match next(&mut b).await {
        server_message::Msg::Drain(_) => {}
        other => panic!("a session opened during drain: expected drain, got {other:?}"),
    }

    // A's report before the deadline counts, and its ack comes before the
    // stream ends: the drain ends with that commit, and its "shutting
    // down" once overtook the ack (CI, under load).
    a_tx.send(proto::WorkerMessage {
        msg: Some(worker_message::Msg::Complete(proto::Complete {
            job_id: job.id.clone(),
            attempt: 1,
            result: b"done".to_vec(),
        })),
    })
    .await
    .unwrap();
    match next(&mut a).await {
        server_message::Msg::Ack(ack) => assert!(!ack.stale, "{ack:?}"),
        other => panic!("expected ack, got {other:?}"),
    }
    d.stop().await;
}
