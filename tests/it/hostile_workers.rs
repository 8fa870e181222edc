//! Hostile and broken workers (#28): one bad session beside a healthy one
//! must not drain a kind.

use std::time::Duration;

use bytes::Bytes;
use jobd::proto::{self, server_message, worker_message, JobState};

use crate::helpers::*;
use crate::remote::{hello, msg, raw, worker};

const KINDS: &str = r#"
[kinds.r]
handler = "remote"
max_attempts = 3
timeout = "1s"
backoff = { initial = "10ms", max = "10ms" }
"#;

/// A session that announces `max_in_flight` 10,000, keeps heartbeating and
/// never reports (a hung handler pool), beside a healthy worker of 8: every
/// job ends SUCCEEDED on the healthy one; none fails because of the hung
/// one (its timed-out attempts are retried elsewhere, and it is benched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_session_beside_a_healthy_one_fails_no_job() {
    const JOBS: usize = 200;
    let d = start_with(
        "[queue]\nworkers = 64\n[workers]\nheartbeat_interval = \"200ms\"\n",
        KINDS,
    )
    .await;
    let mut c = d.client().await;
    let mut hung = raw(&d.url(), hello(&["r"], 10_000)).await.unwrap();
    let tx = hung.tx.clone();
    let beat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(msg(worker_message::Msg::Heartbeat(proto::Heartbeat {})))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Reads what jobd sends (so its stream is not the problem), does nothing.
    let held = tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok(Some(m)) = hung.rx.message().await {
            if let Some(server_message::Msg::Assign(_)) = m.msg {
                n += 1;
            }
        }
        n
    });
    let stop = worker(&d.url(), 8, |job| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Bytes::from(job.attempt.to_string()))
    });
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(submit(&mut c, req("r", &i.to_string())).await.id);
    }
    let mut failed = Vec::new();
    for id in &ids {
        let j = wait_terminal(&mut c, id).await;
        if state(&j) != JobState::Succeeded {
            failed.push((state(&j), j.id, j.last_error));
        }
    }
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    stop.cancel();
    beat.abort();
    d.stop().await;
    let assigned_to_hung = held.await.unwrap();
    eprintln!("hung session was assigned {assigned_to_hung} of {JOBS} jobs' attempts");
}

/// gRPC-framed WorkerMessage.
fn frame(m: &proto::WorkerMessage) -> Bytes {
    use prost::Message;
    let body = m.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    Bytes::from(f)
}

/// A worker over raw HTTP/2 that says hello with `max_in_flight` 10,000,
/// heartbeats, and never reads its response stream, so it never grants
/// flow-control window: what jobd assigns it piles up on jobd's side.
/// Before #28.4 jobd queued every assignment up to `max_in_flight` (a copy
/// of each payload); now at most MAX_QUEUED_BYTES (16 MiB) plus one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_grants_no_window_holds_bounded_bytes() {
    const JOBS: usize = 96;
    const PAYLOAD: usize = 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let proc = crate::binary::spawn_config(
        dir.path(),
        "store = \"memory:\"\nadmin_listen = \"off\"\n[queue]\nworkers = 128\n\
         max_payload_bytes = 2097152\n[limits]\nmax_message_bytes = 4194304\n\
         [workers]\nheartbeat_interval = \"1s\"\n\
         [kinds.r]\nhandler = \"remote\"\nconcurrency = 128\ntimeout = \"60s\"\n",
    )
    .await;
    let child = KillOnDrop(proc.child);
    let pid = child.0.id();
    let addr: std::net::SocketAddr = proc.url.trim_start_matches("http://").parse().unwrap();
    let mut c = connect(&proc.url).await;
    let payload = "p".repeat(PAYLOAD);
    for _ in 0..JOBS {
        submit(&mut c, req("r", &payload)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = crate::stalled_watchers::rss(pid);

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/jobd.v1.WorkerService/Connect"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(frame(&hello(&["r"], 10_000)), false)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let _unread = response.into_body();
    let beat = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let hb = msg(worker_message::Msg::Heartbeat(proto::Heartbeat {}));
            if body.send_data(frame(&hb), false).is_err() {
                return;
            }
        }
    });
    // Time for the claims and assignments to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = crate::stalled_watchers::rss(pid);
    eprintln!(
        "a worker granting no window, {JOBS} jobs of {} MiB: RSS {} -> {} MiB",
        PAYLOAD as u64 / MIB,
        before / MIB,
        after / MIB
    );
    assert!(
        after < before + 40 * MIB,
        "RSS {} MiB -> {} MiB",
        before / MIB,
        after / MIB
    );
    beat.abort();
    driver.abort();
    drop(child);
}

