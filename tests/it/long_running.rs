//! Long-running jobs (#29): a worker's progress and log lines, over real
//! gRPC, on every store; GetLogs, WatchLogs, the bounds, and kill -9.

use std::time::Duration;

use jobd::proto::{self, worker_message, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;
use crate::remote::{hello, msg, raw, Raw};

pub(crate) const HEAD: &str = "[workers]\nheartbeat_interval = \"1s\"\n";
const KINDS: &str = "[kinds.r]\nhandler = \"remote\"\ntimeout = \"60s\"\n";

fn progress(job_id: &str, attempt: u32, percent: u32, message: &str) -> proto::WorkerMessage {
    msg(worker_message::Msg::Progress(proto::Progress {
        job_id: job_id.into(),
        attempt,
        percent,
        message: message.into(),
        details: br#"{"tile":3}"#.to_vec(),
    }))
}

fn log(
    job_id: &str,
    attempt: u32,
    lines: impl IntoIterator<Item = String>,
) -> proto::WorkerMessage {
    msg(worker_message::Msg::Log(proto::Log {
        job_id: job_id.into(),
        attempt,
        lines: lines.into_iter().collect(),
    }))
}

pub(crate) fn complete(job_id: &str, attempt: u32) -> proto::WorkerMessage {
    msg(worker_message::Msg::Complete(proto::Complete {
        job_id: job_id.into(),
        attempt,
        result: b"done".to_vec(),
    }))
}

async fn logs(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    id: &str,
    after: u64,
    limit: u32,
) -> Vec<proto::LogLine> {
    c.get_logs(proto::GetLogsRequest {
        id: id.into(),
        after,
        limit,
    })
    .await
    .unwrap()
    .into_inner()
    .lines
}

/// A job held by a raw worker, with a watcher opened before it runs.
async fn held_job(
    d: &TestDaemon,
) -> (
    proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    Raw,
    String,
    u32,
) {
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let a = w.assign().await;
    (c, w, job.id, a.job.unwrap().attempt)
}

/// Progress, coalesced, seen by a watcher in order between RUNNING and
/// SUCCEEDED (sequence + 1 each, state unchanged), and by GetStatus; log
/// lines paged by GetLogs, the newest 1,000 kept; on `head`'s store.
async fn progress_and_logs_on(head: &str) {
    let d = start_with(&format!("{head}{HEAD}"), KINDS).await;
    let (mut c, w, id, attempt) = held_job(&d).await;
    let mut watch = c
        .watch_status(proto::WatchStatusRequest {
            id: id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.job.as_ref().unwrap().state, JobState::Running as i32);
    // A burst (coalesced), then a value after the window.
    for p in [10, 20, 30, 40, 50] {
        w.tx.send(progress(&id, attempt, p, &format!("step {p}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    w.tx.send(progress(&id, attempt, 90, "nearly"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let j = status(&mut c, &id).await;
    let p = j.progress.expect("progress on GetStatus");
    assert_eq!((p.percent, p.message.as_str()), (90, "nearly"));
    assert_eq!(p.details, br#"{"tile":3}"#);
    // 1,200 lines in two messages: the newest 1,000 are kept.
    w.tx.send(log(&id, attempt, (1..=600).map(|i| format!("line {i}"))))
        .await
        .unwrap();
    w.tx.send(log(&id, attempt, (601..=1200).map(|i| format!("line {i}"))))
        .await
        .unwrap();
    w.tx.send(complete(&id, attempt)).await.unwrap();
    let mut seen = vec![(first.sequence, JobState::Running as i32, None)];
    loop {
        let Some(e) = watch.message().await.unwrap() else {
            break;
        };
        let j = e.job.unwrap();
        seen.push((e.sequence, j.state, j.progress.map(|p| p.percent)));
    }
    for w in seen.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "no gaps: {seen:?}");
    }
    let (last, middle) = seen.split_last().unwrap();
    assert_eq!(last.1, JobState::Succeeded as i32, "{seen:?}");
    let percents: Vec<u32> = middle.iter().filter_map(|s| s.2).collect();
    assert!(
        middle.iter().all(|s| s.1 == JobState::Running as i32),
        "{seen:?}"
    );
    assert_eq!(percents.last(), Some(&90), "{seen:?}");
    assert!(
        percents.windows(2).all(|p| p[0] <= p[1]),
        "in order: {seen:?}"
    );
    assert!(
        percents.len() < 6,
        "coalesced: {} stored of 6 sent",
        percents.len()
    );
    // Pages of 500: lines 201..=1200, then nothing.
    let page1 = logs(&mut c, &id, 0, 500).await;
    assert_eq!(page1.len(), 500);
    assert_eq!(page1[0].text, "line 201");
    assert_eq!(page1[0].attempt, attempt);
    let page2 = logs(&mut c, &id, page1[499].seq, 500).await;
    assert_eq!(page2.last().unwrap().text, "line 1200");
    assert!(logs(&mut c, &id, page2[499].seq, 500).await.is_empty());
    let e = c
        .get_logs(proto::GetLogsRequest {
            id: uuid::Uuid::now_v7().to_string(),
            after: 0,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    drop(w);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_on_memory() {
    progress_and_logs_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_on_sqlite() {
    progress_and_logs_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_on_postgres() {
    let Some(pg) = PgSchema::new("progress").await else {
        return;
    };
    progress_and_logs_on(&pg.toml("")).await;
}

/// WatchLogs follows a running job's lines as they come and ends (OK)
/// after its terminal state, once every line was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_logs_follows_and_ends_after_the_terminal_state() {
    let d = start_with(
        &format!("store = \"sqlite:{{dir}}/jobd.db\"\n{HEAD}"),
        KINDS,
    )
    .await;
    let (mut c, w, id, attempt) = held_job(&d).await;
    let mut follow = c
        .watch_logs(proto::WatchLogsRequest {
            id: id.clone(),
            after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    w.tx.send(log(&id, attempt, ["one".to_string()]))
        .await
        .unwrap();
    let l = tokio::time::timeout(Duration::from_secs(5), follow.message())
        .await
        .expect("a line while running")
        .unwrap()
        .unwrap();
    assert_eq!((l.text.as_str(), l.attempt), ("one", attempt));
    w.tx.send(log(&id, attempt, ["two".to_string(), "three".to_string()]))
        .await
        .unwrap();
    w.tx.send(complete(&id, attempt)).await.unwrap();
    let mut rest = Vec::new();
    while let Some(l) = tokio::time::timeout(Duration::from_secs(5), follow.message())
        .await
        .expect("the stream ends")
        .unwrap()
    {
        rest.push(l.text);
    }
    assert_eq!(rest, ["two", "three"]);
    // A finished job's log is sent whole, then the stream ends.
    let mut again = c
        .watch_logs(proto::WatchLogsRequest { id, after: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(l) = again.message().await.unwrap() {
        all.push(l.text);
    }
    assert_eq!(all, ["one", "two", "three"]);
    drop(w);
    d.stop().await;
}

/// Fields past DESIGN's bounds end the worker's stream with
/// INVALID_ARGUMENT naming the field; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_progress_and_log_fields_are_refused() {
    let d = start_with(HEAD, KINDS).await;
    type Make = Box<dyn Fn(&str, u32) -> proto::WorkerMessage>;
    let cases: Vec<(Make, &str)> = vec![
        (
            Box::new(|id, a| progress(id, a, 101, "")),
            "progress.percent",
        ),
        (
            Box::new(|id, a| progress(id, a, 5, &"m".repeat(257))),
            "progress.message",
        ),
        (
            Box::new(|id, a| {
                msg(worker_message::Msg::Progress(proto::Progress {
                    job_id: id.into(),
                    attempt: a,
                    percent: 5,
                    message: String::new(),
                    details: vec![0; 4097],
                }))
            }),
            "progress.details",
        ),
        (
            Box::new(|id, a| log(id, a, ["x".repeat(4097)])),
            "log.lines[0]",
        ),
        (
            Box::new(|id, a| log(id, a, (0..1001).map(|i| i.to_string()))),
            "log.lines",
        ),
        (
            Box::new(|id, a| {
                msg(worker_message::Msg::Touch(proto::Touch {
                    job_id: id.into(),
                    attempt: a,
                    extend_by: None,
                    checkpoint: Some(vec![0; 64 * 1024 + 1]),
                }))
            }),
            "touch.checkpoint",
        ),
    ];
    for (make, field) in cases {
        let (mut c, mut w, id, attempt) = held_job(&d).await;
        w.tx.send(make(&id, attempt)).await.unwrap();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), w.rx.message())
                .await
                .expect("the stream ends")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{field}: stream ended with OK"),
                Err(e) => break e,
            }
        };
        assert_eq!(end.code(), Code::InvalidArgument, "{field}: {end}");
        let bad = tonic_types::StatusExt::get_details_bad_request(&end).expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, field);
        assert!(logs(&mut c, &id, 0, 0).await.is_empty());
        let j = status(&mut c, &id).await;
        assert!(j.progress.is_none());
        assert_eq!(j.checkpoint_size, 0);
    }
    d.stop().await;
}

/// Log lines GetLogs returned survive a kill -9 of the daemon (SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{HEAD}{KINDS}");
    let p = crate::binary::spawn_daemon(dir.path(), &extra).await;
    let mut child = p.child;
    let mut c = connect(&p.url).await;
    let mut w = raw(&p.url, hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let attempt = w.assign().await.job.unwrap().attempt;
    w.tx.send(log(&job.id, attempt, (1..=50).map(|i| format!("l{i}"))))
        .await
        .unwrap();
    w.tx.send(progress(&job.id, attempt, 42, "half"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let l = logs(&mut c, &job.id, 0, 0).await;
        if l.len() == 50 && status(&mut c, &job.id).await.progress.is_some() {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "lines not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let p = crate::binary::spawn_daemon(dir.path(), &extra).await;
    let mut child = p.child;
    let mut c = connect(&p.url).await;
    let after = logs(&mut c, &job.id, 0, 0).await;
    let p42 = status(&mut c, &job.id).await.progress.map(|p| p.percent);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(after, seen);
    assert_eq!(p42, Some(42));
}

/// A command's stderr lines are its job's log and `::progress N message`
/// sets its progress (not logged); the stderr tail for `last_error` stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_stderr_is_its_log_and_progress() {
    let kinds = r#"
[kinds.cmd]
handler = "command"
command = ["sh", "-c", "echo '::progress 40 reading' >&2; echo 'line a' >&2; sleep 0.4; echo '::progress 100 done' >&2; printf 'line b' >&2"]
[kinds.bad]
handler = "command"
command = ["sh", "-c", "echo 'about to fail' >&2; exit 3"]
max_attempts = 1
"#;
    let d = start_with("store = \"sqlite:{dir}/jobd.db\"\n", kinds).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("cmd", "")).await;
    let mut watch = c
        .watch_status(proto::WatchStatusRequest {
            id: job.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut percents = Vec::new();
    while let Some(e) = watch.message().await.unwrap() {
        if let Some(p) = e.job.unwrap().progress {
            percents.push(p.percent);
        }
    }
    assert!(percents.contains(&40), "{percents:?}");
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    let p = j.progress.unwrap();
    assert_eq!((p.percent, p.message.as_str()), (100, "done"));
    let lines: Vec<String> = logs(&mut c, &job.id, 0, 0)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(lines, ["line a", "line b"]);
    let bad = submit(&mut c, req("bad", "")).await;
    let b = wait_terminal(&mut c, &bad.id).await;
    assert!(b.last_error.contains("about to fail"), "{}", b.last_error);
    assert_eq!(logs(&mut c, &bad.id, 0, 0).await.len(), 1);
    d.stop().await;
}

/// The log over HTTP (`GET /v1/jobs/{id}/logs`, and `?follow=true` as
/// server-sent events) and the CLI (`jobd logs ID`, `-f`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_over_http_and_the_cli() {
    let kinds = "[kinds.cmd]\nhandler = \"command\"\ncommand = [\"sh\", \"-c\", \"echo one >&2; echo two >&2\"]\n";
    let d = start_with("", kinds).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("cmd", "")).await;
    wait_terminal(&mut c, &job.id).await;
    let http = http_client();
    let text = http
        .get(format!("{}/v1/jobs/{}/logs?limit=1", d.url(), job.id))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["lines"][0]["text"], "one", "{body}");
    assert_eq!(body["lines"].as_array().unwrap().len(), 1);
    let sse = http
        .get(format!("{}/v1/jobs/{}/logs?follow=true", d.url(), job.id))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sse.contains("\"text\":\"one\"") && sse.contains("\"text\":\"two\""),
        "{sse}"
    );
    let bad = http
        .get(format!("{}/v1/jobs/{}/logs?nope=1", d.url(), job.id))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    for args in [
        vec!["logs", job.id.as_str()],
        vec!["logs", "-f", job.id.as_str()],
    ] {
        let out = cli(&d.addr.to_string(), &args).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("#1 one") && lines[1].ends_with("#1 two"),
            "{text}"
        );
    }
    d.stop().await;
}

/// A kind's `heartbeat_timeout` (1.5 s here): an attempt that says nothing (no progress,
/// no log line) for that long fails "heartbeat timeout" and is retried,
/// even while its worker's session heartbeats; one that keeps reporting
/// progress runs past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_attempt_fails_at_its_heartbeat_timeout_and_is_retried() {
    let kinds = "[kinds.r]\nhandler = \"remote\"\ntimeout = \"60s\"\nmax_attempts = 2\n\
                 heartbeat_timeout = \"1500ms\"\nbackoff = { initial = \"10ms\", max = \"10ms\" }\n";
    let d = start_with("[workers]\nheartbeat_interval = \"200ms\"\n", kinds).await;
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let tx = w.tx.clone();
    let beat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let hb = msg(worker_message::Msg::Heartbeat(proto::Heartbeat {}));
            if tx.send(hb).await.is_err() {
                return;
            }
        }
    });
    let job = submit(&mut c, req("r", "x")).await;
    // Attempt 1: the handler hangs (the session still heartbeats).
    let first = w.assign().await.job.unwrap().attempt;
    assert_eq!(first, 1);
    // Attempt 2: reports progress every 200 ms for 2.4 s (past the 1.5 s
    // heartbeat timeout), then completes.
    let second = w.assign().await.job.unwrap().attempt;
    assert_eq!(second, 2);
    for i in 0..6 {
        w.tx.send(progress(&job.id, second, i * 10, "working"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.tx.send(complete(&job.id, second)).await.unwrap();
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(
        (state(&j), j.attempt),
        (JobState::Succeeded, 2),
        "{}",
        j.last_error
    );
    let text = scrape(d.admin).await;
    assert_eq!(
        sample(&text, "jobd_heartbeat_timeouts_total{kind=\"r\"}"),
        Some(1.0),
        "{text}"
    );
    beat.abort();
    drop(w);
    d.stop().await;
}

fn touch(job_id: &str, attempt: u32, extend_by: Duration) -> proto::WorkerMessage {
    msg(worker_message::Msg::Touch(proto::Touch {
        job_id: job_id.into(),
        attempt,
        extend_by: prost_types::Duration::try_from(extend_by).ok(),
        checkpoint: None,
    }))
}

pub(crate) async fn touch_ack(w: &mut Raw) -> proto::TouchAck {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), w.rx.message())
            .await
            .expect("jobd answers")
            .unwrap()
            .unwrap();
        if let Some(proto::server_message::Msg::TouchAck(a)) = m.msg {
            return a;
        }
    }
}

/// Touch pushes an attempt's deadline (a 1 s timeout kept for 2.5 s, on
/// SQLite, whose lease moves with it), never past the kind's
/// `max_timeout`; a Touch of an attempt the session does not hold is
/// answered stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_keeps_a_job_past_its_deadline_up_to_max_timeout() {
    let kinds = "[kinds.r]\nhandler = \"remote\"\ntimeout = \"1s\"\nmax_timeout = \"5s\"\nmax_attempts = 1\n";
    let d = start_with(
        &format!("store = \"sqlite:{{dir}}/jobd.db\"\n{HEAD}"),
        kinds,
    )
    .await;
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let a = w.assign().await;
    let attempt = a.job.unwrap().attempt;
    let first_deadline = micros(&a.deadline);
    for _ in 0..5 {
        w.tx.send(touch(&job.id, attempt, Duration::from_secs(1)))
            .await
            .unwrap();
        let ack = touch_ack(&mut w).await;
        assert!(!ack.stale);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 2.5 s in: past the 1 s timeout, still running.
    assert_eq!(state(&status(&mut c, &job.id).await), JobState::Running);
    // Capped by max_timeout (5 s from the start).
    w.tx.send(touch(&job.id, attempt, Duration::from_secs(3600)))
        .await
        .unwrap();
    let capped = micros(&touch_ack(&mut w).await.deadline);
    assert!(
        capped > first_deadline && capped <= first_deadline + 4_500_000,
        "deadline {capped} vs first {first_deadline}"
    );
    // Stale: an attempt this session does not hold.
    w.tx.send(touch(&job.id, attempt + 1, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(touch_ack(&mut w).await.stale);
    w.tx.send(complete(&job.id, attempt)).await.unwrap();
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(
        (state(&j), j.attempt),
        (JobState::Succeeded, 1),
        "{}",
        j.last_error
    );
    drop(w);
    d.stop().await;
}
