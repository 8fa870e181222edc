//! JobService behaviour over real gRPC: lifecycle, retries, timeouts,
//! cancel, priorities, delays, idempotency, bounds, watchers, bad input.

use std::time::Duration;

use jobd::proto::{self, JobState};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

#[tokio::test]
async fn echo_job_succeeds_with_its_payload_as_result() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("echo", "hello")).await;
    // Idle: a worker is free, so the job starts in its insert's commit.
    assert_eq!(state(&job), JobState::Running);
    assert_eq!((job.attempt, job.started_at.is_some()), (1, true));
    assert_eq!(job.payload_size, 5);
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert_eq!(done.result, b"hello");
    assert_eq!(done.attempt, 1);
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    d.stop().await;
}

/// A submit starts its job at once only into a free slot of its kind: the
/// next ones wait (QUEUED), and the kind's bound and order hold.
#[tokio::test]
async fn a_job_starts_at_submit_only_into_a_free_slot() {
    let d = start_with("", "[kinds.one]\nhandler = \"sleep\"\nconcurrency = 1\n").await;
    let mut c = d.client().await;
    let a = submit(&mut c, req("one", "300")).await;
    let b = submit(&mut c, req("one", "0")).await;
    let last = submit(&mut c, req("one", "0")).await;
    assert_eq!((state(&a), a.attempt), (JobState::Running, 1));
    assert_eq!((state(&b), b.attempt), (JobState::Queued, 0));
    assert_eq!(state(&last), JobState::Queued);
    let a = wait_terminal(&mut c, &a.id).await;
    let b = wait_terminal(&mut c, &b.id).await;
    let last = wait_terminal(&mut c, &last.id).await;
    for j in [&a, &b, &last] {
        assert_eq!(state(j), JobState::Succeeded, "{}", j.last_error);
    }
    assert!(
        micros(&b.started_at) >= micros(&a.finished_at),
        "one at a time"
    );
    assert!(
        micros(&last.started_at) >= micros(&b.finished_at),
        "in order"
    );
    d.stop().await;
}

#[tokio::test]
async fn retry_then_success() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("fail", "until:3");
    r.max_attempts = 5;
    let job = submit(&mut c, r).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    assert_eq!(done.attempt, 3);
    assert_eq!(done.result, b"succeeded on attempt 3");
}

#[tokio::test]
async fn retries_exhausted_fail_the_job() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("fail", "boom")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Failed);
    assert_eq!(done.attempt, 3, "kind default max_attempts");
    assert!(done.last_error.contains("boom"), "{}", done.last_error);
    assert!(done.last_error.contains("no attempts left"));
}

#[tokio::test]
async fn permanent_error_fails_at_once() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("fail", "permanent")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Failed);
    assert_eq!(done.attempt, 1);
    assert!(done.last_error.contains("permanent"));
}

#[tokio::test]
async fn timeout_stops_the_attempt_and_retries() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("short", "10000")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Failed);
    assert_eq!(done.attempt, 2);
    assert!(done.last_error.contains("timed out"), "{}", done.last_error);
    // A per-job timeout overrides the kind's.
    let mut r = req("sleep", "10000");
    r.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 100_000_000,
    });
    r.max_attempts = 1;
    let job = submit(&mut c, r).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Failed);
    assert!(
        done.last_error.contains("timed out after 100ms"),
        "{}",
        done.last_error
    );
}

