//! Hostile clients: sockets that never speak (slowloris) and request bodies
//! that are never finished. Each test opens what the limit allows plus more,
//! then measures what a well-behaved client sees and what the daemon holds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::binary::spawn_daemon;
use crate::helpers::*;

/// What a well-behaved client may wait for Health/Check, connect included,
/// while the daemon is under attack.
pub const HEALTH_BOUND: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to `need` if it is lower (bounded by
/// the hard limit); the tests below hold both ends of over a thousand sockets.
fn raise_fd_limit(need: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_cur < need {
            l.rlim_cur = need.min(l.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        }
    }
    assert!(
        l.rlim_cur >= need,
        "need {need} open files, the hard limit is {}",
        l.rlim_max
    );
}

/// Opens `n` connections that never finish the HTTP/2 handshake: half send
/// nothing, half the first 10 bytes of the preface.
pub async fn silent_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 1 {
            s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..10])
                .await
                .unwrap();
        }
        out.push(s);
    }
    out
}

/// Connects afresh and asks Health/Check; returns the time it took.
async fn health_check_time(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let check = async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        HealthClient::new(ch)
            .check(HealthCheckRequest::default())
            .await
            .expect("health check")
    };
    // Bounded so that a locked-out daemon fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("Health/Check answered within 10 s");
    started.elapsed()
}

async fn slowloris(max_connections: usize, extra: usize) {
    raise_fd_limit(2 * (max_connections + extra) as u64 + 512);
    let d = start(&format!(
        "[limits]\nmax_connections = {max_connections}\nhandshake_timeout = \"2s\"\n"
    ))
    .await;
    let silent = silent_sockets(d.addr, max_connections + extra).await;
    for _ in 0..3 {
        let took = health_check_time(d.addr).await;
        eprintln!(
            "Health/Check with {} silent sockets, max_connections = {max_connections}: {took:?}",
            silent.len()
        );
        assert!(
            took < HEALTH_BOUND,
            "Health/Check took {took:?} with {} silent sockets (max_connections = {max_connections})",
            silent.len()
        );
    }
    // The silent sockets are all closed by the server: the oldest evicted
    // by newer ones, the rest at the handshake deadline (2 s; 20 s bound).
    let closed = silent.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                // The server's SETTINGS may come first.
                Ok(n) if n > 0 => continue,
                _ => return,
            }
        }
    });
    tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(closed),
    )
    .await
    .expect("silent connections closed by the handshake deadline");
    // Still serving afterwards.
    assert!(health_check_time(d.addr).await < HEALTH_BOUND);
    d.stop().await;
}

#[tokio::test]
async fn slowloris_at_a_small_connection_limit_does_not_lock_out_clients() {
    slowloris(64, 64).await;
}

#[tokio::test]
async fn slowloris_at_the_default_connection_limit_does_not_lock_out_clients() {
    slowloris(jobd::config::DEFAULT_MAX_CONNECTIONS, 64).await;
}

/// A peer that finished its handshake keeps its place: at the bound with
/// every connection speaking, a new client waits and is not served early
/// (covered in limits.rs), and speaking clients are never evicted.
#[tokio::test]
async fn speaking_connections_are_not_evicted_by_silent_ones() {
    let d = start("[limits]\nmax_connections = 4\nhandshake_timeout = \"30s\"\n").await;
    let mut a = d.client().await;
    submit(&mut a, req("echo", "a")).await;
    let _silent = silent_sockets(d.addr, 16).await;
    // `a` spoke before the silent ones came: it still has its connection.
    tokio::time::timeout(Duration::from_secs(5), submit(&mut a, req("echo", "b")))
        .await
        .expect("speaking client still served");
    assert!(health_check_time(d.addr).await < HEALTH_BOUND);
    d.stop().await;
}

