//! AdminService operations: pausing kinds, listing them, retrying dead jobs.

use std::time::Duration;

use jobd::proto::admin_service_client::AdminServiceClient;
use jobd::proto::{self, JobState};
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::*;

async fn pause(a: &mut AdminServiceClient<Channel>, kind: &str) -> proto::KindStatus {
    a.pause_kind(proto::PauseKindRequest { kind: kind.into() })
        .await
        .unwrap()
        .into_inner()
        .kind_status
        .unwrap()
}

async fn resume(a: &mut AdminServiceClient<Channel>, kind: &str) -> proto::KindStatus {
    a.resume_kind(proto::ResumeKindRequest { kind: kind.into() })
        .await
        .unwrap()
        .into_inner()
        .kind_status
        .unwrap()
}

async fn kinds(a: &mut AdminServiceClient<Channel>) -> Vec<proto::KindStatus> {
    a.list_kinds(proto::ListKindsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kinds
}

/// Submits `n` echo jobs; returns their ids.
async fn submit_n(
    c: &mut proto::job_service_client::JobServiceClient<Channel>,
    kind: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit(c, req(kind, &format!("{i}"))).await.id);
    }
    ids
}

/// Asserts that none of `ids` leaves QUEUED for `d`.
async fn stay_queued(
    c: &mut proto::job_service_client::JobServiceClient<Channel>,
    ids: &[String],
    d: Duration,
) {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        for id in ids {
            let j = status(c, id).await;
            assert_eq!(
                state(&j),
                JobState::Queued,
                "job {id} of a paused kind started"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A paused kind takes submits and starts nothing (other kinds run on);
/// ListKinds shows it paused with its queue; resume runs them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_kind_takes_submits_starts_nothing_and_resumes() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    let st = pause(&mut a, "echo").await;
    assert!(st.paused && st.handler == "echo", "{st:?}");
    let ids = submit_n(&mut c, "echo", 5).await;
    let other = submit(&mut c, req("sleep", "1")).await;
    assert_eq!(
        state(&wait_terminal(&mut c, &other.id).await),
        JobState::Succeeded
    );
    stay_queued(&mut c, &ids, Duration::from_secs(2)).await;
    let list = kinds(&mut a).await;
    let echo = list.iter().find(|k| k.kind == "echo").unwrap();
    assert!(
        echo.paused && echo.queued == 5 && echo.running == 0,
        "{echo:?}"
    );
    assert!(list.iter().filter(|k| k.kind != "echo").all(|k| !k.paused));
    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(text.contains("jobd_kind_paused{kind=\"echo\"} 1"), "{text}");
    assert!(text.contains("jobd_kind_paused{kind=\"sleep\"} 0"));
    let st = resume(&mut a, "echo").await;
    assert!(!st.paused, "{st:?}");
    for id in &ids {
        assert_eq!(state(&wait_terminal(&mut c, id).await), JobState::Succeeded);
    }
    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(text.contains("jobd_kind_paused{kind=\"echo\"} 0"), "{text}");
    d.stop().await;
}

/// A running attempt of a kind being paused finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_lets_running_jobs_finish() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    let j = submit(&mut c, req("sleep", "300")).await;
    wait_for(&mut c, &j.id, |s| s == JobState::Running).await;
    pause(&mut a, "sleep").await;
    assert_eq!(
        state(&wait_terminal(&mut c, &j.id).await),
        JobState::Succeeded
    );
    d.stop().await;
}

/// The pause is stored: after a restart on the same SQLite file the kind
/// is still paused and its jobs still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pause_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!("store = \"sqlite:{}/jobd.db\"\n", dir.path().display());
    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    pause(&mut a, "echo").await;
    let ids = submit_n(&mut d.client().await, "echo", 3).await;
    d.stop().await;

    let d = start(&head).await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    let echo = kinds(&mut a)
        .await
        .into_iter()
        .find(|k| k.kind == "echo")
        .unwrap();
    assert!(echo.paused && echo.queued == 3, "{echo:?}");
    stay_queued(&mut c, &ids, Duration::from_secs(1)).await;
    resume(&mut a, "echo").await;
    for id in &ids {
        assert_eq!(state(&wait_terminal(&mut c, id).await), JobState::Succeeded);
    }
    d.stop().await;
}

