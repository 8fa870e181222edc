//! Remote workers over `jobd.v1.WorkerService`: each protocol rule of
//! DESIGN.md "Remote workers", against a real daemon, with the library's
//! Rust worker (`jobd::clients::worker`) and with a raw stream where a test must
//! misbehave on purpose.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobd::clients::worker::{serve, HandlerError, WorkJob, WorkerOptions};
use jobd::proto::{
    self, server_message, worker_message, worker_service_client::WorkerServiceClient, JobState,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::helpers::*;

/// A remote kind with fast heartbeats (200 ms: lost after 600 ms) and
/// retries at once.
pub(crate) const HEAD: &str = "[queue]\nworkers = 64\n[workers]\nheartbeat_interval = \"200ms\"\n";
pub(crate) const KINDS: &str = r#"
[kinds.r]
handler = "remote"
max_attempts = 3
timeout = "10s"
backoff = { initial = "10ms", max = "10ms" }
[kinds.echo]
handler = "echo"
"#;

/// Runs a Rust worker on `kinds` until the returned token is cancelled.
pub(crate) fn worker<F, Fut>(url: &str, max_in_flight: u32, work: F) -> CancellationToken
where
    F: Fn(WorkJob) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    let mut opts = WorkerOptions::new(url, ["r"]);
    opts.max_in_flight = max_in_flight;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { serve(opts, s, work).await });
    stop
}

/// A raw session: what the test sends, and what jobd answers.
pub(crate) struct Raw {
    pub(crate) tx: mpsc::Sender<proto::WorkerMessage>,
    pub(crate) rx: tonic::Streaming<proto::ServerMessage>,
}

pub(crate) fn msg(m: worker_message::Msg) -> proto::WorkerMessage {
    proto::WorkerMessage { msg: Some(m) }
}

pub(crate) fn hello(kinds: &[&str], max_in_flight: u32) -> proto::WorkerMessage {
    msg(worker_message::Msg::Hello(proto::Hello {
        worker_id: "raw".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        max_in_flight,
        labels: Default::default(),
    }))
}

/// Opens a stream whose first message is `first`.
pub(crate) async fn raw(url: &str, first: proto::WorkerMessage) -> Result<Raw, tonic::Status> {
    let ch = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let rx = WorkerServiceClient::new(ch)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Raw { tx, rx })
}

impl Raw {
    /// The next message from jobd (bounded wait).
    async fn next(&mut self) -> server_message::Msg {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("jobd said nothing")
            .expect("stream error")
            .expect("stream ended")
            .msg
            .expect("empty message")
    }

    pub(crate) async fn assign(&mut self) -> proto::Assign {
        loop {
            if let server_message::Msg::Assign(a) = self.next().await {
                return a;
            }
        }
    }

    async fn complete(&self, job_id: &str, attempt: u32, result: &str) {
        self.tx
            .send(msg(worker_message::Msg::Complete(proto::Complete {
                job_id: job_id.into(),
                attempt,
                result: result.as_bytes().to_vec(),
            })))
            .await
            .unwrap();
    }

    async fn ack(&mut self) -> proto::ReportAck {
        loop {
            if let server_message::Msg::Ack(a) = self.next().await {
                return a;
            }
        }
    }
}

