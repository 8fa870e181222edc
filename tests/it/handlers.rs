//! The command and HTTP handlers against real processes and a real local
//! HTTP server on an ephemeral port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobd::proto::{self, JobState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

fn kinds(extra: &str) -> String {
    format!("{KINDS}\n{extra}")
}

/// Whether a process is running (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn read_pid(path: &std::path::Path) -> i32 {
    for _ in 0..500 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pid file {}", path.display());
}

async fn gone(pid: i32) -> bool {
    for _ in 0..300 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

const SPAWNER: &str = r#"
[kinds.spawner]
handler = "command"
# A child that starts a long-sleeping grandchild and waits for it.
command = ["sh", "-c", "sleep 300 & echo $! > \"$PIDFILE\"; wait"]
env = { PIDFILE = "{dir}/grandchild.pid" }
timeout = "400ms"
max_attempts = 1
kill_grace = "200ms"
"#;

#[tokio::test]
async fn command_success_env_and_failures() {
    let d = start_with(
        "",
        &kinds(
            r#"
[kinds.sha]
handler = "command"
command = ["sha256sum"]

[kinds.envy]
handler = "command"
command = ["sh", "-c", "printf '%s %s %s %s' \"$JOBD_KIND\" \"$JOBD_ATTEMPT\" \"$JOBD_JOB_ID\" \"$FOO\"; pwd >&2"]
env = { FOO = "bar" }
working_dir = "/tmp"

[kinds.flaky]
handler = "command"
command = ["sh", "-c", "echo first line >&2; echo oops >&2; exit 3"]
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }

[kinds.perm]
handler = "command"
command = ["sh", "-c", "echo bad input >&2; exit 7"]
permanent_exit_codes = [7]

[kinds.missing]
handler = "command"
command = ["/nonexistent/jobd-test-program"]

[kinds.noread]
handler = "command"
# Exits without reading stdin; a background child keeps stdin open.
command = ["sh", "-c", "sleep 30 <&0 >/dev/null 2>&1 & echo done"]
timeout = "20s"
max_attempts = 1

[kinds.huge]
handler = "command"
command = ["sh", "-c", "head -c 50000000 /dev/zero"]
max_result_bytes = 1000
"#,
        ),
    )
    .await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("sha", "abc")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert!(String::from_utf8_lossy(&done.result)
        .starts_with("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));

    let j = submit(&mut c, req("envy", "")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!(
        String::from_utf8_lossy(&done.result),
        format!("envy 1 {} bar", j.id)
    );

    let j = submit(&mut c, req("flaky", "")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 2));
    assert!(
        done.last_error.contains("exit code 3: first line\noops"),
        "{}",
        done.last_error
    );

    let j = submit(&mut c, req("perm", "")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 1));
    assert!(
        done.last_error.contains("exit code 7: bad input"),
        "{}",
        done.last_error
    );

    let j = submit(&mut c, req("missing", "")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 1));
    assert!(
        done.last_error.contains("cannot start"),
        "{}",
        done.last_error
    );

    // 1 MiB of stdin (more than a pipe holds) to a program that never reads
    // it: the job ends when the program does, not at the timeout.
    let started = std::time::Instant::now();
    let big = "x".repeat(1024 * 1024);
    let j = submit(&mut c, req("noread", &big)).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    assert!(started.elapsed() < Duration::from_secs(10));

    let j = submit(&mut c, req("huge", "")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert_eq!(done.result.len(), 1000);
}

#[tokio::test]
async fn command_timeout_kills_the_whole_process_group() {
    let d = start_with("", &kinds(SPAWNER)).await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("spawner", "")).await;
    let pid = read_pid(&d.dir.path().join("grandchild.pid")).await;
    assert!(alive(pid));
    let done = wait_terminal(&mut c, &j.id).await;
    assert_eq!(state(&done), JobState::Failed);
    assert!(done.last_error.contains("timed out"), "{}", done.last_error);
    assert!(gone(pid).await, "grandchild {pid} outlived the timeout");
}

#[tokio::test]
async fn cancel_of_a_running_command_kills_it() {
    let d = start_with("", &kinds(&SPAWNER.replace("400ms", "60s"))).await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("spawner", "")).await;
    let pid = read_pid(&d.dir.path().join("grandchild.pid")).await;
    c.cancel(proto::CancelRequest { id: j.id.clone() })
        .await
        .unwrap();
    assert!(gone(pid).await, "grandchild {pid} outlived the cancel");
    assert_eq!(state(&status(&mut c, &j.id).await), JobState::Cancelled);
}

#[tokio::test]
async fn drain_stops_a_running_command_and_requeues_it() {
    let d = start_with(
        "store = \"sqlite:{dir}/jobd.db\"\n[drain]\ngrace = \"50ms\"\ntimeout = \"300ms\"\n",
        &kinds(&SPAWNER.replace("400ms", "60s")),
    )
    .await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("spawner", "")).await;
    let pid = read_pid(&d.dir.path().join("grandchild.pid")).await;
    let path = d.dir.path().join("jobd.db");
    let dir = d.stop_keep_dir().await;
    assert!(gone(pid).await, "grandchild {pid} outlived the drain");
    let store = jobd::store::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let job = store.get(j.id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (jobd::job::JobState::Queued, 0));
    store.close().await.unwrap();
    drop(dir);
}