/// On PostgreSQL a pause through instance A holds on instance B too (B
/// re-reads the paused set every sweep), and a resume on B frees A's jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pause_holds_for_every_instance() {
    let Some(pg) = crate::pg::PgSchema::new("operations").await else {
        return;
    };
    let a = start(&pg.toml("")).await;
    let b = start(&pg.toml("")).await;
    pause(&mut admin(&a.url()).await, "echo").await;
    // B learns of it within a sweep (at most a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cb = b.client().await;
    let ids = submit_n(&mut cb, "echo", 10).await;
    stay_queued(&mut cb, &ids, Duration::from_secs(2)).await;
    let on_b = kinds(&mut admin(&b.url()).await).await;
    assert!(
        on_b.iter()
            .any(|k| k.kind == "echo" && k.paused && k.queued == 10),
        "{on_b:?}"
    );
    resume(&mut admin(&b.url()).await, "echo").await;
    let mut ca = a.client().await;
    for id in &ids {
        assert_eq!(
            state(&wait_terminal(&mut ca, id).await),
            JobState::Succeeded
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Bad and unknown kinds get a clear status; jobs of a kind no longer
/// configured are listed as "unconfigured".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_are_not_found_and_unconfigured_ones_listed() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!("store = \"sqlite:{}/jobd.db\"\n", dir.path().display());
    let extra = "[kinds.gone]\nhandler = \"echo\"\n";
    let d = start_with(&head, &format!("{KINDS}{extra}")).await;
    let mut a = admin(&d.url()).await;
    pause(&mut a, "gone").await;
    submit(&mut d.client().await, req("gone", "x")).await;
    d.stop().await;

    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    for (kind, code) in [
        ("nope", Code::NotFound),
        ("", Code::InvalidArgument),
        ("Bad Kind", Code::InvalidArgument),
    ] {
        let e = a
            .pause_kind(proto::PauseKindRequest { kind: kind.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "pause {kind:?}: {e:?}");
        let e = a
            .resume_kind(proto::ResumeKindRequest { kind: kind.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "resume {kind:?}: {e:?}");
    }
    let list = kinds(&mut a).await;
    let gone = list.iter().find(|k| k.kind == "gone").unwrap();
    assert_eq!(
        (
            gone.handler.as_str(),
            gone.queued,
            gone.paused,
            gone.concurrency
        ),
        ("unconfigured", 1, true, 0),
        "{gone:?}"
    );
    // A stale pause of a kind no longer configured can be cleared...
    assert!(!resume(&mut a, "gone").await.paused);
    // Even one without jobs.
    let mut a2 = admin(&d.url()).await;
    let e = a2
        .resume_kind(proto::ResumeKindRequest {
            kind: "gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no longer paused: unknown");
    // ...but such a kind cannot be paused.
    let e = a
        .pause_kind(proto::PauseKindRequest {
            kind: "gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    d.stop().await;
}

/// Every AdminService call needs the admin role: a submit token gets
/// PERMISSION_DENIED, an admin token goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_need_the_admin_role() {
    const S: &str = "submit-token-0123456789";
    const A: &str = "admin-token-0123456789";
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{S}\", role = \"submit\" }}, {{ token = \"{A}\", role = \"admin\" }}]\n"
    ))
    .await;
    let ch = Channel::from_shared(d.url())
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
    for (token, ok) in [(S, false), (A, true)] {
        let mut a = AdminServiceClient::with_interceptor(ch.clone(), with(token));
        let results = [
            a.pause_kind(proto::PauseKindRequest {
                kind: "echo".into(),
            })
            .await
            .map(|_| ()),
            a.resume_kind(proto::ResumeKindRequest {
                kind: "echo".into(),
            })
            .await
            .map(|_| ()),
            a.list_kinds(proto::ListKindsRequest {}).await.map(|_| ()),
            a.retry_jobs(proto::RetryJobsRequest {
                ids: vec![uuid::Uuid::now_v7().to_string()],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        ];
        for r in results {
            match ok {
                true => assert!(r.is_ok(), "{r:?}"),
                false => assert_eq!(r.unwrap_err().code(), Code::PermissionDenied),
            }
        }
    }
    d.stop().await;
}

/// Kinds for the retry tests: `flaky` fails (once, no retries) until the
/// file `{dir}/ok` exists.
const RETRY_KINDS: &str = r#"
[kinds.flaky]
handler = "command"
command = ["sh", "-c", "test -f \"$OK\""]
env = { OK = "{dir}/ok" }
max_attempts = 1
"#;

async fn retry(
    a: &mut AdminServiceClient<Channel>,
    r: proto::RetryJobsRequest,
) -> proto::RetryJobsResponse {
    a.retry_jobs(r).await.unwrap().into_inner()
}

fn by_ids(ids: &[&str]) -> proto::RetryJobsRequest {
    proto::RetryJobsRequest {
        ids: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// RetryJobs by id: a FAILED job goes back to QUEUED with its attempts
/// reset, same id, and a watcher sees it come back and succeed; ids that
/// cannot be retried are skipped, each with why, and the rest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_by_id_requeues_and_watchers_see_it_succeed() {
    let d = start_with("", &format!("{KINDS}{RETRY_KINDS}")).await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    let dead = submit(&mut c, req("flaky", "")).await;
    let dead = wait_terminal(&mut c, &dead.id).await;
    assert_eq!((state(&dead), dead.attempt), (JobState::Failed, 1));
    let done = submit(&mut c, req("echo", "x")).await;
    wait_terminal(&mut c, &done.id).await;
    let missing = uuid::Uuid::now_v7().to_string();

    // A watcher that saw it fail (the stream ended there) resumes after
    // that sequence. The kind is paused so the QUEUED step is seen.
    let seen = watch_all(&mut c, &dead.id).await.unwrap();
    let failed_seq = seen.last().unwrap().sequence;
    pause(&mut a, "flaky").await;
    std::fs::write(d.dir.path().join("ok"), "").unwrap();

    // Dry run: reports, changes nothing.
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            dry_run: true,
            ..by_ids(&[&dead.id, &done.id, &missing])
        },
    )
    .await;
    assert_eq!(
        (r.matched, r.retried, r.ids.clone()),
        (1, 0, vec![dead.id.clone()])
    );
    assert_eq!(r.skipped.len(), 2, "{r:?}");
    assert_eq!(state(&status(&mut c, &dead.id).await), JobState::Failed);

    let r = retry(&mut a, by_ids(&[&done.id, &dead.id, &missing])).await;
    assert_eq!(
        (r.matched, r.retried, r.ids.clone()),
        (1, 1, vec![dead.id.clone()]),
        "{r:?}"
    );
    assert!(!r.more);
    let skipped: Vec<(&str, &str)> = r
        .skipped
        .iter()
        .map(|s| (s.id.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 2, "{r:?}");
    assert_eq!(skipped[0].0, done.id);
    assert!(skipped[0].1.contains("SUCCEEDED"), "{skipped:?}");
    assert_eq!(skipped[1], (missing.as_str(), "job not found"));

    let mut watcher = d.client().await;
    let watch = tokio::spawn({
        let id = dead.id.clone();
        async move {
            let mut s = watcher
                .watch_status(proto::WatchStatusRequest {
                    id,
                    after_sequence: failed_seq,
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(e) = tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .expect("watch stream stalled")
                .unwrap()
            {
                out.push(e);
            }
            out
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    resume(&mut a, "flaky").await;
    let events = watch.await.unwrap();
    let states: Vec<JobState> = events
        .iter()
        .map(|e| state(e.job.as_ref().unwrap()))
        .collect();
    assert_eq!(
        states,
        [JobState::Queued, JobState::Running, JobState::Succeeded],
        "{events:?}"
    );
    assert!(events[0].sequence > failed_seq);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let again = status(&mut c, &dead.id).await;
    assert_eq!(
        (state(&again), again.attempt),
        (JobState::Succeeded, 1),
        "{again:?}"
    );
    // Retrying it again now: skipped (it succeeded).
    let r = retry(&mut a, by_ids(&[&dead.id])).await;
    assert_eq!((r.retried, r.skipped.len()), (0, 1));
    d.stop().await;
}

/// RetryJobs by filter: state, kind, labels and finish times select; the
/// limit bounds each call and `more` says whether more matched; dry_run
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_by_filter_with_dry_run_and_limit() {
    let d = start_with("", &format!("{KINDS}{RETRY_KINDS}")).await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    let mut dead = Vec::new();
    for i in 0..5 {
        let mut r = req("flaky", "");
        r.labels
            .insert("batch".into(), if i < 3 { "a" } else { "b" }.into());
        dead.push(submit(&mut c, r).await.id);
    }
    let cancelled = submit(
        &mut c,
        proto::SubmitRequest {
            run_at: Some(ts_in(Duration::from_secs(3600))),
            ..req("echo", "x")
        },
    )
    .await;
    c.cancel(proto::CancelRequest {
        id: cancelled.id.clone(),
    })
    .await
    .unwrap();
    for id in &dead {
        assert_eq!(state(&wait_terminal(&mut c, id).await), JobState::Failed);
    }
    let failed = |labels: &[(&str, &str)]| proto::RetryFilter {
        state: JobState::Failed as i32,
        kind: "flaky".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            filter: Some(failed(&[("batch", "a")])),
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.matched, r.retried, r.more), (3, 0, false), "{r:?}");
    assert_eq!(r.ids, dead[..3].to_vec());
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            filter: Some(failed(&[])),
            dry_run: true,
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.matched, r.more), (2, true), "{r:?}");
    // Finished in the future: none.
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                finished_after: Some(ts_in(Duration::from_secs(60))),
                ..failed(&[])
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.matched, r.retried), (0, 0));
    std::fs::write(d.dir.path().join("ok"), "").unwrap();
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            filter: Some(failed(&[("batch", "b")])),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.matched, r.retried, r.more), (2, 2, false), "{r:?}");
    for id in &dead[3..] {
        assert_eq!(state(&wait_terminal(&mut c, id).await), JobState::Succeeded);
    }
    for id in &dead[..3] {
        assert_eq!(state(&status(&mut c, id).await), JobState::Failed);
    }
    // CANCELLED jobs by their own filter.
    let r = retry(
        &mut a,
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                state: JobState::Cancelled as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.ids, vec![cancelled.id.clone()], "{r:?}");
    // It runs now: a retry does not wait for the old run_at.
    let j = wait_terminal(&mut c, &cancelled.id).await;
    assert_eq!((state(&j), j.attempt), (JobState::Succeeded, 1));
    d.stop().await;
}

/// Each bad RetryJobs request gets INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_refuses_bad_requests() {
    let d = start("").await;
    let mut a = admin(&d.url()).await;
    let id = uuid::Uuid::now_v7().to_string();
    let filter = proto::RetryFilter {
        state: JobState::Failed as i32,
        ..Default::default()
    };
    let bad = [
        proto::RetryJobsRequest::default(),
        proto::RetryJobsRequest {
            ids: vec![id.clone()],
            filter: Some(filter.clone()),
            ..Default::default()
        },
        proto::RetryJobsRequest {
            ids: vec!["nope".into()],
            ..Default::default()
        },
        proto::RetryJobsRequest {
            ids: vec![id.clone(); 3],
            limit: 2,
            ..Default::default()
        },
        proto::RetryJobsRequest {
            filter: Some(filter.clone()),
            limit: 10_001,
            ..Default::default()
        },
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                state: JobState::Succeeded as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                state: 0,
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                kind: "Bad Kind".into(),
                ..filter.clone()
            }),
            ..Default::default()
        },
        proto::RetryJobsRequest {
            filter: Some(proto::RetryFilter {
                finished_after: Some(ts_in(Duration::from_secs(10))),
                finished_before: Some(ts_in(Duration::from_secs(5))),
                ..filter.clone()
            }),
            ..Default::default()
        },
    ];
    for r in bad {
        let e = a.retry_jobs(r.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{r:?}: {e:?}");
    }
    // The bounds themselves are fine.
    for r in [
        proto::RetryJobsRequest {
            filter: Some(filter.clone()),
            limit: 10_000,
            ..Default::default()
        },
        proto::RetryJobsRequest {
            ids: vec![id.clone(); 2],
            limit: 2,
            ..Default::default()
        },
    ] {
        a.retry_jobs(r).await.unwrap();
    }
    d.stop().await;
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

/// `jobd pause | resume | kinds | retry`, each with --json, and their exit
/// codes: 0, 3 for an unknown kind, 64 for a refused request, 5 with no
/// daemon; with auth on, --token (an admin one) is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_operations_with_json_and_exit_codes() {
    const A: &str = "admin-token-0123456789";
    const S: &str = "submit-token-0123456789";
    let d = start_with(
        &format!(
            "[auth]\ntokens = [{{ token = \"{S}\", role = \"submit\" }}, {{ token = \"{A}\", role = \"admin\" }}]\n"
        ),
        &format!("{KINDS}{RETRY_KINDS}"),
    )
    .await;
    let addr = d.url();
    let o = cli(&addr, &["pause", "flaky", "--json", "--token", A]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v = json_of(&o);
    assert_eq!(
        (
            v["kindStatus"]["kind"].as_str(),
            v["kindStatus"]["paused"].as_bool()
        ),
        (Some("flaky"), Some(true))
    );
    let o = cli(&addr, &["kinds", "--json", "--token", A]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v = json_of(&o);
    let flaky = v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "flaky")
        .unwrap();
    assert_eq!(
        (flaky["paused"].as_bool(), flaky["handler"].as_str()),
        (Some(true), Some("command"))
    );
    let o = cli(&addr, &["kinds", "--token", A]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("PAUSED"),
        "{o:?}"
    );
    let o = cli(&addr, &["resume", "flaky", "--json", "--token", A]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        json_of(&o)["kindStatus"]["paused"],
        serde_json::Value::Null,
        "false is left out"
    );
    // Unknown kind: 3; a submit token: not allowed (1); no token: refused (1).
    assert_eq!(
        cli(&addr, &["pause", "nope", "--token", A])
            .await
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        cli(&addr, &["resume", "nope", "--json", "--token", A])
            .await
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        cli(&addr, &["kinds", "--token", S]).await.status.code(),
        Some(1)
    );
    assert_eq!(cli(&addr, &["kinds"]).await.status.code(), Some(1));

    // retry: a dead job, by filter dry run, then by id.
    let mut c = jobd::proto::job_service_client::JobServiceClient::with_interceptor(
        Channel::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {S}").parse().unwrap());
            Ok(r)
        },
    );
    let id = c
        .submit(req("flaky", ""))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = c
            .get_status(proto::GetStatusRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if state(&j) == JobState::Failed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = cli(
        &addr,
        &[
            "retry",
            "--kind",
            "flaky",
            "--dry-run",
            "--json",
            "--token",
            A,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v = json_of(&o);
    // proto3 JSON: zeros and false are left out.
    assert_eq!(
        (&v["matched"], &v["retried"], &v["more"]),
        (
            &serde_json::json!("1"),
            &serde_json::Value::Null,
            &serde_json::Value::Null
        ),
        "{v}"
    );
    assert_eq!(v["ids"][0].as_str(), Some(id.as_str()));
    let missing = uuid::Uuid::now_v7().to_string();
    let o = cli(
        &addr,
        &[
            "retry", "--id", &id, "--id", &missing, "--json", "--token", A,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["retried"], "1", "uint64 as a string");
    assert_eq!(v["skipped"][0]["id"].as_str(), Some(missing.as_str()));
    assert_eq!(v["skipped"][0]["reason"].as_str(), Some("job not found"));
    // Refused requests: 64 (bad id, bad state, limit too big).
    for args in [
        &["retry", "--id", "nope"][..],
        &["retry", "--state", "succeeded", "--all"],
        &["retry", "--limit", "10001", "--all"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--token", A]);
        assert_eq!(cli(&addr, &args).await.status.code(), Some(64), "{args:?}");
    }
    d.stop().await;
    // No daemon: 5.
    assert_eq!(
        cli(&addr, &["kinds", "--json"]).await.status.code(),
        Some(5)
    );
}

/// A pause also holds for a kind that is draining fast (the dispatcher
/// claims ahead of free slots for busy local kinds; a paused kind gets none
/// of that): its queued count stops moving once what was already claimed
/// has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_while_the_kind_is_busy() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    for _ in 0..5 {
        let batch = proto::SubmitBatchRequest {
            requests: (0..1000).map(|i| req("echo", &format!("{i}"))).collect(),
        };
        c.submit_batch(batch).await.unwrap();
    }
    let queued = |k: Vec<proto::KindStatus>| {
        k.into_iter()
            .find(|k| k.kind == "echo")
            .map(|k| k.queued)
            .unwrap()
    };
    // Let the kind get busy, then pause it mid-drain.
    for _ in 0..500 {
        if queued(kinds(&mut a).await) < 4500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pause(&mut a, "echo").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = queued(kinds(&mut a).await);
    assert!(settled > 0, "the kind drained before the pause");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            queued(kinds(&mut a).await),
            settled,
            "jobs started while paused"
        );
    }
    resume(&mut a, "echo").await;
    d.stop().await;
}
