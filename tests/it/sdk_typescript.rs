//! The TypeScript SDK (`sdks/typescript`) against this build of the
//! daemon: installs its npm dependencies when `node_modules` is missing
//! (`npm ci`, from the committed package-lock.json), builds it, and runs its
//! `node --test` suite (every scenario of `tests/sdk/conformance.txt`, each
//! against a real `jobd serve` the suite starts from `JOBD_BIN`). Under `CI`
//! a missing node or npm fails the test; elsewhere it is skipped loudly.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// `npm ci` (a cold cache downloads a few MB) plus the suite (~15 s here).
const BOUND: Duration = Duration::from_secs(600);

/// Runs `npm args` in `dir`; panics with its output unless it succeeds.
async fn npm(dir: &Path, args: &[&str]) -> String {
    let run = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("JOBD_BIN", env!("CARGO_BIN_EXE_jobd"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("npm {args:?} did not finish within {BOUND:?}"))
        .expect("npm starts");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "npm {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Whether `program --version` runs; under CI, fails when it does not.
fn available(program: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is missing in CI: install Node.js 20+ and npm"
        );
        eprintln!("SKIPPED: {program} not available here (install Node.js 20+ and npm)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_passes_its_conformance_suite() {
    if !available("node") || !available("npm") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdks/typescript");
    if !dir.join("node_modules").is_dir() {
        npm(&dir, &["ci", "--no-audit", "--no-fund"]).await;
    }
    // `node --test` exits non-zero when a test fails (or, under CI, lacks a tool).
    let out = npm(&dir, &["test"]).await;
    println!("{out}");
}
