//! `examples/python/client.py` against a real daemon, with stubs generated
//! exactly as the README says: SubmitBatch (one entry refused), WatchStatus
//! of a `sleep` job showing RUNNING before SUCCEEDED, and the
//! google.rpc.BadRequest of an unknown kind decoded with grpcio-status.
//! `.ci/run` installs grpcio-tools, grpcio-status and
//! googleapis-common-protos; under `CI` a missing one fails the test.

use std::process::Output;
use std::time::Duration;

use jobd::proto;
use tokio::process::Command;

use crate::helpers::*;
use crate::interop::available;
use crate::python_worker::{generate_stubs, repo};

async fn run_client(stubs: &std::path::Path, addr: &str) -> Output {
    let run = Command::new("python3")
        .arg(repo("examples/python/client.py"))
        .args(["--addr", addr, "--sleep-ms", "700"])
        .env("PYTHONPATH", stubs)
        .env_remove("JOBD_TOKEN")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("client.py finishes")
        .expect("python3 runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_example_works_as_pasted() {
    if !available(
        "python3",
        &[
            "-c",
            "import grpc_tools, grpc_status, google.rpc.error_details_pb2",
        ],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("gen");
    std::fs::create_dir(&stubs).unwrap();
    generate_stubs(&stubs).await;
    let d = start("").await;

    let o = run_client(&stubs, &d.addr.to_string()).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let lines: Vec<&str> = out.lines().collect();
    let accepted: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("batch: accepted "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(accepted.len(), 3, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("batch: refused INVALID_ARGUMENT") && l.contains("max_attempts")),
        "{out}"
    );
    let watched: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("watch: "))
        .filter(|l| !l.starts_with("submitted"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(watched.last(), Some(&"SUCCEEDED"), "{out}");
    let running = watched.iter().position(|s| *s == "RUNNING");
    assert!(
        running.is_some_and(|i| i + 1 < watched.len()),
        "RUNNING before SUCCEEDED: {out}"
    );
    assert!(
        out.contains("error: field kind: unknown kind \"no-such-kind\""),
        "{out}"
    );
    assert!(out.ends_with("client: ok\n"), "{out}");

    // What it printed is what the daemon holds.
    let mut c = d.client().await;
    let page = c
        .list_jobs(proto::ListJobsRequest {
            labels: [("demo".to_string(), "client.py".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, accepted);
    d.stop().await;

    // A daemon that is down: the client fails, and says why.
    let o = run_client(&stubs, &format!("127.0.0.1:{}", crate::binary::free_port())).await;
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("UNAVAILABLE"),
        "{o:?}"
    );
}
