//! The operator surface: /metrics values after a scripted workload, probes
//! during drain.

use std::time::Duration;

use jobd::proto::{self, JobState};

use crate::helpers::*;

async fn count(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    s: JobState,
    kind: &str,
) -> f64 {
    let r = c
        .list_jobs(proto::ListJobsRequest {
            state: s as i32,
            kind: kind.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.jobs.len() as f64
}

#[tokio::test]
async fn metrics_after_a_scripted_workload_agree_with_the_store() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut done = Vec::new();
    for i in 0..3 {
        done.push(submit(&mut c, req("echo", &format!("e{i}"))).await.id);
    }
    let mut r = req("fail", "permanent");
    r.max_attempts = 1;
    done.push(submit(&mut c, r).await.id);
    done.push(submit(&mut c, req("fail", "until:2")).await.id);
    let later = || {
        let mut r = req("echo", "later");
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        r
    };
    let q1 = submit(&mut c, later()).await;
    submit(&mut c, later()).await;
    c.cancel(proto::CancelRequest { id: q1.id.clone() })
        .await
        .unwrap();
    let mut k = req("echo", "dedup");
    k.idempotency_key = "k".into();
    done.push(submit(&mut c, k.clone()).await.id);
    submit(&mut c, k).await;
    assert!(c.submit(req("nope", "")).await.is_err());
    let running = submit(&mut c, req("sleep", "60000")).await;
    for id in &done {
        wait_terminal(&mut c, id).await;
    }
    wait_for(&mut c, &running.id, |s| s == JobState::Running).await;

    let (status, text) = http_get(d.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        must_sample(&text, "jobd_jobs_submitted_total{kind=\"echo\"}"),
        6.0
    );
    assert_eq!(
        must_sample(&text, "jobd_jobs_submitted_total{kind=\"fail\"}"),
        2.0
    );
    assert_eq!(
        must_sample(&text, "jobd_jobs_deduplicated_total{kind=\"echo\"}"),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_jobs_rejected_total{reason=\"invalid_argument\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_jobs_finished_total{kind=\"echo\",state=\"succeeded\"}"
        ),
        4.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_jobs_finished_total{kind=\"echo\",state=\"cancelled\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_jobs_finished_total{kind=\"fail\",state=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_jobs_finished_total{kind=\"fail\",state=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_job_attempts_total{kind=\"fail\",outcome=\"permanent_error\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_job_attempts_total{kind=\"fail\",outcome=\"error\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "jobd_job_attempts_total{kind=\"fail\",outcome=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(&text, "jobd_job_run_seconds_count{kind=\"echo\"}"),
        4.0
    );
    assert_eq!(
        must_sample(&text, "jobd_sweeper_requeued_total{reason=\"retry_due\"}"),
        1.0
    );
    // State gauges agree with the store.
    for (state, gauge) in [
        (JobState::Queued, "jobd_backlog_queued"),
        (JobState::Running, "jobd_processing_inflight"),
        (JobState::RetryWait, "jobd_retry_wait"),
        (JobState::Waiting, "jobd_waiting"),
    ] {
        for kind in ["echo", "fail", "sleep"] {
            let want = count(&mut c, state, kind).await;
            let series = format!("{gauge}{{kind=\"{kind}\"}}");
            let got = if text.contains(&format!("{series} ")) {
                must_sample(&text, &series)
            } else {
                0.0
            };
            assert_eq!(got, want, "{series}");
        }
    }
    assert_eq!(
        must_sample(&text, "jobd_backlog_queued{kind=\"echo\"}"),
        1.0
    );
    assert_eq!(
        must_sample(&text, "jobd_processing_inflight{kind=\"sleep\"}"),
        1.0
    );
    assert!(
        must_sample(
            &text,
            "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/Submit\",code=\"OK\"}"
        ) >= 9.0
    );
    assert_eq!(must_sample(&text, "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/Submit\",code=\"INVALID_ARGUMENT\"}"), 1.0);
    assert_eq!(must_sample(&text, "jobd_watchers"), 0.0);
    assert!(text.contains("jobd_build_info{version=\""));
}

#[tokio::test]
async fn readyz_flips_to_503_during_drain_before_grpc_stops() {
    let d = start("[drain]\ngrace = \"600ms\"\ntimeout = \"1s\"\n").await;
    let mut c = d.client().await;
    assert_eq!(http_get(d.admin, "/readyz").await.0, 200);
    assert_eq!(http_get(d.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(d.admin, "/nope").await.0, 404);
    d.shutdown.drain.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while http_get(d.admin, "/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // gRPC still serves while not ready.
    assert!(
        c.get_status(proto::GetStatusRequest {
            id: uuid::Uuid::now_v7().to_string()
        })
        .await
        .unwrap_err()
        .code()
            == tonic::Code::NotFound
    );
    assert_eq!(http_get(d.admin, "/healthz").await.0, 200);
    tokio::time::timeout(Duration::from_secs(20), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A kind removed from the config: its waiting jobs are counted at start
/// in `jobd_unconfigured_kind_jobs`, and can still be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_removed_kind_are_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("store = \"sqlite:{}/jobd.db\"\n", dir.path().display());
    let d = start_with(
        &store,
        "[kinds.gone]\nhandler = \"echo\"\n[kinds.kept]\nhandler = \"echo\"\n",
    )
    .await;
    let mut c = d.client().await;
    let mut r = req("gone", "x");
    r.run_at = Some(ts_in(Duration::from_secs(3600)));
    let job = submit(&mut c, r).await;
    d.stop().await;

    let d = start_with(&store, "[kinds.kept]\nhandler = \"echo\"\n").await;
    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(
        text.contains("jobd_unconfigured_kind_jobs{kind=\"gone\"} 1"),
        "{text}"
    );
    let mut c = d.client().await;
    let cancelled = c
        .cancel(jobd::proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(state(&cancelled), jobd::proto::JobState::Cancelled);
    d.stop().await;
}

/// Every per-kind series of every configured kind is on /metrics at 0
/// before any submit; a job handed over at submit still moves the backlog
/// series (QUEUED, then RUNNING); gRPC WatchJobs is counted under its own
/// method name, not `other`.
#[tokio::test]
async fn kind_series_start_at_zero_and_watch_jobs_has_its_own_label() {
    let d = start("").await;
    let text = scrape(d.admin).await;
    for kind in ["echo", "sleep", "fail"] {
        for family in [
            "jobd_backlog_queued",
            "jobd_processing_inflight",
            "jobd_retry_wait",
            "jobd_waiting",
            "jobd_kind_paused",
            "jobd_jobs_submitted_total",
        ] {
            let series = format!("{family}{{kind=\"{kind}\"}}");
            assert_eq!(must_sample(&text, &series), 0.0, "{series}");
        }
    }
    let mut c = d.client().await;
    let mut s = c
        .watch_jobs(proto::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let j = submit(&mut c, req("echo", "x")).await;
    wait_terminal(&mut c, &j.id).await;
    let first = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a change")
        .unwrap()
        .unwrap();
    assert_eq!(first.job.unwrap().state, JobState::Queued as i32);
    drop(s);
    let text = scrape(d.admin).await;
    assert_eq!(
        must_sample(&text, "jobd_backlog_queued{kind=\"echo\"}"),
        0.0
    );
    assert_eq!(
        must_sample(&text, "jobd_processing_inflight{kind=\"echo\"}"),
        0.0
    );
    assert!(
        text.contains(
            "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/WatchJobs\",code=\"OK\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("method=\"other\""), "{text}");
    d.stop().await;
}

/// `jobd_waiting{kind}` follows a child from WAITING to its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_gauge_follows_a_child_until_its_parent_ends() {
    let d = start("").await;
    let mut c = d.client().await;
    let parent = submit(&mut c, req("sleep", "300")).await;
    let child = submit(
        &mut c,
        jobd::proto::SubmitRequest {
            depends_on: vec![parent.id.clone()],
            ..req("echo", "after")
        },
    )
    .await;
    let waiting = must_sample(&scrape(d.admin).await, "jobd_waiting{kind=\"echo\"}");
    assert_eq!(waiting, 1.0);
    wait_terminal(&mut c, &child.id).await;
    let waiting = must_sample(&scrape(d.admin).await, "jobd_waiting{kind=\"echo\"}");
    assert_eq!(waiting, 0.0);
    d.stop().await;
}