#[tokio::test]
async fn cancel_queued_and_finished_jobs() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("echo", "later");
    r.run_at = Some(ts_in(Duration::from_secs(3600)));
    let job = submit(&mut c, r).await;
    let cancel = |id: &str| proto::CancelRequest { id: id.into() };
    let j = c
        .cancel(cancel(&job.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(state(&j), JobState::Cancelled);
    // Idempotent.
    let j = c
        .cancel(cancel(&job.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(state(&j), JobState::Cancelled);
    // A finished job cannot be cancelled.
    let done = submit(&mut c, req("echo", "x")).await;
    wait_terminal(&mut c, &done.id).await;
    let e = c.cancel(cancel(&done.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .cancel(cancel(&uuid::Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn cancel_running_job_stops_it_and_frees_the_worker() {
    let d = start("[queue]\nworkers = 1\n").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "60000")).await;
    wait_for(&mut c, &job.id, |s| s == JobState::Running).await;
    let j = c
        .cancel(proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(state(&j), JobState::Cancelled);
    // The only worker is free again.
    let next = submit(&mut c, req("echo", "after")).await;
    assert_eq!(
        state(&wait_terminal(&mut c, &next.id).await),
        JobState::Succeeded
    );
    // The cancelled attempt's outcome never overwrote the cancel.
    assert_eq!(state(&status(&mut c, &job.id).await), JobState::Cancelled);
}

#[tokio::test]
async fn higher_priority_runs_first_then_fifo() {
    let d = start("").await;
    let mut c = d.client().await;
    // `single` runs one job at a time: block it, then queue behind it.
    let blocker = submit(&mut c, req("single", "300")).await;
    wait_for(&mut c, &blocker.id, |s| s == JobState::Running).await;
    let mut ids = Vec::new();
    for (name, prio) in [
        ("low", 0),
        ("high", 10),
        ("mid", 5),
        ("high2", 10),
        ("low2", 0),
    ] {
        let mut r = req("single", "1");
        r.priority = prio;
        r.labels.insert("name".into(), name.into());
        ids.push(submit(&mut c, r).await.id);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_terminal(&mut c, id).await);
    }
    done.sort_by_key(|j| micros(&j.started_at));
    let order: Vec<&str> = done.iter().map(|j| j.labels["name"].as_str()).collect();
    assert_eq!(order, ["high", "high2", "mid", "low", "low2"]);
}

#[tokio::test]
async fn run_at_delays_the_start() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("echo", "x");
    let at = ts_in(Duration::from_millis(400));
    r.run_at = Some(at);
    let job = submit(&mut c, r).await;
    assert!(job.next_attempt_at.is_some());
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert!(micros(&done.started_at) >= micros(&Some(at)));
}

#[tokio::test]
async fn idempotent_resubmit_and_conflict() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("echo", "once");
    r.idempotency_key = "order-42".into();
    let first = c.submit(r.clone()).await.unwrap().into_inner();
    assert!(!first.deduplicated);
    let again = c.submit(r.clone()).await.unwrap().into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().id, first.job.as_ref().unwrap().id);
    r.payload = b"different".to_vec();
    let e = c.submit(r).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let info = e.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.metadata["job_id"], first.job.unwrap().id);
}

/// Idempotency compares what a request means, not how it is spelled: a
/// field left to the kind's default equals that default given explicitly.
#[tokio::test]
async fn defaulted_and_explicit_kind_defaults_are_the_same_request() {
    // `fail` declares max_attempts = 3; kinds time out after 60 s by default.
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("fail", "x");
    r.idempotency_key = "defaults".into();
    r.run_at = Some(ts_in(Duration::from_secs(3600)));
    let first = c.submit(r.clone()).await.unwrap().into_inner();
    assert!(!first.deduplicated);
    let first_id = first.job.unwrap().id;
    let explicit = [
        (3, None),
        (0, Some(Duration::from_secs(60))),
        (3, Some(Duration::from_secs(60))),
    ];
    for (max_attempts, timeout) in explicit {
        let mut e = r.clone();
        e.max_attempts = max_attempts;
        e.timeout = timeout.map(|t| prost_types::Duration::try_from(t).unwrap());
        let again = c
            .submit(e)
            .await
            .unwrap_or_else(|e| panic!("max_attempts {max_attempts}, timeout {timeout:?}: {e}"))
            .into_inner();
        assert!(again.deduplicated);
        assert_eq!(again.job.unwrap().id, first_id);
    }
    // A value other than the default is still a different request.
    let mut other = r.clone();
    other.max_attempts = 4;
    let e = c.submit(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let mut other = r;
    other.timeout = Some(prost_types::Duration {
        seconds: 61,
        nanos: 0,
    });
    let e = c.submit(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn backlog_bound_answers_resource_exhausted_with_retry_info() {
    let d = start("[queue]\nmax_backlog = 2\n").await;
    let mut c = d.client().await;
    let later = || {
        let mut r = req("echo", "x");
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        r
    };
    submit(&mut c, later()).await;
    submit(&mut c, later()).await;
    let e = c.submit(later()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.get_details_retry_info().is_some());
    // A batch: each entry answered on its own.
    let out = c
        .submit_batch(proto::SubmitBatchRequest {
            requests: vec![later()],
        })
        .await
        .unwrap()
        .into_inner();
    match &out.results[0].result {
        Some(proto::submit_result::Result::Error(s)) => {
            assert_eq!(s.code, Code::ResourceExhausted as i32)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_sees_every_transition_in_order() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("fail", "until:2");
    // Delayed so the watch starts while the job is still QUEUED.
    r.run_at = Some(ts_in(Duration::from_millis(300)));
    let job = submit(&mut c, r).await;
    let events = watch_all(&mut c, &job.id).await.unwrap();
    let states: Vec<JobState> = events
        .iter()
        .map(|e| state(e.job.as_ref().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Running,
            JobState::RetryWait,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<u64>>());
    // Watching a finished job: the snapshot alone, then OK.
    let again = watch_all(&mut c, &job.id).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].sequence, 6);
}

/// A reconnect with `after_sequence` gets only what came after it: the
/// current snapshot when it is newer, else nothing until the next change,
/// and a finished job already seen ends the stream at once.
#[tokio::test]
async fn watch_resumes_after_the_sequence_it_was_given() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "60000")).await;
    let running = wait_for(&mut c, &job.id, |s| s == JobState::Running).await;
    let seq = {
        let mut s = c
            .watch_status(proto::WatchStatusRequest {
                id: job.id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let first = s.message().await.unwrap().unwrap();
        assert_eq!(state(first.job.as_ref().unwrap()), state(&running));
        first.sequence
    };
    let watch = |after: u64| proto::WatchStatusRequest {
        id: job.id.clone(),
        after_sequence: after,
    };
    // Behind the job: the (newer) snapshot comes first.
    let mut behind = c.watch_status(watch(seq - 1)).await.unwrap().into_inner();
    let snap = behind.message().await.unwrap().unwrap();
    assert_eq!(snap.sequence, seq);
    // Caught up (or claiming to be ahead): nothing until the next change.
    let mut caught_up = c.watch_status(watch(seq)).await.unwrap().into_inner();
    let mut ahead = c.watch_status(watch(seq + 100)).await.unwrap().into_inner();
    for s in [&mut caught_up, &mut ahead] {
        let quiet = tokio::time::timeout(Duration::from_millis(300), s.message()).await;
        assert!(quiet.is_err(), "sent again what the client has: {quiet:?}");
    }
    c.cancel(proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap();
    for s in [&mut behind, &mut caught_up, &mut ahead] {
        let mut got = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("stream ends after the terminal state")
            .unwrap()
        {
            got.push((e.sequence, state(e.job.as_ref().unwrap())));
        }
        assert_eq!(got, [(seq + 1, JobState::Cancelled)]);
    }
    // A finished job the client saw finish: the stream ends OK, empty.
    for after in [seq + 1, seq + 5] {
        let mut done = c.watch_status(watch(after)).await.unwrap().into_inner();
        let end = tokio::time::timeout(Duration::from_secs(5), done.message())
            .await
            .expect("ends at once");
        assert!(matches!(end, Ok(None)), "after {after}: {end:?}");
    }
    // Before the end: the terminal snapshot alone.
    let mut late = c.watch_status(watch(seq)).await.unwrap().into_inner();
    let last = late.message().await.unwrap().unwrap();
    assert_eq!(last.sequence, seq + 1);
    assert!(late.message().await.unwrap().is_none());
}

#[tokio::test]
async fn watch_of_unknown_or_malformed_id() {
    let d = start("").await;
    let mut c = d.client().await;
    let e = watch_all(&mut c, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = watch_all(&mut c, "not-a-uuid").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_thousand_watchers_on_one_job_all_see_the_end() {
    let d = start("").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "1500")).await;
    // A few connections, many streams each, as real clients would.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(d.client().await);
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut cl = clients[i % 4].clone();
        streams.push(
            cl.watch_status(proto::WatchStatusRequest {
                id: job.id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner(),
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in streams {
        tasks.spawn(async move {
            let mut last = None;
            while let Some(e) = s.message().await.unwrap() {
                last = Some(e);
            }
            state(last.unwrap().job.as_ref().unwrap())
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), JobState::Succeeded);
        n += 1;
    }
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn slow_watcher_does_not_stall_workers_and_gets_the_terminal_state() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("fail", "until:12");
    r.max_attempts = 12;
    r.run_at = Some(ts_in(Duration::from_millis(200)));
    let job = submit(&mut c, r).await;
    // Open the stream and read nothing while the job goes through 30+
    // changes (more than a watcher's buffer).
    let mut s = c
        .watch_status(proto::WatchStatusRequest {
            id: job.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    let mut events = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        events.push(e);
    }
    let last = events.last().unwrap();
    assert_eq!(state(last.job.as_ref().unwrap()), JobState::Succeeded);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // (Coalescing itself is tested in `events`: here HTTP/2 flow control
    // may buffer all of these small events.)
}

#[tokio::test]
async fn watcher_bound_answers_resource_exhausted() {
    let d = start("[queue]\nmax_watchers = 2\n").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "60000")).await;
    let w = |id: &str| proto::WatchStatusRequest {
        id: id.into(),
        after_sequence: 0,
    };
    let s1 = c.watch_status(w(&job.id)).await.unwrap();
    let _s2 = c.watch_status(w(&job.id)).await.unwrap();
    let e = c.watch_status(w(&job.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Closing one frees its place.
    drop(s1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match c.watch_status(w(&job.id)).await {
            Ok(_) => break,
            Err(e)
                if e.code() == Code::ResourceExhausted
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn handler_panic_fails_the_attempt_and_the_pool_keeps_its_size() {
    let d = start("[queue]\nworkers = 2\n").await;
    let mut c = d.client().await;
    let mut panics = Vec::new();
    for _ in 0..4 {
        let mut r = req("fail", "panic");
        r.max_attempts = 1;
        panics.push(submit(&mut c, r).await.id);
    }
    for id in &panics {
        let j = wait_terminal(&mut c, id).await;
        assert_eq!(state(&j), JobState::Failed);
        assert!(j.last_error.contains("panicked"), "{}", j.last_error);
    }
    let mut oks = Vec::new();
    for i in 0..4 {
        oks.push(submit(&mut c, req("sleep", "100")).await.id);
        let _ = i;
    }
    let started = tokio::time::Instant::now();
    for id in &oks {
        assert_eq!(state(&wait_terminal(&mut c, id).await), JobState::Succeeded);
    }
    // Two workers, four 100 ms jobs: about 200 ms, not 400.
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Submits `r` and returns the status with its BadRequest field names.
async fn refused(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    r: proto::SubmitRequest,
) -> (Code, Vec<String>) {
    let e = c.submit(r).await.expect_err("must be refused");
    let fields = e
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    (e.code(), fields)
}

#[tokio::test]
#[allow(clippy::vec_init_then_push)] // one case per statement reads as a table
async fn every_bad_submit_is_invalid_argument_naming_the_field() {
    let d = start("[queue]\nmax_payload_bytes = 1024\n").await;
    let mut c = d.client().await;
    let base = || req("echo", "x");
    let mut cases: Vec<(&str, proto::SubmitRequest)> = Vec::new();
    cases.push((
        "kind",
        proto::SubmitRequest {
            kind: "".into(),
            ..base()
        },
    ));
    cases.push((
        "kind",
        proto::SubmitRequest {
            kind: "Bad Kind!".into(),
            ..base()
        },
    ));
    cases.push((
        "kind",
        proto::SubmitRequest {
            kind: "a".repeat(65),
            ..base()
        },
    ));
    cases.push((
        "kind",
        proto::SubmitRequest {
            kind: "nope".into(),
            ..base()
        },
    ));
    cases.push((
        "payload",
        proto::SubmitRequest {
            payload: vec![0; 1025],
            ..base()
        },
    ));
    cases.push((
        "idempotency_key",
        proto::SubmitRequest {
            idempotency_key: "k".repeat(257),
            ..base()
        },
    ));
    cases.push((
        "idempotency_key",
        proto::SubmitRequest {
            idempotency_key: "nul\0inside".into(),
            ..base()
        },
    ));
    cases.push((
        "max_attempts",
        proto::SubmitRequest {
            max_attempts: 101,
            ..base()
        },
    ));
    cases.push((
        "timeout",
        proto::SubmitRequest {
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..base()
        },
    ));
    cases.push((
        "timeout",
        proto::SubmitRequest {
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..base()
        },
    ));
    cases.push((
        "timeout",
        proto::SubmitRequest {
            timeout: Some(prost_types::Duration {
                seconds: 25 * 3600,
                nanos: 0,
            }),
            ..base()
        },
    ));
    cases.push((
        "run_at",
        proto::SubmitRequest {
            run_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -5,
            }),
            ..base()
        },
    ));
    cases.push((
        "run_at",
        proto::SubmitRequest {
            run_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..base()
        },
    ));
    cases.push((
        "run_at",
        proto::SubmitRequest {
            run_at: Some(ts_in(Duration::from_secs(400 * 24 * 3600))),
            ..base()
        },
    ));
    let mut many = base();
    for i in 0..33 {
        many.labels.insert(format!("k{i}"), "v".into());
    }
    cases.push(("labels", many));
    let mut long_value = base();
    long_value.labels.insert("k".into(), "v".repeat(257));
    cases.push(("labels[\"k\"]", long_value));
    for (field, r) in cases {
        let (code, fields) = refused(&mut c, r).await;
        assert_eq!(code, Code::InvalidArgument, "{field}");
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    }
    // At the bounds exactly: accepted.
    let mut ok = base();
    ok.payload = vec![b'a'; 1024];
    ok.idempotency_key = "k".repeat(256);
    ok.max_attempts = 100;
    ok.timeout = Some(prost_types::Duration {
        seconds: 24 * 3600,
        nanos: 0,
    });
    submit(&mut c, ok).await;
    // Nothing refused was stored.
    let all = c
        .list_jobs(proto::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 1);
}

#[tokio::test]
async fn bad_ids_page_tokens_and_filters() {
    let d = start("").await;
    let mut c = d.client().await;
    let e = c
        .get_status(proto::GetStatusRequest { id: "".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .get_status(proto::GetStatusRequest { id: "123".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .get_status(proto::GetStatusRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for bad in [
        proto::ListJobsRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        },
        proto::ListJobsRequest {
            page_size: 1001,
            ..Default::default()
        },
        proto::ListJobsRequest {
            state: 99,
            ..Default::default()
        },
        proto::ListJobsRequest {
            kind: "Not A Kind".into(),
            ..Default::default()
        },
    ] {
        let e = c.list_jobs(bad.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }
}

#[tokio::test]
async fn list_pages_through_every_job_once_and_filters() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut want = Vec::new();
    for i in 0..25 {
        let mut r = req(if i % 2 == 0 { "echo" } else { "sleep" }, "1");
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        want.push(submit(&mut c, r).await.id);
    }
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_jobs(proto::ListJobsRequest {
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        got.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(got, want, "creation order, each once");
    let echo = c
        .list_jobs(proto::ListJobsRequest {
            kind: "echo".into(),
            state: JobState::Queued as i32,
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.jobs.len(), 13);
}

#[tokio::test]
async fn submit_batch_answers_each_entry() {
    let d = start("[queue]\nmax_batch = 5\n").await;
    let mut c = d.client().await;
    let mut dup = req("echo", "d");
    dup.idempotency_key = "same".into();
    let requests = vec![
        req("echo", "a"),
        req("nope", "b"),
        dup.clone(),
        dup,
        req("echo", "c"),
    ];
    let out = c
        .submit_batch(proto::SubmitBatchRequest { requests })
        .await
        .unwrap()
        .into_inner();
    use proto::submit_result::Result as R;
    let r = &out.results;
    assert_eq!(r.len(), 5);
    assert!(matches!(&r[0].result, Some(R::Accepted(a)) if !a.deduplicated));
    match &r[1].result {
        Some(R::Error(s)) => {
            assert_eq!(s.code, Code::InvalidArgument as i32);
            assert!(s.message.contains("requests[1].kind"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    let (Some(R::Accepted(a)), Some(R::Accepted(b))) = (&r[2].result, &r[3].result) else {
        panic!("{r:?}")
    };
    assert!(!a.deduplicated && b.deduplicated);
    assert_eq!(a.job.as_ref().unwrap().id, b.job.as_ref().unwrap().id);
    for res in r {
        if let Some(R::Accepted(a)) = &res.result {
            wait_terminal(&mut c, &a.job.as_ref().unwrap().id).await;
        }
    }
    let e = c
        .submit_batch(proto::SubmitBatchRequest {
            requests: vec![req("echo", "x"); 6],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn health_serves_both_names_and_flips_before_submit_is_refused() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let d = start("[drain]\ngrace = \"800ms\"\ntimeout = \"1s\"\n").await;
    let mut c = d.client().await;
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    let check = |s: &str| HealthCheckRequest { service: s.into() };
    for name in ["", "jobd.v1.JobService"] {
        let r = h.check(check(name)).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{name}");
    }
    // A job that outlives the drain's timeout keeps the server up after the
    // grace, so the refusals below are seen before the connection closes
    // (with nothing running the drain can end between two polls).
    let long = submit(&mut c, req("sleep", "5000")).await;
    wait_for(&mut c, &long.id, |s| s == JobState::Running).await;
    d.shutdown.drain.cancel();
    // During the grace: NOT_SERVING, but submits still work.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.check(check("")).await.unwrap().into_inner().status != ServingStatus::NotServing as i32
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.check(check("jobd.v1.JobService"))
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::NotServing as i32
    );
    submit(&mut c, req("echo", "during grace")).await;
    // After the grace: UNAVAILABLE.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match c.submit(req("echo", "late")).await {
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                break;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(20), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_finishes_short_jobs_and_requeues_long_ones_without_using_an_attempt() {
    let d =
        start("store = \"sqlite:{dir}/jobd.db\"\n[drain]\ngrace = \"50ms\"\ntimeout = \"700ms\"\n")
            .await;
    let path = format!("{}/jobd.db", d.dir.path().display());
    let mut c = d.client().await;
    let short = submit(&mut c, req("sleep", "300")).await;
    let long = submit(&mut c, req("sleep", "60000")).await;
    wait_for(&mut c, &short.id, |s| s != JobState::Queued).await;
    wait_for(&mut c, &long.id, |s| s == JobState::Running).await;
    // A watcher is ended by the drain, not left hanging.
    let mut w = c
        .watch_status(proto::WatchStatusRequest {
            id: long.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let dir = d.dir.path().to_path_buf();
    let started = tokio::time::Instant::now();
    d.shutdown.drain.cancel();
    let ended = loop {
        match w.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(e) => break Some(e.code()),
        }
    };
    assert_eq!(ended, Some(Code::Unavailable));
    tokio::time::timeout(Duration::from_secs(20), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    let store = jobd::store::open(&format!("sqlite:{path}")).await.unwrap();
    let get = |id: &str| {
        let store = store.clone();
        let id = uuid::Uuid::parse_str(id).unwrap();
        async move { store.get(id).await.unwrap().unwrap() }
    };
    let s = get(&short.id).await;
    assert_eq!(s.state, jobd::job::JobState::Succeeded);
    let l = get(&long.id).await;
    assert_eq!(l.state, jobd::job::JobState::Queued);
    assert_eq!(l.attempt, 0, "a drained attempt is not counted");
    assert!(l.last_error.contains("drain"));
    store.close().await.unwrap();
    drop(dir);
}

#[tokio::test]
async fn get_status_previews_the_first_4_kib_of_the_payload() {
    let d = start("").await;
    let mut c = d.client().await;
    let big: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for payload in ["small", big.as_str(), ""] {
        let j = submit(&mut c, req("echo", payload)).await;
        let r = c
            .get_status(proto::GetStatusRequest { id: j.id.clone() })
            .await
            .unwrap()
            .into_inner();
        let want = &payload.as_bytes()[..payload.len().min(4096)];
        assert_eq!(
            r.payload_preview,
            want,
            "payload of {} bytes",
            payload.len()
        );
        assert_eq!(r.job.unwrap().payload_size, payload.len() as u64);
    }
}