/// Reads gRPC-framed ServerMessages from a raw HTTP/2 response body.
struct Frames {
    body: h2::RecvStream,
    buf: Vec<u8>,
}

impl Frames {
    async fn next(&mut self) -> Option<proto::ServerMessage> {
        use prost::Message;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let m = proto::ServerMessage::decode(&self.buf[5..5 + len]).unwrap();
                    self.buf.drain(..5 + len);
                    return Some(m);
                }
            }
            let data = self.body.data().await?.ok()?;
            let _ = self.body.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }
}

/// Sends `data` on `body` at about `per_second` bytes a second.
async fn trickle(body: &mut h2::SendStream<Bytes>, data: Bytes, per_second: usize) {
    use futures_util::future::poll_fn;
    const CHUNK: usize = 16 * 1024;
    let pause = Duration::from_secs_f64(CHUNK as f64 / per_second as f64);
    let mut rest = data;
    while !rest.is_empty() {
        let mut part = rest.split_to(CHUNK.min(rest.len()));
        while !part.is_empty() {
            body.reserve_capacity(part.len());
            let cap = poll_fn(|cx| body.poll_capacity(cx))
                .await
                .expect("stream open")
                .unwrap();
            let now = part.split_to(cap.min(part.len()));
            body.send_data(now, false).unwrap();
        }
        tokio::time::sleep(pause).await;
    }
}

/// #28.7: a worker uploading a 2 MiB result at ~260 KiB/s (8 s, no room for
/// a heartbeat in between) with a 1 s heartbeat interval (silent after
/// 3 s) is not declared silent mid-upload: its bytes are signs of life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_large_report_is_a_sign_of_life() {
    let d = start_with(
        "[workers]\nheartbeat_interval = \"1s\"\n",
        "[kinds.r]\nhandler = \"remote\"\ntimeout = \"60s\"\nmax_result_bytes = 3145728\n",
    )
    .await;
    let mut c = d.client().await;
    let addr = d.addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/jobd.v1.WorkerService/Connect"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(frame(&hello(&["r"], 1)), false).unwrap();
    let mut frames = Frames {
        body: response.await.unwrap().into_body(),
        buf: Vec::new(),
    };
    let job = submit(&mut c, req("r", "x")).await;
    let assign = loop {
        match frames.next().await.expect("jobd speaks").msg {
            Some(server_message::Msg::Assign(a)) => break a,
            _ => continue,
        }
    };
    let result = vec![7u8; 2 * 1024 * 1024];
    let complete = msg(worker_message::Msg::Complete(proto::Complete {
        job_id: job.id.clone(),
        attempt: assign.job.unwrap().attempt,
        result: result.clone(),
    }));
    trickle(&mut body, frame(&complete), 260 * 1024).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(
        (state(&j), j.attempt, j.result.len()),
        (JobState::Succeeded, 1, result.len()),
        "{}",
        j.last_error
    );
    driver.abort();
    d.stop().await;
}

/// #28.6: the daemon stopped (SIGSTOP) for 6 s, with a 1 s heartbeat
/// interval (silent after 3 s): both healthy worker sessions survive, and
/// the jobs they hold finish on their first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_own_stall_loses_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let proc = crate::binary::spawn_config(
        dir.path(),
        "store = \"memory:\"\nadmin_listen = \"off\"\n[workers]\nheartbeat_interval = \"1s\"\n\
         [kinds.r]\nhandler = \"remote\"\ntimeout = \"60s\"\n",
    )
    .await;
    let child = KillOnDrop(proc.child);
    let pid = child.0.id() as i32;
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(worker(&proc.url, 4, |job| async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            Ok(Bytes::from(job.attempt.to_string()))
        }));
    }
    let mut c = connect(&proc.url).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(submit(&mut c, req("r", &i.to_string())).await.id);
    }
    // Every job held by a worker, then the daemon stops for 6 s.
    for id in &ids {
        wait_for(&mut c, id, |s| s == JobState::Running).await;
    }
    // SAFETY: kill(2) with a pid we spawned.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_secs(6)).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for id in &ids {
        let j = wait_terminal(&mut c, id).await;
        assert_eq!(
            (state(&j), j.attempt),
            (JobState::Succeeded, 1),
            "{}",
            j.last_error
        );
    }
    for w in workers {
        w.cancel();
    }
    drop(child);
}

/// Opens a raw worker session with a bearer token.
async fn raw_as(
    url: &str,
    token: &str,
) -> Result<tonic::Streaming<proto::ServerMessage>, tonic::Status> {
    let ch = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(&["r"], 1)).await.unwrap();
    // The sender lives as long as the stream: the session stays open.
    std::mem::forget(tx);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut s = proto::worker_service_client::WorkerServiceClient::new(ch)
        .connect(req)
        .await?
        .into_inner();
    // The welcome, or the refusal.
    s.message().await?;
    Ok(s)
}

