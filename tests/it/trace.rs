//! W3C trace context end to end: a submitter's `traceparent`/`tracestate`
//! (gRPC metadata, or HTTP headers on the JSON door) is stored with the job
//! and reaches every attempt. Also checked in `handlers` (the `http` kind's
//! headers), `worker_protocol` (`Assign.headers`) and `store_contract` (each
//! store keeps it).

use jobd::proto::JobState;

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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
}
