//! `examples/python/worker.py` against a real daemon: stubs generated from
//! `proto/` with grpcio-tools, three worker processes serving a remote kind,
//! 1,000 jobs, each run exactly once. `.ci/run` installs grpcio-tools; under
//! `CI` a missing tool fails the test, elsewhere it skips loudly.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jobd::proto::{self, JobState};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::interop::available;

const WORKERS: usize = 3;
const JOBS: usize = 1000;
const MAX_IN_FLIGHT: usize = 32;
/// Every wait of this test ends by then.
const BOUND: Duration = Duration::from_secs(120);

const HEAD: &str = r#"
[queue]
workers = 128

[workers]
heartbeat_interval = "2s"
"#;

const KINDS_PY: &str = r#"
[kinds.py]
handler = "remote"
concurrency = 128
timeout = "60s"
"#;

pub(crate) fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// `python3 -m grpc_tools.protoc` on proto/ into `out`.
pub(crate) async fn generate_stubs(out: &Path) {
    let o = out.display();
    let run = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", &repo("proto")])
        .arg(format!("--python_out={o}"))
        .arg(format!("--grpc_python_out={o}"))
        .args(["jobd/v1/jobd.proto", "google/rpc/status.proto"])
        .output();
    let out = tokio::time::timeout(BOUND, run)
        .await
        .expect("protoc finishes")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Worker {
    child: Child,
    log: std::path::PathBuf,
    output: std::path::PathBuf,
}

impl Worker {
    /// Panics with the worker's output if it has exited.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let out = std::fs::read_to_string(&self.output).unwrap_or_default();
            panic!("python worker exited ({status}):\n{out}");
        }
    }
}

fn spawn_worker(d: &TestDaemon, dir: &Path, stubs: &Path, i: usize) -> Worker {
    let log = dir.join(format!("worker-{i}.log"));
    let output = dir.join(format!("worker-{i}.out"));
    let out = std::fs::File::create(&output).unwrap();
    let child = Command::new("python3")
        .arg("-u")
        .arg(repo("examples/python/worker.py"))
        .args([
            "--addr",
            &d.addr.to_string(),
            "--kind",
            "py",
            "--mode",
            "echo",
        ])
        .args(["--max-in-flight", &MAX_IN_FLIGHT.to_string()])
        .arg("--log")
        .arg(&log)
        .env("PYTHONPATH", stubs)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    Worker { child, log, output }
}

