//! Each `jobd bench` scenario runs for about a second against a real daemon,
//! so the tool keeps working. No figures are asserted here: speed is
//! measured by `scripts/bench.sh`, not by tests.

use std::process::Command;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs() {
    let d = start("store = \"sqlite:{dir}/jobd.db\"\n").await;
    let addr = d.url();
    for (scenario, rows) in [
        ("baseline", 1),
        ("submit", 2),
        ("batch", 1),
        ("drain", 1),
        ("e2e", 2),
        ("watch", 1),
    ] {
        let mut cmd = Command::new(bin());
        cmd.args([
            "bench",
            scenario,
            "--addr",
            &addr,
            "--json",
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--batch",
            "50",
            "--jobs",
            "500",
            "--rate",
            "50",
            "--watchers",
            "50",
            "--watch-ms",
            "500",
        ]);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = v.as_array().unwrap();
        assert_eq!(got.len(), rows, "{scenario}: {v}");
        assert!(
            got.iter().all(|r| r["rate"].as_f64().unwrap() > 0.0),
            "{scenario}: {v}"
        );
    }
    d.stop().await;
}

/// `jobd bench drain --remote-worker N` serves a remote kind from the bench
/// process itself: the remote-worker throughput figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drain_through_a_remote_worker_runs() {
    let d = start_with(
        "store = \"sqlite:{dir}/jobd.db\"\n[queue]\nworkers = 64\n",
        "[kinds.r]\nhandler = \"remote\"\n",
    )
    .await;
    let addr = d.url();
    let mut cmd = Command::new(bin());
    cmd.args([
        "bench",
        "drain",
        "--addr",
        &addr,
        "--json",
        "--jobs",
        "300",
        "--kind",
        "r",
        "--remote-worker",
        "64",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["rate"].as_f64().unwrap() > 0.0, "{v}");
    d.stop().await;
}

/// `jobd bench progress`: burn-down alone, then beside remote jobs held
/// running that report progress; two rows, the second with its ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_progress_runs() {
    let d = start_with(
        "store = \"sqlite:{dir}/jobd.db\"\n[queue]\nworkers = 64\n",
        "[kinds.echo]\nhandler = \"echo\"\n[kinds.hold]\nhandler = \"remote\"\ntimeout = \"5m\"\n",
    )
    .await;
    let addr = d.url();
    let mut cmd = Command::new(bin());
    cmd.args([
        "bench",
        "progress",
        "--addr",
        &addr,
        "--json",
        "--jobs",
        "300",
        "--progress-jobs",
        "20",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert_eq!(rows[1]["scenario"], "drain+progress", "{v}");
    assert!(rows[1]["ratio_to_baseline"].as_f64().unwrap() > 0.0, "{v}");
    let mut c = d.client().await;
    let held = c
        .list_jobs(jobd::proto::ListJobsRequest {
            kind: "hold".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(held.len(), 20);
    d.stop().await;
}
