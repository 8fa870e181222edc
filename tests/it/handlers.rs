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
    serve_http(responses, None).await
}

/// [`http_server`] over TLS with this acceptor: an `https://127.0.0.1`
/// URL. A failed handshake records nothing.
async fn https_server(
    responses: Vec<(&'static str, Duration)>,
    acceptor: tokio_rustls::TlsAcceptor,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    serve_http(responses, Some(acceptor)).await
}

async fn serve_http(
    responses: Vec<(&'static str, Duration)>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let responses = responses.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(sock, log, responses).await,
                    Some(a) => {
                        if let Ok(s) = a.accept(sock).await {
                            answer(s, log, responses).await;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

/// One connection: one request read, recorded, and answered.
async fn answer(
    mut sock: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    log: Arc<Mutex<Vec<Seen>>>,
    responses: Vec<(&'static str, Duration)>,
) {
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
async fn http_kind_sends_the_submitters_trace_context() {
    let (url, seen) = http_server(vec![(OK, Duration::ZERO)]).await;
    let d = start_with("", &kinds(&http_kind(&url, "5s"))).await;
    let mut c = d.client().await;
    let r = traced(req("hook", "p"), TRACEPARENT, "vendor=opaque");
    let j = c.submit(r).await.unwrap().into_inner().job.unwrap();
    let plain = submit(&mut c, req("hook", "q")).await;
    assert_eq!(
        state(&wait_terminal(&mut c, &j.id).await),
        JobState::Succeeded
    );
    assert_eq!(
        state(&wait_terminal(&mut c, &plain.id).await),
        JobState::Succeeded
    );
    let seen = seen.lock().unwrap().clone();
    let of = |id: &str| {
        seen.iter()
            .find(|s| s.header("x-jobd-job-id").as_deref() == Some(id))
            .cloned()
            .unwrap()
    };
    let s = of(&j.id);
    assert_eq!(s.header("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(s.header("tracestate").as_deref(), Some("vendor=opaque"));
    assert_eq!(of(&plain.id).header("traceparent"), None);
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
    d.stop().await;
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
    d.stop().await;
}

/// A TLS acceptor serving `cert`/`key`; with `client_ca`, it requires a
/// client certificate signed by that CA.
fn acceptor(cert: &str, key: &str, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            b.with_client_cert_verifier(verifier)
        }
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(b.with_single_cert(certs, key).unwrap()))
}

/// An `http` kind `hook` for `url` with extra keys (`ca = ...`), two
/// attempts, quick backoff.
async fn run_https_hook(url: &str, extra: &str) -> proto::Job {
    let kind = format!(
        "[kinds.hook]\nhandler = \"http\"\nurl = \"{url}\"\ntimeout = \"5s\"\n\
         max_attempts = 2\nbackoff = {{ initial = \"10ms\", max = \"10ms\" }}\n{extra}"
    );
    let d = start_with("", &kinds(&kind)).await;
    let mut c = d.client().await;
    let j = submit(&mut c, req("hook", "over tls")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    d.stop().await;
    done
}

/// Writes `text` to `dir/name`; returns the path for a config file.
fn file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// https:// webhooks: a server whose certificate chains to the kind's `ca`
/// gets the request; a certificate from another CA, for another name, or
/// checked against the system's roots fails the handshake, which is a
/// connection error: retried, with the reason in last_error, and the server
/// never sees a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_hook_trusts_the_kinds_ca_and_retries_a_bad_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::helpers::Pki::new();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let (cert, key) = pki.leaf(&["127.0.0.1"]);
    let (url, seen) = https_server(vec![(OK, Duration::ZERO)], acceptor(&cert, &key, None)).await;
    let done = run_https_hook(&url, &format!("ca = \"{ca}\"\n")).await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    assert_eq!(done.result, b"thanks!");
    let s = seen.lock().unwrap()[0].clone();
    assert!(s.head.starts_with("POST /hook HTTP/1.1"), "{}", s.head);
    assert_eq!(s.body, b"over tls");

    // Signed by another CA (with the same name as ours: the signature
    // does not verify).
    let other = crate::helpers::Pki::new();
    let (cert, key) = other.leaf(&["127.0.0.1"]);
    let (url, seen) = https_server(vec![(OK, Duration::ZERO)], acceptor(&cert, &key, None)).await;
    let done = run_https_hook(&url, &format!("ca = \"{ca}\"\n")).await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 2));
    assert!(
        done.last_error
            .contains("invalid peer certificate: BadSignature"),
        "{}",
        done.last_error
    );
    assert!(seen.lock().unwrap().is_empty());
    // No `ca`: the system's roots do not know the test CA either.
    let done = run_https_hook(&url, "").await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 2));
    assert!(
        done.last_error.contains("UnknownIssuer"),
        "{}",
        done.last_error
    );

    // The right CA, the wrong name.
    let (cert, key) = pki.leaf(&["example.com"]);
    let (url, seen) = https_server(vec![(OK, Duration::ZERO)], acceptor(&cert, &key, None)).await;
    let done = run_https_hook(&url, &format!("ca = \"{ca}\"\n")).await;
    assert_eq!(state(&done), JobState::Failed);
    assert!(
        done.last_error.contains("certificate not valid for name"),
        "{}",
        done.last_error
    );
    assert!(seen.lock().unwrap().is_empty());
}

/// A server that requires a client certificate: the kind's `cert`/`key`
/// get through; without them the handshake fails and the job is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_hook_presents_the_kinds_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::helpers::Pki::new();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let (cert, key) = pki.leaf(&["127.0.0.1"]);
    let (client_cert, client_key) = pki.leaf(&["jobd-client"]);
    let client_cert = file(dir.path(), "client.pem", &client_cert);
    let client_key = file(dir.path(), "client.key", &client_key);
    let (url, seen) = https_server(
        vec![(OK, Duration::ZERO)],
        acceptor(&cert, &key, Some(&pki.ca_pem)),
    )
    .await;
    let done = run_https_hook(
        &url,
        &format!("ca = \"{ca}\"\ncert = \"{client_cert}\"\nkey = \"{client_key}\"\n"),
    )
    .await;
    assert_eq!(state(&done), JobState::Succeeded, "{}", done.last_error);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let done = run_https_hook(&url, &format!("ca = \"{ca}\"\n")).await;
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 2));
    assert!(
        done.last_error.contains("CertificateRequired"),
        "{}",
        done.last_error
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no request without a client certificate"
    );
}