/// A daemon with config `head`, a client, and a raw worker of
/// `max_in_flight` that has been assigned one submitted job.
async fn one_job_held(
    head: &str,
    max_in_flight: u32,
) -> (
    TestDaemon,
    jobd::proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    Raw,
    proto::Job,
    proto::Assign,
) {
    let d = start_with(head, KINDS).await;
    let mut c = d.client().await;
    let mut a = raw(&d.url(), hello(&["r"], max_in_flight)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let assign = a.assign().await;
    (d, c, a, job, assign)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_a_worker_and_never_more_than_max_in_flight() {
    let d = start_with(HEAD, KINDS).await;
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    let stop = worker(&d.url(), 4, move |job| {
        let (n, m) = (n.clone(), m.clone());
        async move {
            let at = n.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(at, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Ok(job.payload)
        }
    });
    let mut c = d.client().await;
    let batch = proto::SubmitBatchRequest {
        requests: (0..200).map(|i| req("r", &format!("job {i}"))).collect(),
    };
    let jobs: Vec<_> = c
        .submit_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(proto::submit_result::Result::Accepted(a)) => a.job.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    for (i, j) in jobs.iter().enumerate() {
        let done = wait_terminal(&mut c, &j.id).await;
        assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
        assert_eq!(done.result, format!("job {i}").as_bytes());
        assert_eq!(done.attempt, 1);
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&most),
        "{most} jobs ran at once on a worker of 4"
    );
    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(
        text.contains("jobd_worker_assigned_total{kind=\"r\"} 200"),
        "{text}"
    );
    assert!(
        text.contains("jobd_worker_sessions{kind=\"r\"} 1"),
        "{text}"
    );
    stop.cancel();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_jobs_wait_queued_and_spend_no_attempt() {
    let d = start_with(HEAD, KINDS).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("r", "later")).await;
    // The sweeper wakes the dispatcher every second: two rounds.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let j = status(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Queued);
    assert_eq!(j.attempt, 0, "an attempt was spent with no worker");
    let stop = worker(&d.url(), 1, |job| async move { Ok(job.payload) });
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.attempt, 1);
    stop.cancel();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_end_the_stream_with_invalid_argument() {
    let d = start_with(HEAD, KINDS).await;
    let heartbeat = msg(worker_message::Msg::Heartbeat(proto::Heartbeat {}));
    for (first, why) in [
        (heartbeat, "first message not hello"),
        (hello(&["nope"], 1), "unknown kind"),
        (hello(&["echo"], 1), "kind not remote"),
        (hello(&[], 1), "no kinds"),
        (hello(&["r"], 0), "max_in_flight 0"),
        (hello(&["r"], 10_001), "max_in_flight over 10000"),
    ] {
        let code = match raw(&d.url(), first).await {
            Err(s) => s.code(),
            Ok(mut r) => r.rx.message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::InvalidArgument, "{why}");
    }
    assert!(raw(&d.url(), hello(&["r"], 10_000)).await.is_ok());
    d.stop().await;
}

/// A worker that keeps its stream open but stops speaking (SIGSTOP) is lost
/// after 3 heartbeat intervals: its job runs again elsewhere with "worker
/// lost", and its late report is stale and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_and_its_late_report_is_stale() {
    let (d, mut c, a, job, first) = one_job_held(HEAD, 1).await;
    assert_eq!(first.job.as_ref().unwrap().id, job.id);
    assert_eq!(first.job.as_ref().unwrap().attempt, 1);
    let silent_since = Instant::now();
    // A second worker takes the retry.
    let took = Arc::new(Mutex::new(None));
    let t = took.clone();
    let stop = worker(&d.url(), 1, move |job| {
        *t.lock().unwrap() = Some((Instant::now(), job.attempt));
        async move { Ok(Bytes::from_static(b"from b")) }
    });
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.result, b"from b");
    let (at, attempt) = took.lock().unwrap().expect("b ran it");
    assert_eq!(attempt, 2);
    let after = at - silent_since;
    // Lost after 3 intervals (600 ms); allow a loaded machine 2 s.
    assert!(
        after >= Duration::from_millis(550),
        "retried after {after:?}"
    );
    assert!(after < Duration::from_secs(2), "retried after {after:?}");
    // The success cleared last_error; the attempt history keeps the loss.
    assert!(
        j.attempts
            .iter()
            .any(|a| a.attempt == 1 && a.error.contains("worker lost")),
        "{:?}",
        j.attempts
    );
    // The silent worker wakes up (SIGCONT), connects again, and reports.
    let mut again = raw(&d.url(), hello(&["r"], 1)).await.unwrap();
    again.complete(&job.id, 1, "late").await;
    let ack = again.ack().await;
    assert!(ack.stale, "{ack:?}");
    // On its old stream too, if it still reads it: nothing more comes.
    drop(a);
    let j = status(&mut c, &job.id).await;
    assert_eq!(j.result, b"from b");
    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(text.contains("jobd_worker_lost_total 1"), "{text}");
    assert!(text.contains("jobd_worker_stale_reports_total 1"), "{text}");
    stop.cancel();
    d.stop().await;
}

/// A worker whose stream ends mid-job (killed) is lost at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_stream_ends_is_lost_and_its_job_retried() {
    let (d, mut c, a, job, _) = one_job_held(HEAD, 1).await;
    drop(a);
    let stop = worker(&d.url(), 1, |job| async move { Ok(job.payload) });
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.attempt, 2);
    stop.cancel();
    d.stop().await;
}

