//! JobService.WatchJobs (and `GET /v1/events`): every change of every job,
//! filtered by kind and state, resumable within a bounded window; a
//! position outside it is OUT_OF_RANGE, never a silent gap.

use std::time::Duration;

use jobd::proto::{self, JobState};
use tonic::Code;

use crate::helpers::*;

async fn next(
    s: &mut tonic::Streaming<proto::WatchJobsResponse>,
) -> Result<Option<proto::WatchJobsResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("watch stalled")
}

async fn watch(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    kind: &str,
    state: JobState,
    after: u64,
) -> Result<tonic::Streaming<proto::WatchJobsResponse>, tonic::Status> {
    c.watch_jobs(proto::WatchJobsRequest {
        kind: kind.into(),
        state: state as i32,
        after,
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn every_change_in_order_filtered_and_resumable() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut all = watch(&mut c, "", JobState::Unspecified, 0).await.unwrap();
    let mut echo_done = watch(&mut c, "echo", JobState::Succeeded, 0).await.unwrap();
    let a = submit(&mut c, req("echo", "a")).await;
    let f = submit(&mut c, req("fail", "permanent")).await;
    wait_terminal(&mut c, &a.id).await;
    wait_terminal(&mut c, &f.id).await;

    // Everything: each job's QUEUED, RUNNING, then its end, positions rising.
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < 6 {
        let e = next(&mut all).await.unwrap().unwrap();
        assert!(e.position > last, "positions rise");
        last = e.position;
        let j = e.job.unwrap();
        let s = state(&j);
        seen.push((j.id, s, e.position));
    }
    for id in [&a.id, &f.id] {
        let states: Vec<JobState> = seen
            .iter()
            .filter(|(i, _, _)| i == id)
            .map(|(_, s, _)| *s)
            .collect();
        assert_eq!(states[..2], [JobState::Queued, JobState::Running], "{id}");
        assert!(is_terminal(states[2]), "{states:?}");
    }
    // Filtered: only echo jobs that succeeded.
    let e = next(&mut echo_done).await.unwrap().unwrap();
    assert_eq!(e.job.as_ref().unwrap().id, a.id);
    assert_eq!(state(e.job.as_ref().unwrap()), JobState::Succeeded);

    // Resume after the first change: the rest, from the next position.
    let first = seen[0].2;
    let mut resumed = watch(&mut c, "", JobState::Unspecified, first)
        .await
        .unwrap();
    for (id, s, position) in &seen[1..] {
        let e = next(&mut resumed).await.unwrap().unwrap();
        assert_eq!(e.position, *position);
        assert_eq!(
            (&e.job.as_ref().unwrap().id, state(e.job.as_ref().unwrap())),
            (id, *s)
        );
    }

    // Positions never given out are refused, not silently accepted.
    for after in [1, last + 1000] {
        let e = watch(&mut c, "", JobState::Unspecified, after)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{after}: {e}");
    }
    let e = c
        .watch_jobs(proto::WatchJobsRequest {
            state: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    drop((all, echo_done, resumed));
    d.stop().await;
}

#[tokio::test]
async fn a_position_the_window_dropped_is_out_of_range() {
    let d = start("[queue]\nmax_backlog = 20000\n").await;
    let mut c = d.client().await;
    let mut probe = watch(&mut c, "", JobState::Unspecified, 0).await.unwrap();
    let j = submit(&mut c, req("echo", "first")).await;
    let start_pos = next(&mut probe).await.unwrap().unwrap().position;
    wait_terminal(&mut c, &j.id).await;
    drop(probe);
    // More than the window's 10,000 changes: 3 per job.
    for _ in 0..4 {
        let requests = vec![req("echo", "x"); 1000];
        c.submit_batch(proto::SubmitBatchRequest { requests })
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = c
            .list_jobs(proto::ListJobsRequest {
                state: JobState::Succeeded as i32,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let listed = done.jobs.len();
        if listed == 1000 && !done.next_page_token.is_empty() {
            // Check the last ones are done too.
            let any = |state: JobState| {
                let mut c = c.clone();
                async move {
                    c.list_jobs(proto::ListJobsRequest {
                        state: state as i32,
                        page_size: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .jobs
                }
            };
            let queued = any(JobState::Queued).await;
            let running = any(JobState::Running).await;
            if queued.is_empty() && running.is_empty() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4,000 echo jobs ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = watch(&mut c, "", JobState::Unspecified, start_pos)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e}");
    assert!(e.message().contains("after = 0"), "{e}");
    // From now on still works.
    let mut now = watch(&mut c, "", JobState::Unspecified, 0).await.unwrap();
    let j = submit(&mut c, req("echo", "after")).await;
    assert_eq!(next(&mut now).await.unwrap().unwrap().job.unwrap().id, j.id);
    drop(now);
    d.stop().await;
}

/// `GET /v1/events` is WatchJobs as server-sent events: `id:` is the
/// position, `Last-Event-ID` resumes, a position outside the window is a
/// 400 (OUT_OF_RANGE) before the stream starts.
#[tokio::test]
async fn all_jobs_as_server_sent_events() {
    let d = start("").await;
    let mut c = d.client().await;
    let http = crate::helpers::http_client();
    let url = format!("{}/v1/events?kind=echo&state=succeeded", d.url());
    let mut res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let a = submit(&mut c, req("echo", "a")).await;
    let b = submit(&mut c, req("echo", "b")).await;
    submit(&mut c, req("fail", "permanent")).await;
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(res);
    let events: Vec<(u64, serde_json::Value)> = text
        .split("\n\n")
        .filter(|b| b.contains("data: "))
        .map(|b| {
            let id = b
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap()
                .parse()
                .unwrap();
            let data = b.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (id, serde_json::from_str(data).unwrap())
        })
        .collect();
    let ids: Vec<&str> = events
        .iter()
        .map(|(_, v)| v["job"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()], "{text}");
    for (position, v) in &events {
        assert_eq!(v["position"], position.to_string());
        assert_eq!(v["job"]["state"], "JOB_STATE_SUCCEEDED");
    }

    // Resume after the first: the second comes first.
    let mut res = http
        .get(&url)
        .header("last-event-id", events[0].0.to_string())
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = std::str::from_utf8(&chunk).unwrap();
    assert!(first.contains(&format!("id: {}\n", events[1].0)), "{first}");
    drop(res);

    // Too old: a JSON error, not a stream with a gap.
    let r = http
        .get(&url)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["code"], 11, "{v}");
    d.stop().await;
}

#[tokio::test]
async fn drain_ends_watch_jobs_streams_with_unavailable() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut s = watch(&mut c, "", JobState::Unspecified, 0).await.unwrap();
    d.shutdown.drain.cancel();
    let e = loop {
        match next(&mut s).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended OK; expected UNAVAILABLE"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    tokio::time::timeout(Duration::from_secs(30), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
