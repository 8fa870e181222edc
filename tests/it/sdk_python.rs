//! The Python SDK (`sdks/python`) against this build of the daemon: runs
//! its pytest suite (every scenario of `tests/sdk/conformance.txt`, each
//! against a real `jobd serve` the suite starts from `JOBD_BIN`, plus the
//! check that the committed generated code matches `proto/`) with the SDK
//! importable from the source tree. `.ci/run` installs what it needs
//! (pytest, grpcio, grpcio-tools, protobuf, googleapis-common-protos,
//! cryptography); under `CI` a missing one fails the test, elsewhere it is
//! skipped loudly. `JOBD_PYTHON` picks the interpreter (default `python3`,
//! e.g. a venv's).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The suite takes about 25 s on a quiet 2-core machine.
const BOUND: Duration = Duration::from_secs(600);

const MODULES: &str = "import pytest, grpc, grpc_tools, google.protobuf, google.rpc.status_pb2";

fn python() -> String {
    std::env::var("JOBD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether `python` has what the suite needs; under CI, fails when not.
fn available(python: &str) -> bool {
    let ok = std::process::Command::new(python)
        .args(["-c", MODULES])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{python} lacks pytest/grpcio in CI: .ci/run must install them \
             (pip install pytest grpcio grpcio-tools protobuf googleapis-common-protos cryptography)"
        );
        eprintln!(
            "SKIPPED: {python} lacks pytest or grpcio here \
             (pip install pytest grpcio grpcio-tools protobuf googleapis-common-protos cryptography)"
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_passes_its_conformance_suite() {
    let python = python();
    if !available(&python) {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let sdk = format!("{root}/sdks/python");
    let path = match std::env::var("PYTHONPATH") {
        Ok(p) if !p.is_empty() => format!("{sdk}:{p}"),
        _ => sdk,
    };
    let run = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "sdks/python/tests",
        ])
        .current_dir(root)
        .env("JOBD_BIN", env!("CARGO_BIN_EXE_jobd"))
        .env("PYTHONPATH", path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("pytest did not finish within {BOUND:?}"))
        .expect("python starts");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the Python SDK's pytest suite failed ({}):\n{text}",
        out.status
    );
    println!("{text}");
}