/// Every job of kind `py`, all pages.
async fn all_jobs(
    c: &mut jobd::proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    state: JobState,
) -> Vec<proto::Job> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_jobs(proto::ListJobsRequest {
                state: state as i32,
                kind: "py".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list_jobs")
            .into_inner();
        out.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workers_run_1000_jobs_exactly_once() {
    if !available("python3", &["-c", "import grpc_tools"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stubs = tmp.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    generate_stubs(&stubs).await;

    let d = start_with(HEAD, KINDS_PY).await;
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|i| spawn_worker(&d, tmp.path(), &stubs, i))
        .collect();

    // All three sessions open before anything is submitted.
    let deadline = Instant::now() + BOUND;
    while sample(&scrape(d.admin).await, "jobd_worker_sessions{kind=\"py\"}").unwrap_or(0.0)
        < WORKERS as f64
    {
        workers.iter_mut().for_each(Worker::check_alive);
        assert!(Instant::now() < deadline, "python workers did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1,000 jobs in one batch, each with its own payload.
    let mut c = d.client().await;
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let requests = (0..JOBS).map(|i| req("py", &format!("job-{i}"))).collect();
    let results = c
        .submit_batch(proto::SubmitBatchRequest { requests })
        .await
        .expect("submit_batch")
        .into_inner()
        .results;
    let mut payloads: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, r) in results.into_iter().enumerate() {
        match r.result {
            Some(proto::submit_result::Result::Accepted(a)) => {
                payloads.insert(a.job.unwrap().id, format!("job-{i}").into_bytes());
            }
            other => panic!("entry {i} refused: {other:?}"),
        }
    }
    assert_eq!(payloads.len(), JOBS);

    // Until every job SUCCEEDED (bounded; a worker that dies fails at once).
    loop {
        let done = all_jobs(&mut c, JobState::Succeeded).await.len();
        if done == JOBS {
            break;
        }
        let failed = all_jobs(&mut c, JobState::Failed).await;
        assert!(failed.is_empty(), "jobs failed: {:?}", failed[0]);
        workers.iter_mut().for_each(Worker::check_alive);
        assert!(
            t0.elapsed() < BOUND,
            "only {done} of {JOBS} jobs succeeded within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each finished once, on attempt 1, with its payload as the result.
    let jobs = all_jobs(&mut c, JobState::Unspecified).await;
    assert_eq!(jobs.len(), JOBS);
    let mut last_finished = started;
    for j in &jobs {
        assert_eq!(state(j), JobState::Succeeded, "{j:?}");
        assert_eq!(j.attempt, 1, "job {} ran more than once: {j:?}", j.id);
        assert_eq!(Some(&j.result), payloads.get(&j.id), "result of {}", j.id);
        let finished = std::time::SystemTime::try_from(j.finished_at.unwrap()).unwrap();
        last_finished = last_finished.max(finished);
    }
    let secs = last_finished.duration_since(started).unwrap().as_secs_f64();
    println!(
        "{JOBS} jobs with {WORKERS} python workers (max_in_flight {MAX_IN_FLIGHT}): \
         first submit to last SUCCEEDED {secs:.2} s, {:.0} jobs/s",
        JOBS as f64 / secs
    );

    // The workers' own logs: every job executed exactly once, on attempt 1.
    let mut seen: HashSet<String> = HashSet::new();
    for (i, w) in workers.iter().enumerate() {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        println!("worker {i} ran {} jobs", lines.len());
        assert!(!lines.is_empty(), "worker {i} ran no job");
        for line in lines {
            let (id, attempt) = line.split_once(' ').expect("`job_id attempt` lines");
            assert_eq!(attempt, "1", "{line}");
            assert!(payloads.contains_key(id), "unknown job {id}");
            assert!(seen.insert(id.to_string()), "job {id} executed twice");
        }
    }
    assert_eq!(seen.len(), JOBS, "executions logged");
    assert_eq!(
        sample(&scrape(d.admin).await, "jobd_worker_lost_total").unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        sample(&scrape(d.admin).await, "jobd_worker_stale_reports_total").unwrap_or(0.0),
        0.0
    );

    for w in &mut workers {
        w.check_alive();
        w.child.kill().await.unwrap();
    }
    d.stop().await;
}

const AUTH_HEAD: &str = r#"
[auth]
tokens = [
  { token = "worker-token-0123456789", role = "worker" },
  { token = "submit-token-0123456789", role = "submit" },
]
"#;

/// Runs worker.py with `args`; its whole output once it exits, or a panic
/// when it is still running after `within`.
async fn worker_exits(stubs: &Path, args: &[&str], within: Duration) -> std::process::Output {
    let run = Command::new("python3")
        .arg("-u")
        .arg(repo("examples/python/worker.py"))
        .args(args)
        .env("PYTHONPATH", stubs)
        .env_remove("JOBD_TOKEN")
        .env_remove("JOBD_ADDR")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("worker.py {args:?} still running after {within:?}"))
        .expect("python3 runs")
}

/// Starts worker.py with `args` and waits (bounded) until it prints that
/// it is connected; returns the child, still running.
async fn worker_connects(stubs: &Path, args: &[&str]) -> Child {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(repo("examples/python/worker.py"))
        .args(args)
        .env("PYTHONPATH", stubs)
        .env_remove("JOBD_TOKEN")
        .env_remove("JOBD_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let connected = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("worker: connected to ") {
                return line;
            }
            seen.push(line);
        }
        String::new()
    })
    .await;
    match connected {
        Ok(line) if !line.is_empty() => {
            assert!(line.contains("serving py"), "{line}");
            child
        }
        _ => {
            let _ = child.kill().await;
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "worker.py {args:?} never said it connected:\n{}\n{}",
                seen.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A token jobd refuses, or one whose role may not call WorkerService, is
/// not fixed by retrying: worker.py says why and exits 1 within seconds
/// (it used to reconnect forever). The worker token connects and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_exits_on_a_refused_token_and_says_when_connected() {
    if !available("python3", &["-c", "import grpc_tools"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stubs = tmp.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    generate_stubs(&stubs).await;
    let d = start_with(AUTH_HEAD, KINDS_PY).await;
    let addr = d.addr.to_string();

    for (token, code, advice) in [
        (
            "not-a-known-token-0123",
            "UNAUTHENTICATED",
            "a token of role worker",
        ),
        (
            "submit-token-0123456789",
            "PERMISSION_DENIED",
            "may not call WorkerService",
        ),
    ] {
        let t0 = Instant::now();
        let args = ["--addr", &addr, "--kind", "py", "--token", token];
        let out = worker_exits(&stubs, &args, Duration::from_secs(15)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{token}: {stderr}");
        assert!(stderr.contains(&format!("worker: {code}: ")), "{stderr}");
        assert!(stderr.contains(advice), "{stderr}");
        assert!(
            !stderr.contains("Traceback"),
            "a message, not a traceback: {stderr}"
        );
        println!("{code}: exit 1 after {:?}", t0.elapsed());
    }
    // No token at all is UNAUTHENTICATED too.
    let out = worker_exits(
        &stubs,
        &["--addr", &addr, "--kind", "py"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));

    let mut ok = worker_connects(
        &stubs,
        &[
            "--addr",
            &addr,
            "--kind",
            "py",
            "--token",
            "worker-token-0123456789",
        ],
    )
    .await;
    ok.kill().await.unwrap();
    d.stop().await;
}

/// `--tls-ca PATH`: the worker connects over TLS to a daemon whose
/// certificate that CA signed, and jobd sees its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_connects_over_tls_with_its_ca() {
    if !available("python3", &["-c", "import grpc_tools"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stubs = tmp.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    generate_stubs(&stubs).await;
    let (ca_pem, cert, key) = pki_with_names();
    let file = |name: &str, pem: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca = file("ca.pem", &ca_pem);
    let head = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        file("server.pem", &cert),
        file("server.key", &key)
    );
    let d = start_with(&head, KINDS_PY).await;
    let addr = format!("localhost:{}", d.addr.port());
    let mut w = worker_connects(&stubs, &["--addr", &addr, "--kind", "py", "--tls-ca", &ca]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape(d.admin).await, "jobd_worker_sessions{kind=\"py\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no TLS session seen by jobd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.kill().await.unwrap();
    d.stop().await;
}

/// (CA PEM, leaf cert PEM, leaf key PEM) for `localhost`. Unlike the suite's
/// `Pki` (rcgen's default name on both), CA and leaf have distinct subject
/// names: gRPC's BoringSSL takes a leaf whose issuer is its own subject for
/// self-signed and refuses it, where rustls looks at the signature.
fn pki_with_names() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "jobd test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
    (ca_pem, cert, key.serialize_pem())
}

/// worker.py's attempts report progress, a log line and a checkpoint
/// (#29): jobd shows them on the job, and a retry's attempt receives the
/// checkpoint (the log line says where it starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_reports_progress_a_log_line_and_a_checkpoint() {
    if !available("python3", &["-c", "import grpc_tools"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stubs = tmp.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    generate_stubs(&stubs).await;
    let d = start_with(HEAD, KINDS_PY).await;
    let _w = worker_connects(&stubs, &["--addr", &d.url(), "--kind", "py"]).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("py", "x")).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
    let p = j.progress.expect("progress");
    assert_eq!((p.percent, p.message.as_str()), (100, "done"));
    assert_eq!(j.checkpoint_size, 1);
    let lines = c
        .get_logs(proto::GetLogsRequest {
            id: job.id.clone(),
            after: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(text, ["starting at step 0"]);
    d.stop().await;
}