/// One request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A tiny HTTP/1.1 server: answers request n with `responses[n]` (the last
/// one repeats), after an optional delay, and records what it received.
async fn http_server(responses: Vec<(&'static str, Duration)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push(Seen {
                        at: Instant::now(),
                        head,
                        body: buf[head_end..].to_vec(),
                    });
                    l.len() - 1
                };
                let (resp, delay) = responses[n.min(responses.len() - 1)];
                tokio::time::sleep(delay).await;
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, seen)
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nthanks!";
const UNAVAILABLE: &str =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy";
const TOO_MANY: &str = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const BAD: &str =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad payload";

fn http_kind(url: &str, timeout: &str) -> String {
    format!(
        r#"
[kinds.hook]
handler = "http"
url = "{url}"
headers = {{ X-Team = "web" }}
timeout = "{timeout}"
max_attempts = 3
backoff = {{ initial = "10ms", max = "10ms" }}
"#
    )
}

async fn run_hook(url: &str, timeout: &str) -> proto::Job {
    let d = start_with("", &kinds(&http_kind(url, timeout))).await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("hook", "the payload")).await;
    wait_terminal(&mut c, &j.id).await
}

#[tokio::test]
async fn http_success_sends_payload_and_headers() {
    let (url, seen) = http_server(vec![(OK, Duration::ZERO)]).await;
    let done = run_hook(&url, "5s").await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert_eq!(done.result, b"thanks!");
    let s = seen.lock().unwrap()[0].clone();
    assert!(s.head.starts_with("POST /hook "));
    assert_eq!(s.body, b"the payload");
    assert_eq!(s.header("idempotency-key").unwrap(), done.id);
    assert_eq!(s.header("x-jobd-job-id").unwrap(), done.id);
    assert_eq!(s.header("x-team").unwrap(), "web");
}

#[tokio::test]
async fn http_503_then_200_retries_with_the_same_idempotency_key() {
    let (url, seen) = http_server(vec![(UNAVAILABLE, Duration::ZERO), (OK, Duration::ZERO)]).await;
    let done = run_hook(&url, "5s").await;
    assert_eq!((state(&done), done.attempt), (JobState::Succeeded, 2));
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[0].header("idempotency-key"),
        s[1].header("idempotency-key")
    );
    assert_eq!(s[1].header("x-jobd-attempt").unwrap(), "2");
}

#[tokio::test]
async fn http_429_retry_after_is_honoured() {
    let (url, seen) = http_server(vec![(TOO_MANY, Duration::ZERO), (OK, Duration::ZERO)]).await;
    let done = run_hook(&url, "5s").await;
    assert_eq!(state(&done), JobState::Succeeded);
    let s = seen.lock().unwrap().clone();
    let gap = s[1].at - s[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, not after Retry-After: 1"
    );
}

#[tokio::test]
async fn http_400_is_permanent() {
    let (url, seen) = http_server(vec![(BAD, Duration::ZERO)]).await;
    let done = run_hook(&url, "5s").await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 1));
    assert!(
        done.last_error.contains("400") && done.last_error.contains("bad payload"),
        "{}",
        done.last_error
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn http_connection_refused_is_retried() {
    let port = crate::binary::free_port();
    let done = run_hook(&format!("http://127.0.0.1:{port}/hook"), "5s").await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 3));
    assert!(done.last_error.contains("failed"), "{}", done.last_error);
}

#[tokio::test]
async fn http_slow_server_hits_the_timeout() {
    let (url, _seen) = http_server(vec![(OK, Duration::from_secs(10))]).await;
    let done = run_hook(&url, "300ms").await;
    assert_eq!(state(&done), JobState::Failed);
    assert!(done.last_error.contains("timed out"), "{}", done.last_error);
}

/// A process that leaves the job's process group (`setsid`) does not
/// outlive the job: it still carries the attempt's environment, and jobd
/// kills it once the attempt ends.
#[tokio::test]
async fn a_process_that_left_the_group_is_killed_when_the_job_ends() {
    let d = start_with(
        "",
        &kinds(
            r#"
[kinds.escaper]
handler = "command"
command = ["sh", "-c", "setsid sh -c 'echo $$ > \"$PIDFILE\"; exec sleep 777' </dev/null >/dev/null 2>&1 & sleep 0.2; echo started"]
env = { PIDFILE = "{dir}/escaped.pid" }
max_attempts = 1
"#,
        ),
    )
    .await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("escaper", "")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    let pid = read_pid(&d.dir.path().join("escaped.pid")).await;
    let killed = gone(pid).await;
    if !killed {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(killed, "the setsid'd process {pid} outlived its job");
    d.stop().await.unwrap();
}

/// A configured Content-Type replaces the default: exactly one is sent.
#[tokio::test]
async fn http_configured_content_type_replaces_the_default() {
    let (url, seen) = http_server(vec![(OK, Duration::ZERO)]).await;
    let kind = format!(
        "[kinds.hook]\nhandler = \"http\"\nurl = \"{url}\"\n\
         headers = {{ Content-Type = \"application/json\" }}\n"
    );
    let d = start_with("", &kinds(&kind)).await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("hook", "{}")).await;
    assert_eq!(
        state(&wait_terminal(&mut c, &j.id).await),
        JobState::Succeeded
    );
    let s = seen.lock().unwrap()[0].clone();
    let types: Vec<&str> = s
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .collect();
    assert_eq!(types, ["content-type: application/json"], "{}", s.head);
    assert_eq!(s.header("x-jobd-job-id").unwrap(), j.id);
    d.stop().await.unwrap();
}