/// #28.8: one token cannot take every worker session: past
/// `workers.max_sessions_per_client` its Connect is RESOURCE_EXHAUSTED,
/// while another token still gets a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_take_every_worker_session() {
    const A: &str = "worker-token-a-0123456789";
    const B: &str = "worker-token-b-0123456789";
    let d = start_with(
        &format!(
            "[workers]\nmax_sessions = 4\nmax_sessions_per_client = 2\n\
             [auth]\ntokens = [{{ token = \"{A}\", role = \"worker\" }}, \
             {{ token = \"{B}\", role = \"worker\" }}]\n"
        ),
        KINDS,
    )
    .await;
    let url = d.url();
    let mut held = vec![
        raw_as(&url, A).await.unwrap(),
        raw_as(&url, A).await.unwrap(),
    ];
    let refused = raw_as(&url, A).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("max_sessions_per_client"),
        "{refused}"
    );
    held.push(raw_as(&url, B).await.expect("another token still connects"));
    drop(held);
    d.stop().await;
}

/// #28.3: `Fail.retry_after` is capped at 1 h: a worker asking for 10 years
/// (or past the Timestamp range) parks nothing for longer, and the job's
/// replies stay valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_retry_after_is_capped_at_an_hour() {
    let d = start_with(
        "[workers]\nheartbeat_interval = \"1s\"\n",
        "[kinds.r]\nhandler = \"remote\"\nmax_attempts = 5\ntimeout = \"60s\"\n",
    )
    .await;
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    for seconds in [10 * 365 * 24 * 3600, i64::MAX / 2] {
        let job = submit(&mut c, req("r", "x")).await;
        let a = w.assign().await;
        let before = micros(&Some(prost_types::Timestamp::from(
            std::time::SystemTime::now(),
        )));
        w.tx.send(msg(worker_message::Msg::Fail(proto::Fail {
            job_id: job.id.clone(),
            attempt: a.job.unwrap().attempt,
            error: "later".into(),
            permanent: false,
            retry_after: Some(prost_types::Duration { seconds, nanos: 0 }),
        })))
        .await
        .unwrap();
        let j = wait_for(&mut c, &job.id, |s| s == JobState::RetryWait).await;
        let wait_us = micros(&j.next_attempt_at) - before;
        assert!(
            wait_us <= 3_600_000_000 + 5_000_000,
            "next attempt in {} s",
            wait_us / 1_000_000
        );
    }
    d.stop().await;
}

/// #28.9: a worker's non-stale ack follows the commit of its outcome: the
/// daemon killed with kill -9 right after 50 acks, every acked job is
/// SUCCEEDED after the restart (before: acks went out before the commit,
/// and acked jobs ran again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_means_the_outcome_is_durable() {
    const JOBS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[queue]\nworkers = 256\n[workers]\nheartbeat_interval = \"5s\"\n\
                 [kinds.r]\nhandler = \"remote\"\nconcurrency = 256\ntimeout = \"60s\"\n";
    let proc = crate::binary::spawn_daemon(dir.path(), extra).await;
    let mut child = proc.child;
    let mut c = connect(&proc.url).await;
    let mut w = raw(&proc.url, hello(&["r"], JOBS as u32)).await.unwrap();
    let batch = proto::SubmitBatchRequest {
        requests: (0..JOBS).map(|i| req("r", &i.to_string())).collect(),
    };
    c.submit_batch(batch).await.unwrap();
    let mut assigned = Vec::new();
    while assigned.len() < JOBS {
        let a = w.assign().await;
        let j = a.job.unwrap();
        assigned.push((j.id, j.attempt));
    }
    for (id, attempt) in &assigned {
        w.tx.send(msg(worker_message::Msg::Complete(proto::Complete {
            job_id: id.clone(),
            attempt: *attempt,
            result: b"done".to_vec(),
        })))
        .await
        .unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 50 {
        if let Some(server_message::Msg::Ack(a)) = w.rx.message().await.unwrap().unwrap().msg {
            if !a.stale {
                acked.push(a.job_id);
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let proc = crate::binary::spawn_daemon(dir.path(), extra).await;
    let mut child = proc.child;
    let mut c = connect(&proc.url).await;
    let mut rerun = Vec::new();
    for id in &acked {
        let j = status(&mut c, id).await;
        if state(&j) != JobState::Succeeded {
            rerun.push((id.clone(), state(&j)));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        rerun.is_empty(),
        "{} of {} acked jobs were not durable: {rerun:?}",
        rerun.len(),
        acked.len()
    );
}
