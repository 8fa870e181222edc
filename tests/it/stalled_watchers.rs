//! WatchJobs readers that stop reading (#28.2): each holds at most one
//! encoded message plus its flow-control window, never a queue of copies;
//! it ends at `limits.watch_idle_timeout`, giving back its watcher places,
//! and counts in `jobd_watchers` until then. Against the real binary, with
//! the daemon's VmRSS measured.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobd::proto;
use prost::Message;
use tokio::net::TcpStream;

use crate::binary::spawn_config;
use crate::helpers::*;

const MIB: u64 = 1024 * 1024;

/// VmRSS of a process, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens a WatchJobs stream on `h2` and never reads its body: the server
/// fills the client's 64 KiB stream window, then has to hold the rest.
async fn stalled_watch(
    h2: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    after: u64,
) -> (http::StatusCode, h2::RecvStream) {
    let mut h2 = h2.ready().await.expect("connection ready");
    let req = http::Request::post(format!("http://{addr}/jobd.v1.JobService/WatchJobs"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(req, false).expect("stream opens");
    let msg = proto::WatchJobsRequest {
        after,
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    body.send_data(Bytes::from(frame), true).unwrap();
    let r = response.await.expect("response headers");
    let status = r.status();
    (status, r.into_body())
}

async fn watchers(admin: &str) -> f64 {
    let addr: SocketAddr = admin.parse().unwrap();
    sample(&scrape(addr).await, "jobd_watchers").unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watch_jobs_readers_hold_little_and_end_at_the_idle_timeout() {
    const STREAMS: usize = 200;
    const JOBS: usize = 300;
    const RESULT: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{admin_port}");
    let proc = spawn_config(
        dir.path(),
        &format!(
            "store = \"memory:\"\nadmin_listen = \"{admin}\"\n\
             [queue]\nmax_watchers = {}\n\
             [limits]\nwatch_idle_timeout = \"3s\"\nmax_watchers_per_connection = {STREAMS}\n\
             max_watchers_per_client = {STREAMS}\n",
            STREAMS
        ),
    )
    .await;
    let child = KillOnDrop(proc.child);
    let pid = child.0.id();
    let addr: SocketAddr = proc.url.trim_start_matches("http://").parse().unwrap();
    let mut c = connect(&proc.url).await;
    submit(&mut c, req("echo", "warm-up")).await;
    let idle = rss(pid);

    // A reader, for the position before the jobs below.
    let mut probe = c
        .watch_jobs(proto::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    submit(&mut c, req("echo", "mark")).await;
    let mark = probe.message().await.unwrap().unwrap().position;
    drop(probe);

    // Large results for every stream to hold, were it to queue them.
    let payload = "x".repeat(RESULT);
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(submit(&mut c, req("echo", &payload)).await.id);
    }
    for id in &ids {
        wait_terminal(&mut c, id).await;
    }
    let before = rss(pid);

    // Readers that resume from the mark and never read: each has every
    // change above waiting for it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut held = Vec::new();
    let t0 = std::time::Instant::now();
    // Opened together: one after the other took 3.6 s on a slow run, past
    // the 3 s idle timeout, so the first had ended before the last began.
    let opened =
        futures_util::future::join_all((0..STREAMS).map(|_| stalled_watch(h2.clone(), addr, mark)))
            .await;
    for (status, body) in opened {
        assert_eq!(status, 200);
        held.push(body);
    }
    // The gauge counts a stream once its handler runs, which may be a
    // moment after the response headers went out: poll briefly.
    eprintln!(
        "stalled WatchJobs: {STREAMS} streams opened in {:?}",
        t0.elapsed()
    );
    let mut counted = watchers(&admin).await;
    for _ in 0..50 {
        if counted == STREAMS as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        counted = watchers(&admin).await;
    }
    assert_eq!(counted, STREAMS as f64, "counted in the gauge");
    // Every place is taken: one more is refused.
    let refused = match c.watch_jobs(proto::WatchJobsRequest::default()).await {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.expect_err("refused"),
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss(pid);
    eprintln!(
        "stalled WatchJobs: {STREAMS} streams behind {JOBS} jobs with {RESULT}-byte results; \
         RSS idle {} MiB, after the jobs {} MiB, with the stalled streams {} MiB",
        idle / MIB,
        before / MIB,
        loaded / MIB
    );
    // Before #28.2 each stream queued up to 256 converted changes (about
    // 5 MiB of results here). Now: one message and a window per stream.
    assert!(
        loaded < before + 64 * MIB,
        "RSS {} MiB, {} MiB before the streams",
        loaded / MIB,
        before / MIB
    );

    // At the idle timeout they end and give their places back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while watchers(&admin).await > 0.0 {
        assert!(Instant::now() < deadline, "stalled readers never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut fresh = c
        .watch_jobs(proto::WatchJobsRequest::default())
        .await
        .expect("a place again")
        .into_inner();
    let j = submit(&mut c, req("echo", "after")).await;
    let first = tokio::time::timeout(Duration::from_secs(10), fresh.message())
        .await
        .expect("served")
        .expect("not refused")
        .expect("a change");
    assert_eq!(first.job.unwrap().id, j.id);
    drop(held);
    driver.abort();
    drop(child);
}
