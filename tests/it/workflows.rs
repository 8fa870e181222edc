//! Workflows (#32) over real gRPC: depends_on within a batch (`$N`) and on
//! existing jobs, the order a diamond runs in, an on-complete callback over
//! 1,000 chunks, the failure and cancel cascades, RetryJobs repairing a
//! pipeline, bad references, and GetJobGraph.

use jobd::proto::{self, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;

pub(crate) const KINDS: &str = r#"
[kinds.step]
handler = "echo"

[kinds.bad]
handler = "fail"
max_attempts = 1

[kinds.slow]
handler = "sleep"

[kinds.count]
handler = "command"
command = ["sh", "-c", "set -- $JOBD_PARENT_IDS; printf '%s ids, %s files' \"$#\" \"$(ls \"$JOBD_PARENTS_DIR\" | wc -l)\""]
"#;

pub(crate) const HEAD: &str = "[queue]\nmax_batch = 2000\nmax_parents = 1000\n";

pub(crate) fn dep(kind: &str, deps: &[&str], run: bool) -> proto::SubmitRequest {
    proto::SubmitRequest {
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        on_dependency_failure: if run {
            proto::DependencyFailure::Run
        } else {
            proto::DependencyFailure::Unspecified
        } as i32,
        ..req(kind, "p")
    }
}

/// Every entry's job, or the test fails naming the refused entry.
pub(crate) async fn batch(c: &mut JobClient, reqs: Vec<proto::SubmitRequest>) -> Vec<proto::Job> {
    let out = c
        .submit_batch(proto::SubmitBatchRequest { requests: reqs })
        .await
        .unwrap()
        .into_inner()
        .results;
    out.into_iter()
        .enumerate()
        .map(|(i, r)| match r.result {
            Some(proto::submit_result::Result::Accepted(a)) => a.job.unwrap(),
            other => panic!("entry {i}: {other:?}"),
        })
        .collect()
}

type JobClient = proto::job_service_client::JobServiceClient<tonic::transport::Channel>;

/// A diamond a -> (b, c) -> d submitted in one batch runs in order: each
/// job starts after its parents finished.
async fn diamond_runs_in_order_on(head: &str) {
    let d = start_with(&format!("{head}{HEAD}"), KINDS).await;
    let mut c = d.client().await;
    let jobs = batch(
        &mut c,
        vec![
            req("step", "a"),
            dep("step", &["$0"], false),
            dep("step", &["$0"], false),
            dep("step", &["$1", "$2"], false),
        ],
    )
    .await;
    assert_eq!(state(&jobs[3]), JobState::Waiting);
    assert_eq!(jobs[3].waiting_on, 2);
    assert_eq!(jobs[3].parent_ids, [jobs[1].id.clone(), jobs[2].id.clone()]);
    let done: Vec<proto::Job> = {
        let mut v = Vec::new();
        for j in &jobs {
            v.push(wait_terminal(&mut c, &j.id).await);
        }
        v
    };
    for j in &done {
        assert_eq!(state(j), JobState::Succeeded, "{}", j.last_error);
    }
    let (start, end) = (
        |j: &proto::Job| micros(&j.started_at),
        |j: &proto::Job| micros(&j.finished_at),
    );
    assert!(start(&done[1]) >= end(&done[0]) && start(&done[2]) >= end(&done[0]));
    assert!(start(&done[3]) >= end(&done[1]).max(end(&done[2])));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_in_order_on_memory() {
    diamond_runs_in_order_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_in_order_on_sqlite() {
    diamond_runs_in_order_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_in_order_on_postgres() {
    let Some(pg) = PgSchema::new("wf_diamond").await else {
        return;
    };
    diamond_runs_in_order_on(&pg.toml("")).await;
}

/// One SubmitBatch: 1,000 chunks and an on-complete callback (RUN) that
/// depends on all of them. It runs once, after the last chunk, and its
/// command receives the chunks' ids and results.
async fn batch_callback_on(head: &str) {
    let d = start_with(&format!("{head}{HEAD}"), KINDS).await;
    let mut c = d.client().await;
    let mut reqs: Vec<proto::SubmitRequest> = (0..1000)
        .map(|i| req("step", &format!("chunk {i}")))
        .collect();
    let all: Vec<String> = (0..1000).map(|i| format!("${i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    reqs.push(dep("count", &refs, true));
    let jobs = batch(&mut c, reqs).await;
    let cb = wait_terminal(&mut c, &jobs[1000].id).await;
    assert_eq!(state(&cb), JobState::Succeeded, "{}", cb.last_error);
    assert_eq!(cb.attempt, 1, "exactly once");
    assert_eq!(String::from_utf8_lossy(&cb.result), "1000 ids, 1000 files");
    let mut last_end = 0;
    for j in &jobs[..1000] {
        let j = status(&mut c, &j.id).await;
        last_end = last_end.max(micros(&j.finished_at));
    }
    assert!(micros(&cb.started_at) >= last_end, "after the last chunk");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_callback_runs_once_after_the_last_chunk_on_memory() {
    batch_callback_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_callback_runs_once_after_the_last_chunk_on_sqlite() {
    batch_callback_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_callback_runs_once_after_the_last_chunk_on_postgres() {
    let Some(pg) = PgSchema::new("wf_callback").await else {
        return;
    };
    batch_callback_on(&pg.toml("")).await;
}

/// A failing parent: CANCEL children are cancelled down the graph naming
/// it; a RUN callback runs anyway. Cancelling a parent cascades the same
/// way.
async fn failure_and_cancel_cascade(head: &str) {
    let d = start_with(&format!("{head}{HEAD}"), KINDS).await;
    let mut c = d.client().await;
    let jobs = batch(
        &mut c,
        vec![
            req("bad", "a"),
            dep("step", &["$0"], false),
            dep("step", &["$1"], false),
            dep("step", &["$0", "$2"], true),
        ],
    )
    .await;
    let ends: Vec<proto::Job> = {
        let mut v = Vec::new();
        for j in &jobs {
            v.push(wait_terminal(&mut c, &j.id).await);
        }
        v
    };
    assert_eq!(state(&ends[0]), JobState::Failed);
    for j in &ends[1..3] {
        assert_eq!(state(j), JobState::Cancelled);
        assert!(j.last_error.contains("dependency"), "{}", j.last_error);
    }
    assert_eq!(state(&ends[3]), JobState::Succeeded, "RUN runs anyway");
    // Cancel cascades: a slow parent cancelled takes its waiting child.
    let p = submit(&mut c, req("slow", "30000")).await;
    let child = submit(&mut c, dep("step", &[&p.id], false)).await;
    assert_eq!(state(&child), JobState::Waiting);
    c.cancel(proto::CancelRequest { id: p.id.clone() })
        .await
        .unwrap();
    let ch = wait_terminal(&mut c, &child.id).await;
    assert_eq!(state(&ch), JobState::Cancelled);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_and_cancel_cascade_on_memory() {
    failure_and_cancel_cascade("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_and_cancel_cascade_on_sqlite() {
    failure_and_cancel_cascade("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_and_cancel_cascade_on_postgres() {
    let Some(pg) = PgSchema::new("wf_cascade").await else {
        return;
    };
    failure_and_cancel_cascade(&pg.toml("")).await;
}

/// RetryJobs repairs a pipeline end to end: a step that failed (its first
/// attempt's command failed) is retried, then what it cancelled; the rest
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_repairs_a_failed_pipeline() {
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("mark");
    let kinds = format!(
        "{KINDS}\n[kinds.flaky]\nhandler = \"command\"\nmax_attempts = 1\n\
         command = [\"sh\", \"-c\", \"[ -e {m} ] || {{ touch {m}; exit 1; }}\"]\n",
        m = mark.display()
    );
    let d = start_with(
        &format!("store = \"sqlite:{{dir}}/jobd.db\"\n{HEAD}"),
        &kinds,
    )
    .await;
    let mut c = d.client().await;
    let mut admin = admin(&d.url()).await;
    let jobs = batch(
        &mut c,
        vec![
            req("step", "a"),
            dep("flaky", &["$0"], false),
            dep("step", &["$1"], false),
            dep("step", &["$2"], false),
        ],
    )
    .await;
    assert_eq!(
        state(&wait_terminal(&mut c, &jobs[3].id).await),
        JobState::Cancelled
    );
    assert_eq!(state(&status(&mut c, &jobs[1].id).await), JobState::Failed);
    let ids: Vec<String> = jobs[1..].iter().map(|j| j.id.clone()).collect();
    let r = admin
        .retry_jobs(proto::RetryJobsRequest {
            ids,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.retried, 3, "{r:?}");
    for j in &jobs {
        let j = wait_terminal(&mut c, &j.id).await;
        assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
    }
    d.stop().await;
}

/// Bad references are INVALID_ARGUMENT naming the entry and field: an
/// unknown id, `$N` not below the entry's index, `$N` in a unary Submit,
/// a repeat, and more parents than `queue.max_parents`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_are_refused() {
    let d = start_with("[queue]\nmax_parents = 2\n", KINDS).await;
    let mut c = d.client().await;
    let a = submit(&mut c, req("step", "")).await;
    let field = |s: &tonic::Status| {
        tonic_types::StatusExt::get_details_bad_request(s)
            .map(|b| b.field_violations[0].field.clone())
            .unwrap_or_default()
    };
    let ghost = uuid::Uuid::now_v7().to_string();
    let e = c.submit(dep("step", &[&ghost], false)).await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e).as_str()),
        (Code::InvalidArgument, "depends_on"),
        "{e}"
    );
    assert!(e.message().contains(&ghost), "{e}");
    let e = c.submit(dep("step", &["$0"], false)).await.unwrap_err();
    assert_eq!(field(&e), "depends_on[0]", "{e}");
    let e = c
        .submit(dep("step", &[&a.id, &a.id], false))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "depends_on[1]", "{e}");
    let e = c
        .submit(dep("step", &[&a.id, "$1", "$2"], false))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "depends_on", "{e}");
    assert!(e.message().contains("max_parents"), "{e}");
    let out = c
        .submit_batch(proto::SubmitBatchRequest {
            requests: vec![
                req("step", ""),
                dep("step", &["$1"], false),
                dep("nope", &[], false),
                dep("step", &["$2"], false),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let err = |i: usize| match &out[i].result {
        Some(proto::submit_result::Result::Error(s)) => s.message.clone(),
        other => panic!("entry {i}: {other:?}"),
    };
    assert!(err(1).contains("requests[1].depends_on[0]"), "{}", err(1));
    assert!(
        err(3).contains("entry 2 of this batch was refused"),
        "{}",
        err(3)
    );
    d.stop().await;
}

/// GetJobGraph: the job's parents and children with their edges, bounded
/// by depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_shows_ancestors_and_descendants() {
    let d = start_with(HEAD, KINDS).await;
    let mut c = d.client().await;
    let jobs = batch(
        &mut c,
        vec![
            req("slow", "30000"),
            dep("step", &["$0"], false),
            dep("step", &["$1"], false),
            dep("step", &["$2"], false),
        ],
    )
    .await;
    let g = c
        .get_job_graph(proto::GetJobGraphRequest {
            id: jobs[1].id.clone(),
            depth: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = g.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids[0], jobs[1].id);
    assert!(ids.contains(&jobs[0].id.as_str()) && ids.contains(&jobs[2].id.as_str()));
    assert!(!ids.contains(&jobs[3].id.as_str()), "depth 1");
    assert!(g.truncated);
    assert_eq!(g.edges.len(), 2);
    let e = c
        .get_job_graph(proto::GetJobGraphRequest {
            id: uuid::Uuid::now_v7().to_string(),
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.cancel(proto::CancelRequest {
        id: jobs[0].id.clone(),
    })
    .await
    .unwrap();
    d.stop().await;
}

/// Fan-in to a remote worker: `Assign.parents` carries each parent's id,
/// kind, state and result, in depends_on order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_receives_its_parents_results() {
    let kinds = format!("{KINDS}\n[kinds.r]\nhandler = \"remote\"\n");
    let d = start_with(HEAD, &kinds).await;
    let mut c = d.client().await;
    let mut w = crate::remote::raw(&d.url(), crate::remote::hello(&["r"], 4))
        .await
        .unwrap();
    let jobs = batch(
        &mut c,
        vec![
            req("step", "left"),
            req("step", "right"),
            dep("r", &["$1", "$0"], false),
        ],
    )
    .await;
    let a = w.assign().await;
    let got: Vec<(String, String, i32, Vec<u8>)> = a
        .parents
        .iter()
        .map(|p| (p.id.clone(), p.kind.clone(), p.state, p.result.clone()))
        .collect();
    let ok = JobState::Succeeded as i32;
    assert_eq!(
        got,
        [
            (jobs[1].id.clone(), "step".into(), ok, b"right".to_vec()),
            (jobs[0].id.clone(), "step".into(), ok, b"left".to_vec()),
        ]
    );
    assert!(a.parents.iter().all(|p| !p.result_omitted));
    drop(w);
    d.stop().await;
}
