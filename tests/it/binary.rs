//! The real `jobd` binary: config errors, SIGTERM drain, and `kill -9`
//! crash safety on a SQLite data directory.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobd::proto::JobState;

use crate::helpers::*;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Proc {
    pub child: Child,
    pub url: String,
}

/// Starts `jobd serve` on a fresh port with a SQLite store in `dir`.
pub async fn spawn_daemon(dir: &std::path::Path, extra_config: &str) -> Proc {
    spawn_config(
        dir,
        &format!(
            "store = \"sqlite:{}/data/jobd.db\"\nadmin_listen = \"off\"\n{extra_config}",
            dir.display()
        ),
    )
    .await
}

/// Starts `jobd serve` on a fresh port with exactly this config file.
pub async fn spawn_config(dir: &std::path::Path, config: &str) -> Proc {
    let port = free_port();
    let cfg = dir.join(format!("jobd-{port}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    // Wait until it accepts connections (bounded).
    for _ in 0..500 {
        if tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .is_ok()
        {
            return Proc { child, url };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("daemon did not start");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The guide's "Configuration" block (docs/src/configuration.md) is the
/// file a new user copies: it must pass `check-config` as it stands, and
/// name every table the daemon has (the top-level tables `check-config`
/// prints).
#[test]
fn the_readme_config_block_is_a_valid_config_with_every_table() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/configuration.md"
    ))
    .unwrap();
    let section = &readme[readme
        .find("# Configuration")
        .expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("readme.toml");
    std::fs::write(&f, block).unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in stdout
        .lines()
        .filter(|l| l.starts_with('[') && !l.contains('.'))
    {
        assert!(block.contains(table), "README config block lacks {table}");
    }
}

#[test]
fn bad_config_exits_64_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[queue]\nworkers = 0\n", "queue.workers"),
        ("[queue]\nwrokers = 4\n", "wrokers"),
        (
            "[kinds.x]\nhandler = \"echo\"\nmax_attempts = 0\n",
            "kinds.x.max_attempts",
        ),
        ("[drain]\ngrace = \"soon\"\n", "grace"),
        ("listen = \"nowhere\"\n", "listen"),
        ("[kinds.c]\nhandler = \"command\"\n", "kinds.c.command"),
        ("[kinds.c]\nhandler = \"echo\"\ncommand = [\"ls\"]\n", "kinds.c.command"),
        ("[kinds.h]\nhandler = \"http\"\nurl = \"ftp://x\"\n", "kinds.h.url"),
        // A TLS file of an https kind, read when its handler is built.
        ("[kinds.h]\nhandler = \"http\"\nurl = \"https://x\"\nca = \"/no/such/ca.pem\"\n", "kinds.h.ca"),
        ("[kinds.h]\nhandler = \"http\"\nurl = \"http://x\"\nmethod = \"DELETE\"\n", "kinds.h.method"),
        ("[kinds.c]\nhandler = \"command\"\ncommand = [\"ls\"]\nworking_dir = \"/no/such/dir\"\n", "kinds.c.working_dir"),
        // Past a semaphore's maximum these panicked after migrations ran.
        ("[limits]\nmax_connections = 4611686018427387904\n", "limits.max_connections"),
        ("[queue]\ndispatch_channel = 4611686018427387904\n", "queue.dispatch_channel"),
        ("[kinds.h]\nhandler = \"http\"\nurl = \"http://exa mple/hook\"\n", "kinds.h.url"),
        ("[kinds.h]\nhandler = \"http\"\nurl = \"http://:80/hook\"\n", "kinds.h.url"),
        // A result that could not fit in a reply (4 MiB by default).
        ("[kinds.big]\nhandler = \"echo\"\nmax_result_bytes = 9000000\n", "kinds.big.max_result_bytes"),
        ("[kinds.e]\nhandler = \"echo\"\n[[schedules]]\nid = \"s\"\nkind = \"e\"\ncron = \"99 * * * *\"\n", "schedules[0].cron"),
        ("[kinds.k]\nhandler = \"echo\"\nkey_concurrency = 0\n", "kinds.k.key_concurrency"),
        ("[kinds.k]\nhandler = \"echo\"\nrate = \"0/s\"\n", "kinds.k.rate"),
        ("[kinds.e]\nhandler = \"echo\"\n[[schedules]]\nid = \"s\"\nkind = \"e\"\ncron = \"* * * * *\"\ntimezone = \"Mars/Base\"\n", "schedules[0].timezone"),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(bin())
            .args(["serve", "--store", "memory:", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
        let out = Command::new(bin())
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
    }
    // A store URL with no path was taken, then failed with "no such table".
    for store in ["sqlite:", "memoryx", "mysql://x"] {
        let out = Command::new(bin())
            .args(["serve", "--store", store])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{store}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`store`"), "store not named in: {err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[kinds.hello]\nhandler = \"echo\"\n").unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_daemon(dir.path(), "[drain]\ngrace = \"500ms\"\ntimeout = \"5s\"\n").await;
    let mut c = connect(&p.url).await;
    let job = submit(&mut c, req("sleep", "800")).await;
    wait_for(&mut c, &job.id, |s| s == JobState::Running).await;
    let ch = tonic::transport::Channel::from_shared(p.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    signal(&p.child, "-TERM");
    // Health goes NOT_SERVING while submits still work (the grace).
    let mut saw_not_serving = false;
    for _ in 0..200 {
        match h
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) if r.get_ref().status == ServingStatus::NotServing as i32 => {
                saw_not_serving = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    assert!(saw_not_serving);
    let late = c.submit(req("echo", "in grace")).await;
    assert!(late.is_ok(), "submit during grace: {late:?}");
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // The running job finished inside drain.timeout; the one accepted in the
    // grace was not lost (it may still be QUEUED).
    let store = jobd::store::open(&format!("sqlite:{}/data/jobd.db", dir.path().display()))
        .await
        .unwrap();
    let j = store.get(job.id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(j.state, jobd::job::JobState::Succeeded);
    let l = late.unwrap().into_inner().job.unwrap();
    assert!(store.get(l.id.parse().unwrap()).await.unwrap().is_some());
    store.close().await.unwrap();
}

/// What the clients of one crash round saw.
#[derive(Default)]
struct Ledger {
    attempted: HashSet<String>,
    acknowledged: HashSet<String>,
}

/// An idle daemon starts a job in its insert's commit, so Submit answers
/// RUNNING, attempt 1. A `kill -9` before the outcome is committed loses
/// nothing: after the restart the job runs again (at least once) and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_job_started_at_submit_reruns_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[kinds.sleep]\nhandler = \"sleep\"\n";
    let mut p = spawn_daemon(dir.path(), config).await;
    let mut c = connect(&p.url).await;
    // A submit that lands while the dispatcher's own claim holds the free
    // slots (its first claim at start, under a loaded machine) is queued
    // and claimed instead; those jobs only run beside this one.
    let mut handed = None;
    for _ in 0..50 {
        let job = submit(&mut c, req("sleep", "1500")).await;
        if (state(&job), job.attempt) == (JobState::Running, 1) {
            handed = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = handed.expect("no submit was started in its insert's commit");
    signal(&p.child, "-KILL");
    let _ = p.child.wait();
    let mut p = spawn_daemon(dir.path(), config).await;
    let mut c = connect(&p.url).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    assert_eq!(done.attempt, 2, "the attempt cut by the kill counts");
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// Submits from many concurrent clients, `kill -9`s the daemon at a random
/// moment, restarts it on the same data and checks that every acknowledged
/// job exists and finishes. `JOBD_CRASH_KILLS` sets the rounds (default 3;
/// `scripts/crash-test.sh` runs 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_job() {
    let kills: usize = std::env::var("JOBD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let effects = dir.path().join("effects.log");
    // `record` appends "<job id> <attempt>" per run: the side effects to count.
    let config = format!(
        "[queue]\nworkers = 8\n[kinds.echo]\nhandler = \"echo\"\n[kinds.sleep]\nhandler = \"sleep\"\n\
         [kinds.record]\nhandler = \"command\"\nmax_attempts = 100\n\
         command = [\"sh\", \"-c\", \"echo $JOBD_JOB_ID $JOBD_ATTEMPT >> {}\"]\n",
        effects.display()
    );
    let config = config.as_str();
    for round in 0..kills {
        let mut p = spawn_daemon(dir.path(), config).await;
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..16 {
            let url = p.url.clone();
            let ledger = ledger.clone();
            clients.spawn(async move {
                let mut c = connect(&url).await;
                for i in 0.. {
                    let payload = format!("r{round}-c{client}-{i}");
                    ledger.lock().unwrap().attempted.insert(payload.clone());
                    // Some jobs sleep so kills land on running jobs too.
                    let kind = match i % 4 {
                        0 => "sleep",
                        1 => "record",
                        _ => "echo",
                    };
                    let body = if kind == "sleep" {
                        "20".to_string()
                    } else {
                        payload.clone()
                    };
                    let mut r = req(kind, &body);
                    r.labels.insert("p".into(), payload.clone());
                    match c.submit(r).await {
                        Ok(resp) => {
                            let id = resp.into_inner().job.unwrap().id;
                            ledger
                                .lock()
                                .unwrap()
                                .acknowledged
                                .insert(format!("{id} {payload}"));
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        let wait = 150 + rand::random::<u64>() % 600;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        signal(&p.child, "-KILL");
        let _ = p.child.wait();
        while clients.join_next().await.is_some() {}
    }
    // Final life: everything acknowledged must exist and finish.
    let mut p = spawn_daemon(dir.path(), config).await;
    let mut c = connect(&p.url).await;
    let acked: Vec<(String, String)> = ledger
        .lock()
        .unwrap()
        .acknowledged
        .iter()
        .map(|s| {
            let (id, p) = s.split_once(' ').unwrap();
            (id.to_string(), p.to_string())
        })
        .collect();
    let mut lost = 0;
    for (id, payload) in &acked {
        match c
            .get_status(jobd::proto::GetStatusRequest { id: id.clone() })
            .await
        {
            Ok(r) => assert_eq!(&r.into_inner().job.unwrap().labels["p"], payload),
            Err(e) if e.code() == tonic::Code::NotFound => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Everything stored was something a client sent (nothing invented),
    // and everything reaches a terminal state.
    let attempted = ledger.lock().unwrap().attempted.clone();
    let mut token = String::new();
    let mut stored = 0;
    let mut unexpected = 0;
    let mut records = Vec::new();
    loop {
        let page = c
            .list_jobs(jobd::proto::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for j in &page.jobs {
            stored += 1;
            if j.kind == "record" {
                records.push(j.id.clone());
            }
            if !attempted.contains(&j.labels["p"]) {
                unexpected += 1;
            }
            let done = wait_terminal(&mut c, &j.id).await;
            assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Side effects: each `record` job ran at least once once SUCCEEDED, and
    // never twice within one attempt (a rerun only follows a crash, which
    // counts as a new attempt). `duplicated` counts jobs whose effect ran
    // more than once: at-least-once delivery after a kill mid-commit.
    let log = std::fs::read_to_string(&effects).unwrap_or_default();
    let mut runs: std::collections::HashMap<&str, Vec<u32>> = Default::default();
    for line in log.lines() {
        let (id, attempt) = line.split_once(' ').unwrap();
        runs.entry(id).or_default().push(attempt.parse().unwrap());
    }
    let mut duplicated = 0;
    for id in &records {
        let attempts = runs.get(id.as_str()).cloned().unwrap_or_default();
        assert!(
            !attempts.is_empty(),
            "record job {id} succeeded without running"
        );
        let mut distinct = attempts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            attempts.len(),
            "job {id} ran twice in one attempt: {attempts:?}"
        );
        if attempts.len() > 1 {
            duplicated += 1;
        }
    }
    println!(
        "kills={kills} acknowledged={} stored={stored} lost={lost} unexpected={unexpected} duplicated={duplicated}",
        acked.len()
    );
    signal(&p.child, "-TERM");
    let _ = p.child.wait();
    assert!(acked.len() > kills, "the clients got acknowledgements");
    assert_eq!(lost, 0, "acknowledged jobs lost");
    assert_eq!(unexpected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_skips_the_drain_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A long grace and drain timeout that a second signal must cut short.
    let mut p = spawn_daemon(dir.path(), "[drain]\ngrace = \"30s\"\ntimeout = \"60s\"\n").await;
    let mut c = connect(&p.url).await;
    let long = submit(&mut c, req("sleep", "600000")).await;
    wait_for(&mut c, &long.id, |s| s == JobState::Running).await;
    let started = std::time::Instant::now();
    signal(&p.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&p.child, "-TERM");
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // The interrupted job is still there, put back in the queue by the
    // forced stop's best effort without spending its attempt.
    let store = jobd::store::open(&format!("sqlite:{}/data/jobd.db", dir.path().display()))
        .await
        .unwrap();
    let j = store.get(long.id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(j.state, jobd::job::JobState::Queued, "{j:?}");
    assert_eq!(j.attempt, 0, "the forced stop spent the attempt: {j:?}");
    store.close().await.unwrap();
}

/// Runs `jobd serve` with `config`, gets it to `setup`'s state, sends
/// `signals` SIGTERMs 300 ms apart, and returns how long after its last log
/// line the process exited, and its stderr reached EOF (what a `| tee` sees),
/// with the log.
async fn linger_after_last_log_line(
    config: &str,
    kind: Option<&str>,
    signals: usize,
) -> (Duration, Duration, String) {
    use std::io::BufRead;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("jobd.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = \"sqlite:{}/jobd.db\"\nadmin_listen = \"127.0.0.1:0\"\n{config}",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // (log, time of the last line, time of EOF)
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let mut last = Instant::now();
        for line in std::io::BufReader::new(stderr).lines() {
            last = Instant::now();
            log.push_str(&line.unwrap_or_default());
            log.push('\n');
        }
        (log, last, Instant::now())
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut c = connect_when_up(&url).await;
    if let Some(kind) = kind {
        let job = submit(&mut c, req(kind, "")).await;
        wait_for(&mut c, &job.id, |s| s == JobState::Running).await;
    }
    for i in 0..signals {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        signal(&child, "-TERM");
    }
    let (status, exited) = tokio::task::spawn_blocking(move || {
        let s = child.wait().unwrap();
        (s, Instant::now())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    let (log, last, eof) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(log.contains("jobd stopped"), "{log}");
    (
        exited.saturating_duration_since(last),
        eof.saturating_duration_since(last),
        log,
    )
}

/// After its last log line ("jobd stopped") the process is gone within a
/// second, and so is every holder of its stderr: idle, and when a second
/// signal cuts short a command whose process group ignores SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_promptly_after_its_last_log_line() {
    let (exit, eof, log) =
        linger_after_last_log_line("[drain]\ngrace = \"100ms\"\n", None, 1).await;
    assert!(exit < Duration::from_secs(1), "idle: exit {exit:?}\n{log}");
    assert!(
        eof < Duration::from_secs(1),
        "idle: stderr EOF {eof:?}\n{log}"
    );
    eprintln!("idle: exit {exit:?} and stderr EOF {eof:?} after the last log line");
    let stubborn = "[drain]\ngrace = \"30s\"\ntimeout = \"60s\"\n\
        [kinds.stubborn]\nhandler = \"command\"\n\
        command = [\"sh\", \"-c\", \"trap '' TERM; sleep 30.123 & sleep 30.123; wait\"]\n\
        kill_grace = \"30s\"\n";
    let (exit, eof, log) = linger_after_last_log_line(stubborn, Some("stubborn"), 2).await;
    assert!(
        exit < Duration::from_secs(1),
        "forced: exit {exit:?}\n{log}"
    );
    assert!(
        eof < Duration::from_secs(1),
        "forced: stderr EOF {eof:?}\n{log}"
    );
    eprintln!("forced stop: exit {exit:?} and stderr EOF {eof:?} after the last log line");
    // The abandoned attempt's whole process group is gone with the daemon,
    // not only its leader.
    let marker = "trap '' TERM; sleep 30.123 & sleep 30.123; wait";
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = Command::new("pgrep")
            .args(["-f", "-c", "^sleep 30[.]123$"])
            .output()
            .unwrap();
        let n: u32 = String::from_utf8_lossy(&left.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} processes of `{marker}` outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `RUST_LOG=jobd=debug`, as the README recommends: a line in each RPC's
/// span with its code, and a failed attempt's error text in the attempt's
/// span; none of the HTTP/2 libraries' frame dumps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_show_rpc_spans_and_attempt_errors() {
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["serve", "--store", "memory:", "--admin-listen", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "jobd=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut c = connect_when_up(&url).await;
    let mut r = req("fail", "permanent");
    r.max_attempts = 1;
    let job = submit(&mut c, r).await;
    wait_for(&mut c, &job.id, |s| s == JobState::Failed).await;
    let refused = c.submit(req("no-such-kind", "")).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    drop(c);
    signal(&child, "-TERM");
    let out = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        log
    })
    .await
    .unwrap();
    assert!(
        out.contains("rpc{method=/jobd.v1.JobService/Submit}")
            && out.contains("code=\"INVALID_ARGUMENT\""),
        "{out}"
    );
    let attempt = format!("attempt{{job={} kind=fail attempt=1}}", job.id);
    assert!(
        out.lines().any(|l| l.contains(&attempt)
            && l.contains("attempt failed error=fail: permanent failure requested")),
        "{out}"
    );
    assert!(!out.contains("h2::"), "frame dumps at jobd=debug:\n{out}");
}