#[test]
fn hostile_client_limits_are_validated_naming_the_key() {
    for (text, key) in [
        ("handshake_timeout = \"0s\"", "limits.handshake_timeout"),
        ("max_buffered_request_bytes = 0", "limits.max_buffered_request_bytes"),
        (
            "max_buffered_request_bytes_per_connection = 0",
            "limits.max_buffered_request_bytes_per_connection",
        ),
        // Smaller than the largest request (4 MiB by default): never served.
        (
            "max_buffered_request_bytes_per_connection = 1048576",
            "limits.max_buffered_request_bytes_per_connection",
        ),
        (
            "max_buffered_request_bytes = 8388608\nmax_buffered_request_bytes_per_connection = 16777216",
            "limits.max_buffered_request_bytes",
        ),
    ] {
        let config = jobd::Config::from_toml(&format!("[limits]\n{text}\n")).unwrap();
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{key} not named in: {e}");
    }
    let ok = "[limits]\nmax_buffered_request_bytes = 8388608\nmax_buffered_request_bytes_per_connection = 4194309\n";
    jobd::Config::from_toml(ok).unwrap().validate().unwrap();
}

/// VmRSS and VmHWM (peak) of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MIB: u64 = 1024 * 1024;

/// How a flood stream ended.
enum Flood {
    /// Every byte went out (the server read them all and holds them). The
    /// handles keep the stream open: dropping them resets it.
    Sent(h2::client::ResponseFuture, h2::SendStream<Bytes>),
    /// The server ended the request; its gRPC status code, if it gave one.
    Refused(Option<i32>),
}

