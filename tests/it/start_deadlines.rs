//! Start deadlines (#33): `SubmitRequest.start_before` and a kind's
//! `start_within`. A job past its deadline never starts (the claim checks
//! it), ends FAILED "expired: …", is counted, and cancels its children;
//! RetryJobs gives it a fresh start. On every store.

use std::time::{Duration, SystemTime};

use jobd::proto::{self, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;

const KINDS: &str = r#"
[kinds.single]
handler = "sleep"
concurrency = 1

[kinds.echo]
handler = "echo"

[kinds.otp]
handler = "echo"
start_within = "300ms"
"#;

fn before(d: Duration) -> Option<prost_types::Timestamp> {
    Some((SystemTime::now() + d).into())
}

fn deadline(job: proto::SubmitRequest, d: Duration) -> proto::SubmitRequest {
    proto::SubmitRequest {
        start_before: before(d),
        ..job
    }
}

/// A slot that frees right at the deadline: the job either started before
/// it or never does (FAILED, no attempt). Then a paused kind's job expires
/// through the sweeper, a kind's `start_within` applies, children of an
/// expired job are cancelled, the metric counts, and a retry runs it.
async fn never_late_on(head: &str) {
    let d = start_with(head, KINDS).await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    for _ in 0..5 {
        let blocker = submit(&mut c, req("single", "150")).await;
        let j = submit(
            &mut c,
            deadline(req("single", "0"), Duration::from_millis(150)),
        )
        .await;
        let j = wait_terminal(&mut c, &j.id).await;
        wait_terminal(&mut c, &blocker.id).await;
        let deadline = micros(&j.start_before);
        match state(&j) {
            JobState::Succeeded => assert!(micros(&j.started_at) < deadline, "started late: {j:?}"),
            JobState::Failed => {
                assert_eq!(j.attempt, 0, "{j:?}");
                assert!(j.started_at.is_none());
                assert!(
                    j.last_error.starts_with("expired: not started before"),
                    "{}",
                    j.last_error
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // Paused: only the sweeper can end it, and its child with it.
    a.pause_kind(proto::PauseKindRequest {
        kind: "echo".into(),
    })
    .await
    .unwrap();
    let j = submit(
        &mut c,
        deadline(req("echo", "x"), Duration::from_millis(200)),
    )
    .await;
    let child = submit(
        &mut c,
        proto::SubmitRequest {
            depends_on: vec![j.id.clone()],
            ..req("echo", "y")
        },
    )
    .await;
    let otp = submit(&mut c, req("otp", "123456")).await;
    assert!(
        otp.start_before.is_some(),
        "the kind's start_within applies"
    );
    let e = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&e), JobState::Failed);
    assert!(e.last_error.contains("expired"), "{}", e.last_error);
    let ch = wait_terminal(&mut c, &child.id).await;
    assert_eq!(state(&ch), JobState::Cancelled, "{}", ch.last_error);
    a.pause_kind(proto::PauseKindRequest { kind: "otp".into() })
        .await
        .unwrap();
    // (otp may have run already; when paused in time it expires.)
    let o = wait_terminal(&mut c, &otp.id).await;
    assert!(matches!(state(&o), JobState::Succeeded | JobState::Failed));
    let m = scrape(d.admin).await;
    assert!(
        must_sample(&m, "jobd_jobs_expired_total{kind=\"echo\"}") >= 1.0,
        "{m}"
    );
    // RetryJobs: a fresh start, without the old deadline.
    a.resume_kind(proto::ResumeKindRequest {
        kind: "echo".into(),
    })
    .await
    .unwrap();
    a.retry_jobs(proto::RetryJobsRequest {
        ids: vec![j.id.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&r), JobState::Succeeded, "{}", r.last_error);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_late_on_memory() {
    never_late_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_late_on_sqlite() {
    never_late_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_late_on_postgres() {
    let Some(pg) = PgSchema::new("start_deadlines").await else {
        return;
    };
    never_late_on(&pg.toml("")).await;
}

/// More jobs past their deadline than one sweeper pass takes (1,000):
/// the passes that follow take the rest, and each ends FAILED with no
/// attempt, counted once. On SQLite, a paused kind (only the sweeper can
/// end them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_sweep_all_expires() {
    const N: usize = 2_500;
    let d = start_with("store = \"sqlite:{dir}/jobd.db\"\n", KINDS).await;
    let mut c = d.client().await;
    let mut a = admin(&d.url()).await;
    a.pause_kind(proto::PauseKindRequest {
        kind: "echo".into(),
    })
    .await
    .unwrap();
    let mut ids = Vec::with_capacity(N);
    for chunk in 0..N / 500 {
        let requests = (0..500)
            .map(|i| deadline(req("echo", &format!("{chunk}-{i}")), Duration::from_secs(2)))
            .collect();
        let r = c
            .submit_batch(proto::SubmitBatchRequest { requests })
            .await
            .unwrap()
            .into_inner();
        for r in r.results {
            match r.result {
                Some(proto::submit_result::Result::Accepted(a)) => ids.push(a.job.unwrap().id),
                other => panic!("refused: {other:?}"),
            }
        }
    }
    assert_eq!(ids.len(), N);
    let series = "jobd_jobs_expired_total{kind=\"echo\"}";
    let t = std::time::Instant::now();
    loop {
        let n = sample(&scrape(d.admin).await, series).unwrap_or(0.0) as usize;
        if n >= N {
            assert_eq!(n, N, "each job is counted once");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{n} of {N} expired after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ids.iter().step_by(97) {
        let j = status(&mut c, id).await;
        assert_eq!((state(&j), j.attempt), (JobState::Failed, 0), "{j:?}");
    }
    d.stop().await;
}

/// Bad deadlines are INVALID_ARGUMENT naming `start_before`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deadlines_are_refused() {
    let d = start_with("", KINDS).await;
    let mut c = d.client().await;
    let field = |s: &tonic::Status| {
        tonic_types::StatusExt::get_details_bad_request(s)
            .map(|b| {
                (
                    b.field_violations[0].field.clone(),
                    b.field_violations[0].description.clone(),
                )
            })
            .unwrap_or_default()
    };
    let past = proto::SubmitRequest {
        start_before: Some((SystemTime::now() - Duration::from_secs(1)).into()),
        ..req("echo", "")
    };
    let e = c.submit(past).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(field(&e).0, "start_before");
    assert!(field(&e).1.contains("already past"), "{e}");
    let after_run_at = proto::SubmitRequest {
        run_at: before(Duration::from_secs(60)),
        ..deadline(req("echo", ""), Duration::from_secs(30))
    };
    let e = c.submit(after_run_at).await.unwrap_err();
    assert!(field(&e).1.contains("run_at"), "{e}");
    // The kind's start_within counts too: a job due after it never starts.
    let late = proto::SubmitRequest {
        run_at: before(Duration::from_secs(5)),
        ..req("otp", "")
    };
    let e = c.submit(late).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(field(&e).0, "start_before");
    assert!(field(&e).1.contains("could never start"), "{e}");
    let garbage = proto::SubmitRequest {
        start_before: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        }),
        ..req("echo", "")
    };
    let e = c.submit(garbage).await.unwrap_err();
    assert_eq!(field(&e).0, "start_before");
    d.stop().await;
}