/// Cancel of a job a worker holds reaches the worker at once; a report of a
/// stopped attempt is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_worker_at_once() {
    let (d, mut c, mut a, job, _) = one_job_held(HEAD, 1).await;
    let asked = Instant::now();
    c.cancel(proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap();
    let cancel = loop {
        if let server_message::Msg::Cancel(x) = a.next().await {
            break x;
        }
    };
    let took = asked.elapsed();
    assert_eq!(
        (cancel.job_id.as_str(), cancel.attempt),
        (job.id.as_str(), 1)
    );
    assert!(took < Duration::from_millis(100), "cancel took {took:?}");
    a.complete(&job.id, 1, "too late").await;
    assert!(a.ack().await.stale);
    assert_eq!(state(&status(&mut c, &job.id).await), JobState::Cancelled);
    d.stop().await;
}

/// The attempt's timeout pushes CancelJob, then the job is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_pushes_cancel_then_retries() {
    let d = start_with(HEAD, KINDS).await;
    let mut c = d.client().await;
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen = cancelled.clone();
    let stop = worker(&d.url(), 1, move |job| {
        let seen = seen.clone();
        async move {
            if job.attempt == 1 {
                // Watched on a task of its own: the worker drops this
                // future once the cancel arrives.
                let token = job.cancel.clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    seen.fetch_add(1, Ordering::SeqCst);
                });
                std::future::pending::<()>().await;
            }
            Ok(Bytes::from_static(b"second"))
        }
    });
    let mut r = req("r", "x");
    r.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    let job = submit(&mut c, r).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!((j.attempt, j.result.as_slice()), (2, &b"second"[..]));
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "attempt 1 saw no cancel"
    );
    stop.cancel();
    d.stop().await;
}

/// A daemon on SQLite in `dir` with `drain.timeout`, and a raw worker that
/// holds one job; returns the config head too, to restart on the same data.
async fn holding_one_job(
    dir: &std::path::Path,
    drain_timeout: &str,
) -> (String, TestDaemon, Raw, proto::Job) {
    let head = format!(
        "store = \"sqlite:{}/jobd.db\"\n{HEAD}[drain]\ngrace = \"50ms\"\ntimeout = \"{drain_timeout}\"\n",
        dir.display()
    );
    let (d, _, a, job, _) = one_job_held(&head, 1).await;
    (head, d, a, job)
}

/// Drain: the worker is told, its report before the deadline counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_workers_and_takes_their_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (head, d, mut a, job) = holding_one_job(dir.path(), "5s").await;
    let stopping = tokio::spawn(d.stop_keep_dir());
    let drain = loop {
        if let server_message::Msg::Drain(x) = a.next().await {
            break x;
        }
    };
    assert!(drain.deadline.is_some());
    a.complete(&job.id, 1, "in time").await;
    assert!(!a.ack().await.stale);
    drop(a);
    let _ = stopping.await.unwrap();
    let d = start_with(&head, KINDS).await;
    let mut c = d.client().await;
    let j = status(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.result, b"in time");
    d.stop().await;
}