fn grpc_status(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// One stream: a Submit whose gRPC frame declares `declared` bytes and
/// carries one byte fewer, so the message is never whole.
async fn flood_stream(
    h2: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    declared: u32,
) -> Flood {
    use futures_util::future::poll_fn;
    let Ok(mut h2) = h2.ready().await else {
        return Flood::Refused(None);
    };
    let req = http::Request::post(format!("http://{addr}/jobd.v1.JobService/Submit"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let Ok((response, mut body)) = h2.send_request(req, false) else {
        return Flood::Refused(None);
    };
    let zeros = Bytes::from(vec![0u8; 1 << 20]);
    let mut header = vec![0u8];
    header.extend_from_slice(&declared.to_be_bytes());
    let mut chunks = vec![Bytes::from(header)];
    let mut left = declared as usize - 1;
    let mut pending = Bytes::new();
    let mut refused = false;
    loop {
        if pending.is_empty() {
            if let Some(c) = chunks.pop() {
                pending = c;
            } else if left > 0 {
                let n = left.min(zeros.len());
                pending = zeros.slice(..n);
                left -= n;
            } else {
                break;
            }
        }
        body.reserve_capacity(pending.len());
        let cap = match poll_fn(|cx| body.poll_capacity(cx)).await {
            Some(Ok(c)) => c,
            _ => {
                refused = true;
                break;
            }
        };
        if cap == 0 {
            continue;
        }
        let part = pending.split_to(cap.min(pending.len()));
        if body.send_data(part, false).is_err() {
            refused = true;
            break;
        }
    }
    if !refused {
        // Held by the server until `request_timeout`; the test ends first.
        return Flood::Sent(response, body);
    }
    let code = async {
        let r = response.await.ok()?;
        if let Some(c) = grpc_status(r.headers()) {
            return Some(c);
        }
        let t = r.into_body().trailers().await.ok()??;
        grpc_status(&t)
    };
    Flood::Refused(
        tokio::time::timeout(Duration::from_secs(10), code)
            .await
            .ok()
            .flatten(),
    )
}

/// The flood from the issue against the real binary with default limits:
/// 8 connections x 64 streams, each declaring a 4 MiB message and sending
/// 4 MiB - 1 byte (2 GiB in all). jobd's RSS must stay within the
/// per-connection budgets (8 x 16 MiB) plus room for the allocator, well
/// under 256 MiB above idle; the refused requests see RESOURCE_EXHAUSTED;
/// another client is served meanwhile.
#[tokio::test]
async fn unfinished_request_bodies_are_bounded_in_memory() {
    const CONNS: usize = 8;
    const STREAMS: usize = 64;
    const DECLARED: u32 = 4 * 1024 * 1024;
    const BOUND: u64 = 256 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let proc = spawn_daemon(dir.path(), "").await;
    let url = proc.url.clone();
    let child = KillOnDrop(proc.child);
    let pid = child.0.id();
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    let mut c = connect(&url).await;
    submit(&mut c, req("echo", "warm-up")).await;
    let (idle, _) = memory(pid);

    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    let mut drivers = Vec::new();
    for _ in 0..CONNS {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
        drivers.push(tokio::spawn(conn));
        for _ in 0..STREAMS {
            streams.spawn(flood_stream(h2.clone(), addr, DECLARED));
        }
    }
    let (mut held, mut exhausted, mut other) = (Vec::new(), 0, Vec::new());
    while let Some(r) = tokio::time::timeout(Duration::from_secs(60), streams.join_next())
        .await
        .expect("flood streams all sent or refused within 60 s")
    {
        match r.unwrap() {
            Flood::Sent(r, b) => held.push((r, b)),
            Flood::Refused(Some(8)) => exhausted += 1,
            Flood::Refused(code) => other.push(code),
        }
    }
    let flood_time = started.elapsed();
    let sent = held.len();

    // Meanwhile (the sent streams are still held): another client is served.
    let t = Instant::now();
    let mut fresh = connect(&url).await;
    let job = tokio::time::timeout(Duration::from_secs(5), async {
        HealthClient::new(
            Channel::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
        .check(HealthCheckRequest::default())
        .await
        .expect("health check during the flood");
        submit(&mut fresh, req("echo", "still served")).await
    })
    .await
    .expect("Health/Check and Submit served during the flood");
    assert_eq!(job.kind, "echo");
    let served_in = t.elapsed();

    let (rss, peak) = memory(pid);
    eprintln!(
        "flood: {sent} sent, {exhausted} RESOURCE_EXHAUSTED, other {other:?} in {flood_time:?}; \
         idle {} MiB, now {} MiB, peak {} MiB; another client served in {served_in:?}",
        idle / MIB,
        rss / MIB,
        peak / MIB
    );
    assert!(
        peak < idle + BOUND,
        "peak RSS {} MiB, idle {} MiB: more than {} MiB above idle",
        peak / MIB,
        idle / MIB,
        BOUND / MIB
    );
    assert!(
        other.is_empty(),
        "refused without RESOURCE_EXHAUSTED: {other:?}"
    );
    // 16 MiB per connection holds at most 3 whole 4 MiB messages; a 4th
    // stream's tail may fit in the flow-control window before it is refused.
    assert!(sent <= CONNS * 4, "{sent} streams were sent in full");
    assert_eq!(sent + exhausted, CONNS * STREAMS);
    drop(held);
    drop(drivers);
    drop(child);
}

/// An HTTP/2 connection from `source` that finishes its handshake (the
/// preface, SETTINGS; h2 answers PINGs) and never opens a stream. Its
/// driver task ends when the server closes the connection.
async fn idle_h2(addr: SocketAddr, source: &str) -> tokio::task::JoinHandle<()> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = sock.connect(addr).await.expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _keep = h2;
        let _ = conn.await;
    })
}

/// #28.5: connections that speak HTTP/2 but never open a stream, more than
/// `max_connections` of them from one host, lock no client out (the
/// longest-idle is evicted for a new one), are closed at
/// `idle_connection_timeout`, and `max_connections_per_peer` bounds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_open_a_stream_do_not_lock_out_clients() {
    const MAX: usize = 64;
    raise_fd_limit(4 * MAX as u64 + 256);
    let d = start(&format!(
        "[limits]\nmax_connections = {MAX}\nmax_connections_per_peer = {}\n\
         idle_connection_timeout = \"2s\"\n",
        MAX + 16
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..MAX + 16 {
        idle.push(idle_h2(d.addr, "127.0.0.2").await);
    }
    // One more from that host is past its cap: closed once it has spoken.
    let over = idle_h2(d.addr, "127.0.0.2").await;
    tokio::time::timeout(Duration::from_secs(5), over)
        .await
        .expect("the connection past max_connections_per_peer is closed")
        .unwrap();
    // Every place is held by a connection that spoke: a new client still
    // gets one, at once.
    let took = health_check_time(d.addr).await;
    assert!(took < HEALTH_BOUND, "Health/Check took {took:?}");
    // The rest are closed once idle for 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for t in idle {
        tokio::time::timeout_at(deadline, t)
            .await
            .expect("idle connections are closed at idle_connection_timeout")
            .unwrap();
    }
    d.stop().await;
}
