//! Spawns a real daemon on an ephemeral port (in-process, or the real
//! binary) and gives tests real gRPC clients.

mod clients;
mod metrics;
mod pki;

pub use clients::*;
pub use metrics::*;
pub use pki::Pki;

use std::net::SocketAddr;
use std::time::Duration;

use jobd::proto::job_service_client::JobServiceClient;
use jobd::proto::{self, JobState};
use jobd::{Config, RunError, Shutdown};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Kinds most tests use: quick backoff so retries finish fast.
pub const KINDS: &str = r#"
[kinds.echo]
handler = "echo"

[kinds.sleep]
handler = "sleep"

[kinds.fail]
handler = "fail"
max_attempts = 3
backoff = { initial = "10ms", max = "40ms", multiplier = 2.0 }

[kinds.short]
handler = "sleep"
timeout = "200ms"
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }

[kinds.single]
handler = "sleep"
concurrency = 1
"#;

pub struct TestDaemon {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    pub handle: JoinHandle<Result<(), RunError>>,
    pub dir: tempfile::TempDir,
}

/// Starts a daemon whose config is `head` (top-level keys and tables other
/// than kinds) plus [`KINDS`]. The store defaults to `memory:`.
pub async fn start(head: &str) -> TestDaemon {
    start_with(head, KINDS).await
}

pub async fn start_with(head: &str, kinds: &str) -> TestDaemon {
    start_custom(head, kinds, |_| {}).await
}

/// [`start_with`], letting the test add its own handlers to the registry.
pub async fn start_custom(
    head: &str,
    kinds: &str,
    customize: impl FnOnce(&mut jobd::handlers::Registry),
) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    if !head.contains("store =") && !head.contains("[store]") {
        text.push_str("store = \"memory:\"\n");
    }
    text.push_str(head);
    if !head.contains("[drain]") {
        text.push_str("\n[drain]\ngrace = \"50ms\"\ntimeout = \"2s\"\n");
    }
    text.push_str(kinds);
    let text = text.replace("{dir}", &dir.path().display().to_string());
    let config = Config::from_toml(&text).expect("test config parses");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let mut prepared = jobd::prepare(config).expect("test config is valid");
    customize(&mut prepared.registry);
    let handle = tokio::spawn(jobd::run_with_listeners(
        prepared,
        listener,
        Some(admin_listener),
        shutdown.clone(),
    ));
    TestDaemon {
        addr,
        admin,
        shutdown,
        handle,
        dir,
    }
}

impl TestDaemon {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> JobServiceClient<Channel> {
        connect(&self.url()).await
    }

    /// Drains and waits for `run` to return (cleanly, or the test fails).
    pub async fn stop(self) {
        self.stop_keep_dir().await;
    }

    /// Drains, checks `run` returned Ok, and hands back the data directory.
    pub async fn stop_keep_dir(self) -> tempfile::TempDir {
        self.shutdown.drain.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("daemon stops in time")
            .expect("daemon task")
            .expect("daemon stopped cleanly");
        self.dir
    }
}

pub async fn connect(url: &str) -> JobServiceClient<Channel> {
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    JobServiceClient::new(ch)
}

/// Connects to a daemon that is starting: retries for up to 10 s.
pub async fn connect_when_up(url: &str) -> JobServiceClient<Channel> {
    for _ in 0..500 {
        if let Ok(ch) = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            return JobServiceClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("daemon at {url} did not start");
}

pub fn req(kind: &str, payload: &str) -> proto::SubmitRequest {
    proto::SubmitRequest {
        kind: kind.into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A W3C `traceparent` for tests.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `r` with `traceparent` (and `tracestate`) metadata, as an instrumented
/// client sends them.
pub fn traced(
    r: proto::SubmitRequest,
    traceparent: &str,
    tracestate: &str,
) -> tonic::Request<proto::SubmitRequest> {
    let mut r = tonic::Request::new(r);
    r.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    if !tracestate.is_empty() {
        r.metadata_mut()
            .insert("tracestate", tracestate.parse().unwrap());
    }
    r
}

pub async fn submit(c: &mut JobServiceClient<Channel>, r: proto::SubmitRequest) -> proto::Job {
    c.submit(r).await.expect("submit").into_inner().job.unwrap()
}

pub async fn status(c: &mut JobServiceClient<Channel>, id: &str) -> proto::Job {
    c.get_status(proto::GetStatusRequest { id: id.into() })
        .await
        .expect("get_status")
        .into_inner()
        .job
        .unwrap()
}

pub fn state(j: &proto::Job) -> JobState {
    JobState::try_from(j.state).unwrap()
}

pub fn is_terminal(s: JobState) -> bool {
    matches!(
        s,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Polls until the job is in a state `pred` accepts (bounded: 20 s).
pub async fn wait_for(
    c: &mut JobServiceClient<Channel>,
    id: &str,
    pred: impl Fn(JobState) -> bool,
) -> proto::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = status(c, id).await;
        if pred(state(&j)) {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} stuck in {:?}",
            state(&j)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_terminal(c: &mut JobServiceClient<Channel>, id: &str) -> proto::Job {
    wait_for(c, id, is_terminal).await
}

/// Every event of a watch stream until it ends.
pub async fn watch_all(
    c: &mut JobServiceClient<Channel>,
    id: &str,
) -> Result<Vec<proto::JobEvent>, tonic::Status> {
    let mut s = c
        .watch_status(proto::WatchStatusRequest {
            id: id.into(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("watch stream stalled")?
    {
        out.push(e);
    }
    Ok(out)
}

pub fn ts_in(d: Duration) -> prost_types::Timestamp {
    let t = std::time::SystemTime::now() + d;
    prost_types::Timestamp::from(t)
}

pub fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

/// The real binary Cargo built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jobd")
}

/// Runs `jobd check-config` on a file holding `text`; returns its exit
/// code and standard error.
pub fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("jobd.toml");
    std::fs::write(&f, text).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET (the admin listener); returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A reqwest client builder. jobd builds reqwest without a default TLS
/// crypto provider (each `http` kind brings its own rustls config), so
/// tests install ring as the process default first.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A default reqwest client (see [`http_client_builder`]).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("reqwest client")
}

/// A daemon process killed (and reaped) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