/// The TLS keys of an http kind are checked at start, each error naming
/// its key.
#[test]
fn http_tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::helpers::Pki::new();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let not_pem = file(dir.path(), "junk.pem", "not a certificate\n");
    let (c, k) = pki.leaf(&["x"]);
    let cert = file(dir.path(), "c.pem", &c);
    let key = file(dir.path(), "k.pem", &k);
    let other_key = file(
        dir.path(),
        "other.key",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    let check = |url: &str, extra: &str| {
        let text = format!(
            "store = \"memory:\"\n[kinds.hook]\nhandler = \"http\"\nurl = \"{url}\"\n{extra}"
        );
        jobd::prepare(jobd::Config::from_toml(&text).unwrap()).map(|_| ())
    };
    let https = "https://127.0.0.1:1/hook";
    check(
        https,
        &format!("ca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nconnect_timeout = \"2s\"\n"),
    )
    .expect("a valid https kind");
    check("http://127.0.0.1:1/hook", "").expect("plain http still works");
    for (url, extra, key_named, why) in [
        (
            "ftp://x/y",
            String::new(),
            "kinds.hook.url",
            "http:// or https://",
        ),
        (
            "http://127.0.0.1:1/hook",
            format!("ca = \"{ca}\""),
            "kinds.hook.ca",
            "needs an https:// url",
        ),
        (
            https,
            format!("cert = \"{cert}\""),
            "kinds.hook.key",
            "required with cert",
        ),
        (
            https,
            format!("key = \"{key}\""),
            "kinds.hook.cert",
            "required with key",
        ),
        (
            https,
            format!("ca = \"{missing}\""),
            "kinds.hook.ca",
            "cannot read",
        ),
        (
            https,
            format!("ca = \"{not_pem}\""),
            "kinds.hook.ca",
            "no certificate",
        ),
        (
            https,
            format!("cert = \"{cert}\"\nkey = \"{other_key}\""),
            "kinds.hook.key",
            "does not fit",
        ),
        (
            https,
            "connect_timeout = \"0s\"".into(),
            "kinds.hook.connect_timeout",
            "more than 0",
        ),
    ] {
        let e = check(url, &extra).unwrap_err().to_string();
        assert!(e.contains(key_named) && e.contains(why), "{extra}: {e}");
    }
    let text = "[kinds.c]\nhandler = \"command\"\ncommand = [\"true\"]\nconnect_timeout = \"1s\"\n";
    let e = jobd::prepare(jobd::Config::from_toml(text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kinds.c.connect_timeout") && e.contains("not a setting"),
        "{e}"
    );
}

/// `connect_timeout` bounds connecting (TCP + TLS handshake) on its own:
/// a server that accepts but never answers the handshake fails each attempt
/// after 200 ms, well before the attempt's 10 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connect_timeout_is_apart_from_the_request_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            keep.lock().unwrap().push(sock); // silent: no ServerHello
        }
    });
    let kind = format!(
        "[kinds.hook]\nhandler = \"http\"\nurl = \"{url}\"\ntimeout = \"10s\"\n\
         connect_timeout = \"200ms\"\nmax_attempts = 2\n\
         backoff = {{ initial = \"10ms\", max = \"10ms\" }}\n"
    );
    let d = start_with("", &kinds(&kind)).await;
    let mut c = d.client().await;
    let started = Instant::now();
    let j = submit(&mut c, req("hook", "x")).await;
    let done = wait_terminal(&mut c, &j.id).await;
    let took = started.elapsed();
    assert_eq!((state(&done), done.attempt), (JobState::Failed, 2));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        done.last_error.contains("(Connect): operation timed out"),
        "{}",
        done.last_error
    );
    assert_eq!(held.lock().unwrap().len(), 2, "one connection per attempt");
    d.stop().await;
}