/// A worker token may call WorkerService only; a submit token may not
/// call it; an admin token may call both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_role_is_for_worker_service_only() {
    const W: &str = "worker-token-0123456789";
    const S: &str = "submit-token-0123456789";
    const A: &str = "admin-token-0123456789";
    let d = start_with(
        &format!(
            "{HEAD}[auth]\ntokens = [{{ token = \"{W}\", role = \"worker\" }}, \
             {{ token = \"{S}\", role = \"submit\" }}, {{ token = \"{A}\", role = \"admin\" }}]\n"
        ),
        KINDS,
    )
    .await;
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let with = |t: &str| {
        let v: tonic::metadata::MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", v.clone());
            Ok(r)
        }
    };
    for (token, ok) in [(W, false), (S, true), (A, true)] {
        let mut c = jobd::proto::job_service_client::JobServiceClient::with_interceptor(
            ch.clone(),
            with(token),
        );
        let r = c.submit(req("r", "x")).await;
        assert_eq!(r.is_ok(), ok, "JobService with {token}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    for (token, ok) in [(W, false), (S, false), (A, true)] {
        let r = proto::admin_service_client::AdminServiceClient::with_interceptor(
            ch.clone(),
            with(token),
        )
        .list_workers(proto::ListWorkersRequest::default())
        .await;
        assert_eq!(r.is_ok(), ok, "AdminService with {token}: {r:?}");
    }
    for (token, ok) in [(W, true), (S, false), (A, true)] {
        let (tx, rx) = mpsc::channel(4);
        tx.send(hello(&["r"], 1)).await.unwrap();
        let r = WorkerServiceClient::with_interceptor(ch.clone(), with(token))
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        assert_eq!(r.is_ok(), ok, "WorkerService with {token}");
        if !ok {
            assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    d.stop().await;
}

/// `jobd work` processes: one is killed with `kill -9` mid-job; the job
/// runs again on the other, with "worker lost" in its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_loses_its_job_to_another() {
    let d = start_with(HEAD, KINDS).await;
    let mut c = d.client().await;
    let spawn = |script: &str| {
        std::process::Command::new(bin())
            .args(["work", "--kind", "r", "--max-in-flight", "1", "--addr"])
            .arg(d.url())
            .args(["--", "sh", "-c", script])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut slow = spawn("sleep 5");
    let job = submit(&mut c, req("r", "payload")).await;
    // Wait until the slow worker holds it, then kill it.
    wait_for(&mut c, &job.id, |s| s == JobState::Running).await;
    slow.kill().unwrap();
    slow.wait().unwrap();
    let mut cat = spawn("cat");
    let j = wait_terminal(&mut c, &job.id).await;
    let _ = cat.kill();
    let _ = cat.wait();
    assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
    assert_eq!((j.attempt, j.result.as_slice()), (2, &b"payload"[..]));
    // The success cleared last_error; the attempt history keeps the loss.
    assert!(
        j.attempts
            .iter()
            .any(|a| a.attempt == 1 && a.error.contains("worker lost")),
        "{:?}",
        j.attempts
    );
    d.stop().await;
}

/// On PostgreSQL, a worker connected to instance A takes the jobs submitted
/// through instance B (B, with no worker, claims none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_worker_on_one_instance_takes_jobs_submitted_on_another() {
    let Some(pg) = crate::pg::PgSchema::new("remote").await else {
        return;
    };
    let a = start_with(&pg.toml(HEAD), KINDS).await;
    let b = start_with(&pg.toml(HEAD), KINDS).await;
    let stop = worker(&a.url(), 8, |job| async move { Ok(job.payload) });
    let mut cb = b.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&mut cb, req("r", &format!("{i}"))).await.id);
    }
    for (i, id) in ids.iter().enumerate() {
        let j = wait_terminal(&mut cb, id).await;
        assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
        assert_eq!(
            (j.attempt, j.result.clone()),
            (1, format!("{i}").into_bytes())
        );
    }
    stop.cancel();
    a.stop().await;
    b.stop().await;
}

/// Drain: an attempt not reported by the deadline is requeued without
/// spending the attempt; after the restart a worker gets it as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_requeues_unreported_jobs_without_spending_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (head, d, mut a, job) = holding_one_job(dir.path(), "300ms").await;
    // The worker never reports: the drain deadline passes.
    let stopping = tokio::spawn(d.stop_keep_dir());
    let cancel = loop {
        if let server_message::Msg::Cancel(x) = a.next().await {
            break x;
        }
    };
    assert_eq!(cancel.job_id, job.id);
    let _ = stopping.await.unwrap();
    drop(a);
    let d = start_with(&head, KINDS).await;
    let mut c = d.client().await;
    let j = status(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Queued, "{j:?}");
    let stop = worker(&d.url(), 1, |job| async move { Ok(job.payload) });
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.attempt, 1, "the drained attempt was counted");
    stop.cancel();
    d.stop().await;
}

/// AdminService.ListWorkers shows each session (admin role only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workers_shows_each_session() {
    let (d, _, mut a, job, _) = one_job_held(HEAD, 3).await;
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = proto::admin_service_client::AdminServiceClient::new(ch);
    let list = admin
        .list_workers(proto::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(list.len(), 1, "{list:?}");
    let w = &list[0];
    assert_eq!(
        (w.worker_id.as_str(), w.kinds.clone()),
        ("raw", vec!["r".to_string()])
    );
    assert_eq!((w.in_flight, w.max_in_flight), (1, 3));
    assert!(w.address.starts_with("127.0.0.1:"), "{w:?}");
    assert!(w.connected_at.is_some() && w.last_seen.is_some());
    let none = admin
        .list_workers(proto::ListWorkersRequest {
            kind: "echo".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(none.is_empty());
    a.complete(&job.id, 1, "done").await;
    assert!(!a.ack().await.stale);
    d.stop().await;
}
