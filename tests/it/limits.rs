//! Connection-level bounds, each at its limit and one past it.

use std::time::Duration;

use jobd::proto;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn watchers_per_connection_are_bounded_and_other_connections_still_watch() {
    let d = start("[limits]\nmax_watchers_per_connection = 2\n").await;
    let mut a = d.client().await;
    let job = submit(&mut a, req("sleep", "60000")).await;
    let w = || proto::WatchStatusRequest {
        id: job.id.clone(),
        after_sequence: 0,
    };
    let s1 = a.watch_status(w()).await.unwrap();
    let _s2 = a.watch_status(w()).await.unwrap();
    let e = a.watch_status(w()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Another connection has its own places.
    let mut b = d.client().await;
    let _s3 = b.watch_status(w()).await.unwrap();
    // Closing a stream frees its place.
    drop(s1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = a.watch_status(w()).await {
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(tokio::time::Instant::now() < deadline, "place not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// At `max_connections` with every connection busy (a request under way),
/// a new client waits (in the kernel's backlog) and is served as soon as
/// one becomes idle, taking its place; an idle connection's place goes to
/// a new client at once (#28.5).
#[tokio::test]
async fn max_connections_makes_extra_clients_wait_not_fail() {
    let d = start("[limits]\nmax_connections = 2\n").await;
    let mut a = d.client().await;
    let mut b = d.client().await;
    let long = submit(&mut a, req("sleep", "60000")).await;
    let watch = |id: String| proto::WatchStatusRequest {
        id,
        after_sequence: 0,
    };
    let mut busy_a = a
        .watch_status(watch(long.id.clone()))
        .await
        .unwrap()
        .into_inner();
    let mut busy_b = b
        .watch_status(watch(long.id.clone()))
        .await
        .unwrap()
        .into_inner();
    busy_a.message().await.unwrap();
    busy_b.message().await.unwrap();
    // A third connection is not served while both are busy...
    let url = d.url();
    let third = tokio::spawn(async move {
        let mut c = connect(&url).await;
        submit(&mut c, req("echo", "c")).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "third connection was served past the bound"
    );
    // ...and is served as soon as one is idle.
    drop(busy_a);
    let job = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.kind, "echo");
    // The busy one was not touched.
    drop(busy_b);
    submit(&mut b, req("echo", "still served")).await;
    d.stop().await;
}

#[tokio::test]
async fn concurrent_streams_per_connection_are_bounded() {
    let d = start("[limits]\nmax_concurrent_streams = 3\n").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "60000")).await;
    let w = proto::WatchStatusRequest {
        id: job.id.clone(),
        after_sequence: 0,
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(c.watch_status(w.clone()).await.unwrap());
    }
    // The fourth RPC on this connection waits for a stream slot.
    let mut c4 = c.clone();
    let id = job.id.clone();
    let waiting = tokio::spawn(async move { c4.get_status(proto::GetStatusRequest { id }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a 4th stream ran on a connection limited to 3"
    );
    // Other connections are unaffected.
    let mut other = d.client().await;
    status(&mut other, &job.id).await;
    open.pop();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok());
}

#[tokio::test]
async fn request_timeout_ceiling_cancels_slow_rpcs() {
    // A durable 1000-job batch (SQLite, fsync) takes well over 5 ms.
    let d = start("store = \"sqlite:{dir}/jobd.db\"\n[limits]\nrequest_timeout = \"5ms\"\n").await;
    let mut c = d.client().await;
    let mut timed_out = 0;
    for _ in 0..20 {
        let requests = vec![req("echo", "x"); 1000];
        match c.submit_batch(proto::SubmitBatchRequest { requests }).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::Cancelled, "{e}");
                timed_out += 1;
            }
        }
    }
    assert!(timed_out > 0, "no 1000-job batch took more than 5 ms?");
    // Quick RPCs are still answered (a read; retried in case a busy test
    // machine stalls one past 5 ms too).
    let mut served = false;
    for _ in 0..50 {
        let id = uuid::Uuid::now_v7().to_string();
        match c.get_status(proto::GetStatusRequest { id }).await {
            Err(e) if e.code() == Code::NotFound => {
                served = true;
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Cancelled, "{e}"),
            Ok(_) => panic!("a random id exists?"),
        }
    }
    assert!(served);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_are_never_read_do_not_stall_others() {
    let d = start("").await;
    let mut c = d.client().await;
    // A job with many transitions, watched by 200 streams nobody reads.
    let mut r = req("fail", "until:20");
    r.max_attempts = 20;
    let busy = submit(&mut c, r).await;
    let lazy = d.client().await;
    let mut unread = Vec::new();
    for _ in 0..200 {
        let mut l = lazy.clone();
        unread.push(
            l.watch_status(proto::WatchStatusRequest {
                id: busy.id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap(),
        );
    }
    // Everyone else is served meanwhile, and the busy job finishes.
    for i in 0..50 {
        let j = submit(&mut c, req("echo", &format!("{i}"))).await;
        wait_terminal(&mut c, &j.id).await;
    }
    assert_eq!(
        state(&wait_terminal(&mut c, &busy.id).await),
        proto::JobState::Succeeded
    );
    drop(unread);
    d.stop().await;
}

/// A SubmitBatch of two echo jobs whose encoded size is exactly `total`.
fn batch_of_size(total: usize) -> proto::SubmitBatchRequest {
    use prost::Message;
    let make = |p: usize| proto::SubmitBatchRequest {
        requests: vec![
            req("echo", &"a".repeat(50_000)),
            req("echo", &"b".repeat(p)),
        ],
    };
    let mut p = 0;
    for _ in 0..10 {
        let n = make(p).encoded_len();
        if n == total {
            return make(p);
        }
        p = (p as i64 + total as i64 - n as i64) as usize;
    }
    panic!("cannot build a {total}-byte message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limit_holds_at_its_bound_and_refuses_one_byte_more() {
    let d =
        start("[queue]\nmax_payload_bytes = 60000\n[limits]\nmax_message_bytes = 100000\n").await;
    let mut c = d.client().await;
    let at = c
        .submit_batch(batch_of_size(100_000))
        .await
        .expect("a message of exactly max_message_bytes is served")
        .into_inner();
    assert_eq!(at.results.len(), 2);
    assert!(at
        .results
        .iter()
        .all(|r| matches!(r.result, Some(proto::submit_result::Result::Accepted(_)))));
    let e = c.submit_batch(batch_of_size(100_001)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("100000"), "{}", e.message());
    // The connection and the daemon carry on.
    let ok = submit(&mut c, req("echo", "after")).await;
    assert_eq!(
        wait_terminal(&mut c, &ok.id).await.state,
        proto::JobState::Succeeded as i32
    );
    d.stop().await;
}

/// Replies have a limit too (`max(max_message_bytes, 2 x max_payload_bytes)`):
/// a ListJobs page of jobs with large results ends early, with a token for
/// the rest, instead of failing to encode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_stop_short_of_the_reply_limit() {
    let d =
        start("[queue]\nmax_payload_bytes = 60000\n[limits]\nmax_message_bytes = 100000\n").await;
    let mut c = d.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let j = submit(&mut c, req("echo", &format!("{i}").repeat(50_000))).await;
        wait_terminal(&mut c, &j.id).await;
        ids.push(j.id);
    }
    // 3 results of 50,000 bytes do not fit the 120,000-byte reply limit.
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c
            .list_jobs(proto::ListJobsRequest {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("a page that fits the reply limit")
            .into_inner();
        pages += 1;
        assert!(page.jobs.iter().all(|j| j.result.len() == 50_000));
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every job once, in order");
    assert_eq!(pages, 2, "2 jobs fit in a page, then 1");
    d.stop().await;
}

/// A message of the wrong shape for GetStatus: field 1 is a string there.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAGetStatusRequest {
    #[prost(uint64, tag = "1")]
    id: u64,
}

/// Undecodable protobuf is the client's mistake (INVALID_ARGUMENT, counted
/// as such in the metrics), and a non-gRPC content type is refused with
/// HTTP 415 and UNIMPLEMENTED; neither is INTERNAL.
#[tokio::test]
async fn undecodable_messages_and_wrong_content_types_are_client_errors() {
    let d = start("").await;
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    let r: Result<tonic::Response<proto::GetStatusResponse>, tonic::Status> = g
        .unary(
            tonic::Request::new(NotAGetStatusRequest { id: 7 }),
            http::uri::PathAndQuery::from_static("/jobd.v1.JobService/GetStatus"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/jobd.v1.JobService/GetStatus", d.url()))
        .header("content-type", "application/json")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(ch, req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(res.headers()["grpc-status"], "12");

    let (_, text) = http_get(d.admin, "/metrics").await;
    assert!(
        text.contains(
            "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/GetStatus\",code=\"INVALID_ARGUMENT\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("code=\"INTERNAL\""), "{text}");
    d.stop().await;
}

/// `memory:` holds every payload in RAM: `queue.max_memory_bytes` bounds the
/// bytes, not just the job count (1,000 delayed 1 MiB jobs were 1 GiB).
#[tokio::test]
async fn memory_store_bounds_the_bytes_it_holds() {
    let d = start("[queue]\nmax_memory_bytes = 3000000\n").await;
    let mut c = d.client().await;
    let big = "x".repeat(1024 * 1024);
    let delayed = || {
        let mut r = req("echo", &big);
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        r
    };
    submit(&mut c, delayed()).await;
    submit(&mut c, delayed()).await;
    let e = c.submit(delayed()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Small jobs still fit under the bound.
    submit(&mut c, req("echo", "small")).await;
    d.stop().await;
}

/// `max_result_bytes` must leave every job readable: at most the reply limit
/// less `JOB_REPLY_OVERHEAD`, checked at its bound and one byte past it.
#[test]
fn max_result_bytes_must_fit_a_reply() {
    let config = |head: &str, result: usize| {
        jobd::Config::from_toml(&format!(
            "{head}\n[kinds.big]\nhandler = \"echo\"\nmax_result_bytes = {result}\n"
        ))
        .unwrap()
    };
    let room = jobd::Config::default().max_result_bytes_allowed();
    assert_eq!(room, 4 * 1024 * 1024 - jobd::config::JOB_REPLY_OVERHEAD);
    for (head, result, ok) in [
        ("", room, true),
        ("", room + 1, false),
        ("", 9_000_000, false),
        // Larger payloads raise the reply limit to twice their size.
        ("[queue]\nmax_payload_bytes = 5000000\n", 9_000_000, true),
        ("[limits]\nmax_message_bytes = 9100000\n", 9_000_000, true),
        ("[limits]\nmax_message_bytes = 9010000\n", 9_000_000, false),
    ] {
        match jobd::prepare(config(head, result)) {
            Ok(_) => assert!(ok, "{head} {result} accepted"),
            Err(e) => {
                assert!(!ok, "{head} {result}: {e}");
                assert!(e.to_string().contains("kinds.big.max_result_bytes"), "{e}");
            }
        }
    }
}

/// A job stored under larger limits than the daemon has now (here: a 9 MB
/// result, then a restart with the defaults) stays readable: GetStatus,
/// WatchStatus and ListJobs answer it with its result cut and
/// `result_truncated` set, and paging goes past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_a_reply_is_answered_cut_and_paging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("store = \"sqlite:{}/jobd.db\"\n", dir.path().display());
    let big_payload: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    let ids = {
        let d = start_with(
            &format!("{store}[queue]\nmax_payload_bytes = 10000000\n"),
            "[kinds.echo]\nhandler = \"echo\"\nmax_result_bytes = 9000000\n",
        )
        .await;
        let mut c = d.client().await.max_decoding_message_size(32 << 20);
        let mut ids = Vec::new();
        for payload in [b"small".to_vec(), big_payload.clone(), b"after".to_vec()] {
            let j = submit(
                &mut c,
                proto::SubmitRequest {
                    kind: "echo".into(),
                    payload,
                    ..Default::default()
                },
            )
            .await;
            let done = wait_terminal(&mut c, &j.id).await;
            assert_eq!(state(&done), proto::JobState::Succeeded);
            ids.push(j.id);
        }
        d.stop().await;
        ids
    };
    // The defaults: replies of at most 4 MiB (and a default client's limit).
    let d = start_with(&store, "[kinds.echo]\nhandler = \"echo\"\n").await;
    let mut c = d.client().await;
    let check = |j: &proto::Job| {
        assert_eq!(j.id, ids[1]);
        assert_eq!(state(j), proto::JobState::Succeeded);
        assert!(j.result_truncated);
        assert!(j.result.len() > 3_000_000 && j.result.len() < 4 << 20);
        assert_eq!(j.result[..], big_payload[..j.result.len()], "a prefix");
        assert_eq!(j.payload_size, 9_000_000);
    };
    let got = c
        .get_status(proto::GetStatusRequest { id: ids[1].clone() })
        .await
        .expect("GetStatus answers a job stored with a 9 MB result")
        .into_inner();
    check(got.job.as_ref().unwrap());
    let small = status(&mut c, &ids[0]).await;
    assert!(!small.result_truncated);
    assert_eq!(small.result, b"small");
    let events = watch_all(&mut c, &ids[1])
        .await
        .expect("WatchStatus answers");
    assert_eq!(events.len(), 1);
    check(events[0].job.as_ref().unwrap());
    for page_size in [1, 10] {
        let (mut seen, mut token) = (Vec::new(), String::new());
        for _ in 0..10 {
            let page = c
                .list_jobs(proto::ListJobsRequest {
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("ListJobs answers every page")
                .into_inner();
            for j in &page.jobs {
                if j.id == ids[1] {
                    check(j);
                } else {
                    assert!(!j.result_truncated);
                }
            }
            seen.extend(page.jobs.into_iter().map(|j| j.id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, ids, "page_size {page_size}: every job once, in order");
    }
    d.stop().await;
}

/// A channel whose connection comes from `from` (any 127.0.0.0/8 address is
/// this host), so a test can be two clients on two addresses.
pub async fn channel_from(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(std::net::SocketAddr::new(from, 0))?;
            let c = s.connect(addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(c))
        }))
        .await
        .expect("connect")
}

/// Threads and open file descriptors of process `pid`.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    (count("task"), count("fd"))
}

/// The hostile client of the issue: 10,000 WatchStatus streams from one
/// host that never read. Another client must still watch, and the daemon's
/// threads and file descriptors must stay bounded (SQLite reads for the
/// watch snapshots wait for one of a few readers instead of taking a
/// blocking thread and a connection each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unread_watches_leave_others_served_and_the_daemon_bounded() {
    const HOSTILE: usize = 10_000;
    const PER_CONN: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    // Most of the streams get in (and so read the store); the rest are
    // refused by the per-client bound.
    let proc =
        crate::binary::spawn_daemon(dir.path(), "[limits]\nmax_watchers_per_client = 9000\n").await;
    let url = proc.url.clone();
    let p = KillOnDrop(proc.child);
    let pid = p.0.id();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut good =
        jobd::proto::job_service_client::JobServiceClient::new(channel_from(addr, other).await);
    let job = submit(&mut good, req("sleep", "600000")).await;
    let (threads_idle, fds_idle) = threads_and_fds(pid);

    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut max = (0, 0);
            while !stop.is_cancelled() {
                let (t, f) = threads_and_fds(pid);
                max = (max.0.max(t), max.1.max(f));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max
        }
    });
    let hostile_from = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut chans = Vec::new();
    for _ in 0..HOSTILE.div_ceil(PER_CONN) {
        chans.push(channel_from(addr, hostile_from).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..HOSTILE {
        let mut c =
            jobd::proto::job_service_client::JobServiceClient::new(chans[i / PER_CONN].clone());
        let id = job.id.clone();
        calls.spawn(async move {
            c.watch_status(proto::WatchStatusRequest {
                id,
                after_sequence: 0,
            })
            .await
        });
    }
    let (mut open, mut refused) = (Vec::new(), 0);
    while let Some(r) = calls.join_next().await {
        match r.unwrap() {
            Ok(s) => open.push(s),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                refused += 1;
            }
        }
    }
    stop.cancel();
    let (threads_max, fds_max) = sampler.await.unwrap();
    // A client on another address is still served, start to end.
    let w = good
        .watch_status(proto::WatchStatusRequest {
            id: job.id.clone(),
            after_sequence: 0,
        })
        .await;
    eprintln!(
        "{HOSTILE} unread watches: {} open, {refused} refused; daemon threads {threads_idle} -> max \
         {threads_max}, fds {fds_idle} -> max {fds_max}; another client's watch: {:?}",
        open.len(),
        w.as_ref().map(|_| "served").map_err(|e| e.code()),
    );
    let mut w = w.expect("another client's WatchStatus is served");
    assert!(w.get_mut().message().await.unwrap().is_some());
    good.cancel(proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap();
    let last = w.get_mut().message().await.unwrap().unwrap();
    assert_eq!(
        state(last.job.as_ref().unwrap()),
        proto::JobState::Cancelled
    );
    assert_eq!(open.len(), 9000);
    assert_eq!(refused, HOSTILE - 9000);
    // Runtime workers, the SQLite writer, a few readers, some slack; and one
    // descriptor per connection besides the store's few.
    assert!(
        threads_max <= threads_idle + 16,
        "threads {threads_idle} -> {threads_max}"
    );
    assert!(
        fds_max <= fds_idle + chans.len() + 24,
        "fds {fds_idle} -> {fds_max}"
    );
    drop(open);
}

fn watch_req(id: &str) -> proto::WatchStatusRequest {
    proto::WatchStatusRequest {
        id: id.into(),
        after_sequence: 0,
    }
}

/// Without auth, watchers are bounded per client IP address, across all of
/// its connections; another address has places of its own.
#[tokio::test]
async fn watchers_per_client_ip_are_bounded_across_connections() {
    let d = start("[queue]\nmax_watchers = 10\n[limits]\nmax_watchers_per_client = 3\n").await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("sleep", "60000")).await;
    let here = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut a1 = proto::job_service_client::JobServiceClient::new(channel_from(d.addr, here).await);
    let mut a2 = proto::job_service_client::JobServiceClient::new(channel_from(d.addr, here).await);
    let s1 = a1.watch_status(watch_req(&job.id)).await.unwrap();
    let _s2 = a1.watch_status(watch_req(&job.id)).await.unwrap();
    let _s3 = a2.watch_status(watch_req(&job.id)).await.unwrap();
    let e = a2.watch_status(watch_req(&job.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("for this client (at most 3)"), "{e}");
    let there = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut b = proto::job_service_client::JobServiceClient::new(channel_from(d.addr, there).await);
    let _s4 = b.watch_status(watch_req(&job.id)).await.unwrap();
    // A closed stream gives its place back, to any connection of the client.
    drop(s1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = a2.watch_status(watch_req(&job.id)).await {
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            tokio::time::Instant::now() < deadline,
            "place not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.stop().await;
}

/// With auth on, watchers are bounded per token, whatever the address.
#[tokio::test]
async fn watchers_per_token_are_bounded() {
    const A: &str = "token-a-0123456789abcdef";
    const B: &str = "token-b-0123456789abcdef";
    let d = start(&format!(
        "[limits]\nmax_watchers_per_client = 2\n[auth]\ntokens = [\
         {{ token = \"{A}\", role = \"submit\" }}, {{ token = \"{B}\", role = \"submit\" }}]\n"
    ))
    .await;
    let client = |token: &'static str, ch: tonic::transport::Channel| {
        proto::job_service_client::JobServiceClient::with_interceptor(
            ch,
            move |mut r: tonic::Request<()>| {
                let v = format!("Bearer {token}").parse().unwrap();
                r.metadata_mut().insert("authorization", v);
                Ok(r)
            },
        )
    };
    let here = std::net::IpAddr::from([127, 0, 0, 1]);
    let there = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut a1 = client(A, channel_from(d.addr, here).await);
    let mut a2 = client(A, channel_from(d.addr, there).await);
    let job = a1.submit(req("sleep", "60000")).await.unwrap().into_inner();
    let id = job.job.unwrap().id;
    let _s1 = a1.watch_status(watch_req(&id)).await.unwrap();
    let _s2 = a2.watch_status(watch_req(&id)).await.unwrap();
    let e = a1.watch_status(watch_req(&id)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // Another token from the same address is another client.
    let mut b = client(B, channel_from(d.addr, here).await);
    let _s3 = b.watch_status(watch_req(&id)).await.unwrap();
    d.stop().await;
}

/// A client that stops reading while events wait loses its watcher place
/// after `watch_idle_timeout`; one watching a quiet job keeps it however
/// long. The job here makes ~180 events of ~9 KB: more than the client's
/// 64 KiB window and the server's 400 KB HTTP/2 send buffer hold, so the
/// stream stops being polled and events wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_client_stopped_reading_is_ended_and_its_place_freed() {
    let d = start("[queue]\nmax_watchers = 1\n[limits]\nwatch_idle_timeout = \"300ms\"\n").await;
    let mut c = d.client().await;
    let mut r = req("fail", "until:60");
    r.max_attempts = 100;
    r.run_at = Some(ts_in(Duration::from_millis(1500)));
    r.labels = (0..32)
        .map(|i| (format!("k{i}"), "v".repeat(256)))
        .collect();
    let busy = submit(&mut c, r).await;
    let other = submit(&mut c, req("sleep", "60000")).await;
    let ch = tonic::transport::Endpoint::from_shared(d.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut lazy = proto::job_service_client::JobServiceClient::new(ch);
    let mut stalled = lazy.watch_status(watch_req(&busy.id)).await.unwrap();
    // Quiet while the job waits for its start: it keeps its place.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let e = c.watch_status(watch_req(&other.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Then events pile up unread: it is ended and its place given back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut w = loop {
        match c.watch_status(watch_req(&other.id)).await {
            Ok(w) => break w,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a watcher that stopped reading still holds its place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(w.get_mut().message().await.unwrap().is_some());
    let done = wait_terminal(&mut c, &busy.id).await;
    assert_eq!(state(&done), proto::JobState::Succeeded);
    // If it reads again, it gets what was buffered, then learns why its
    // stream ended (never a silent end without the terminal state).
    let s = stalled.get_mut();
    let mut got = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("the ended stream answers")
        {
            Ok(Some(e)) => {
                assert!(!is_terminal(state(e.job.as_ref().unwrap())));
                got += 1;
            }
            Ok(None) => panic!("ended OK after {got} events, without the terminal one"),
            Err(e) => break e,
        }
    };
    assert!(got > 0);
    assert_eq!(end.code(), Code::ResourceExhausted, "{end}");
    assert!(end.message().contains("after_sequence"), "{end}");
    d.stop().await;
}
