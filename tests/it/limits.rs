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

#[tokio::test]
async fn max_connections_makes_extra_clients_wait_not_fail() {
    let d = start("[limits]\nmax_connections = 2\n").await;
    let mut a = d.client().await;
    let mut b = d.client().await;
    submit(&mut a, req("echo", "a")).await;
    submit(&mut b, req("echo", "b")).await;
    // A third connection is not served while two are open...
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
    // ...and is served as soon as one closes.
    drop(a);
    let job = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.kind, "echo");
    submit(&mut b, req("echo", "still served")).await;
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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
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
    d.stop().await.unwrap();
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
        d.stop().await.unwrap();
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
    d.stop().await.unwrap();
}
