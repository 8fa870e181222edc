//! Ordering keys and rate limits, end to end: real daemons over gRPC, on
//! every store, and two PostgreSQL instances sharing keys and a rate.

use std::collections::BTreeMap;

use jobd::proto::{self, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;

const KEYED: &str = r#"
[kinds.keyed]
handler = "sleep"
key_concurrency = 1

[kinds.three]
handler = "sleep"
key_concurrency = 3

[kinds.keyed_fail]
handler = "fail"
key_concurrency = 1
max_attempts = 3
backoff = { initial = "300ms", max = "300ms" }

[kinds.echo]
handler = "echo"
"#;

const RATED: &str = r#"
[kinds.rated]
handler = "echo"
rate = "20/s"

[kinds.shared_rate]
handler = "echo"
rate = "20/s"
burst = 5

[kinds.echo]
handler = "echo"
"#;

fn keyed(kind: &str, key: &str, payload: &str) -> proto::SubmitRequest {
    proto::SubmitRequest {
        ordering_key: key.into(),
        ..req(kind, payload)
    }
}

/// Submits in one batch (so submit order is the list order); returns ids.
async fn submit_all(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    requests: Vec<proto::SubmitRequest>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in requests.chunks(100) {
        let r = c
            .submit_batch(proto::SubmitBatchRequest {
                requests: chunk.to_vec(),
            })
            .await
            .expect("submit batch")
            .into_inner();
        for res in r.results {
            match res.result {
                Some(proto::submit_result::Result::Accepted(r)) => ids.push(r.job.unwrap().id),
                other => panic!("submit failed: {other:?}"),
            }
        }
    }
    ids
}

/// Waits for each job to end; returns the jobs in the order given.
async fn finish_all(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    ids: &[String],
) -> Vec<proto::Job> {
    let mut out = Vec::new();
    for id in ids {
        out.push(wait_terminal(c, id).await);
    }
    out
}

/// (start, end) of a job's last attempt, in µs.
fn span(j: &proto::Job) -> (i64, i64) {
    (micros(&j.started_at), micros(&j.finished_at))
}

/// Most intervals open at one instant.
fn max_overlap(spans: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = spans
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // An end before a start at the same instant: touching is not overlap.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Per key, jobs one at a time in submit order; across keys, at once.
fn assert_fifo_per_key(jobs: &[proto::Job]) {
    let mut by_key: BTreeMap<&str, Vec<&proto::Job>> = BTreeMap::new();
    for j in jobs {
        assert_eq!(state(j), JobState::Succeeded, "{j:?}");
        by_key.entry(&j.ordering_key).or_default().push(j);
    }
    for (key, js) in &by_key {
        for w in js.windows(2) {
            let (a, b) = (span(w[0]), span(w[1]));
            assert!(
                b.0 >= a.1,
                "key {key}: job {} started at {} before job {} (submitted earlier) finished at {}",
                w[1].id,
                b.0,
                w[0].id,
                a.1
            );
        }
    }
    let all: Vec<(i64, i64)> = jobs.iter().map(span).collect();
    assert!(
        max_overlap(&all) > 1,
        "different keys never ran at the same time"
    );
}

async fn fifo_on(head: &str) {
    let d = start_with(&format!("{head}[queue]\nworkers = 16\n"), KEYED).await;
    let mut c = d.client().await;
    let requests = (0..200)
        .map(|i| keyed("keyed", &format!("customer-{}", i % 10), "5"))
        .collect();
    let ids = submit_all(&mut c, requests).await;
    let jobs = finish_all(&mut c, &ids).await;
    assert_fifo_per_key(&jobs);
    d.stop().await;
}

#[tokio::test]
async fn one_key_runs_one_job_at_a_time_in_submit_order_memory() {
    fifo_on("").await;
}

#[tokio::test]
async fn one_key_runs_one_job_at_a_time_in_submit_order_sqlite() {
    fifo_on("store = \"sqlite:{dir}/jobs.db\"\n").await;
}

#[tokio::test]
async fn one_key_runs_one_job_at_a_time_across_two_postgres_instances() {
    let Some(pg) = PgSchema::new("keys2").await else {
        return;
    };
    let a = start_with(&pg.toml("[queue]\nworkers = 16\n"), KEYED).await;
    let b = start_with(&pg.toml("[queue]\nworkers = 16\n"), KEYED).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let requests = (0..200)
        .map(|i| keyed("keyed", &format!("customer-{}", i % 10), "5"))
        .collect();
    let ids = submit_all(&mut ca, requests).await;
    // key_concurrency = 3 on both instances at once, too.
    let three = submit_all(
        &mut cb,
        (0..45).map(|_| keyed("three", "doc", "20")).collect(),
    )
    .await;
    let jobs = finish_all(&mut cb, &ids).await;
    assert_fifo_per_key(&jobs);
    let three = finish_all(&mut ca, &three).await;
    let spans: Vec<_> = three.iter().map(span).collect();
    assert!(max_overlap(&spans) <= 3, "{}", max_overlap(&spans));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn key_concurrency_three_never_runs_more_than_three_of_a_key() {
    for head in ["", "store = \"sqlite:{dir}/jobs.db\"\n"] {
        let d = start_with(&format!("{head}[queue]\nworkers = 16\n"), KEYED).await;
        let mut c = d.client().await;
        let ids = submit_all(
            &mut c,
            (0..60).map(|_| keyed("three", "doc", "20")).collect(),
        )
        .await;
        let jobs = finish_all(&mut c, &ids).await;
        let spans: Vec<_> = jobs.iter().map(span).collect();
        let most = max_overlap(&spans);
        assert!(most <= 3, "{head}: {most} jobs of one key ran at once");
        assert!(most >= 2, "{head}: the key never ran jobs side by side");
        d.stop().await;
    }
}

#[tokio::test]
async fn a_retrying_head_blocks_its_key_and_no_other() {
    let d = start_with("[queue]\nworkers = 4\n", KEYED).await;
    let mut c = d.client().await;
    // Key a: its head fails twice (300 ms backoff each) before it succeeds.
    let ids = submit_all(
        &mut c,
        vec![
            keyed("keyed_fail", "a", "until:3"),
            keyed("keyed_fail", "a", "until:1"),
            keyed("keyed_fail", "b", "until:1"),
            keyed("keyed_fail", "b", "until:1"),
            // No key: never held back.
            req("keyed_fail", "until:1"),
        ],
    )
    .await;
    let jobs = finish_all(&mut c, &ids).await;
    for j in &jobs {
        assert_eq!(state(j), JobState::Succeeded, "{j:?}");
    }
    let (head, next) = (&jobs[0], &jobs[1]);
    assert_eq!(head.attempt, 3);
    assert!(
        span(next).0 >= span(head).1,
        "a's second job started while its head was retrying"
    );
    for other in &jobs[2..] {
        assert!(
            span(other).1 < span(head).1,
            "job {} waited for another key's retries",
            other.id
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn a_failed_or_cancelled_head_releases_its_key() {
    let kinds = "[kinds.k]\nhandler = \"fail\"\nkey_concurrency = 1\nmax_attempts = 1\n\
                 [kinds.s]\nhandler = \"sleep\"\nkey_concurrency = 1\n";
    let d = start_with("", kinds).await;
    let mut c = d.client().await;
    let ids = submit_all(
        &mut c,
        vec![keyed("k", "x", "permanent"), keyed("k", "x", "until:1")],
    )
    .await;
    let jobs = finish_all(&mut c, &ids).await;
    assert_eq!(state(&jobs[0]), JobState::Failed);
    assert_eq!(state(&jobs[1]), JobState::Succeeded);
    // A long head, cancelled: the next job of its key runs.
    let ids = submit_all(&mut c, vec![keyed("s", "y", "60000"), keyed("s", "y", "1")]).await;
    wait_for(&mut c, &ids[0], |s| s == JobState::Running).await;
    c.cancel(proto::CancelRequest { id: ids[0].clone() })
        .await
        .unwrap();
    assert_eq!(
        state(&wait_terminal(&mut c, &ids[1]).await),
        JobState::Succeeded
    );
    d.stop().await;
}

#[tokio::test]
async fn bad_ordering_keys_are_invalid_argument_and_the_key_is_listed() {
    let d = start_with("", KEYED).await;
    let mut c = d.client().await;
    for (key, why) in [
        ("k".repeat(257), "at most 256 bytes"),
        ("a\0b".to_string(), "NUL"),
    ] {
        let e = c.submit(keyed("keyed", &key, "1")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("ordering_key"), "{e:?}");
        let details = tonic_types::StatusExt::get_details_bad_request(&e).expect("BadRequest");
        assert!(
            details.field_violations[0].description.contains(why),
            "{details:?}"
        );
        let e = c
            .list_jobs(proto::ListJobsRequest {
                ordering_key: key,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // 256 bytes is fine; GetStatus and ListJobs show the key.
    let long = "k".repeat(256);
    let j = submit(&mut c, keyed("keyed", &long, "1")).await;
    assert_eq!(j.ordering_key, long);
    submit(&mut c, keyed("keyed", "other", "1")).await;
    assert_eq!(status(&mut c, &j.id).await.ordering_key, long);
    let page = c
        .list_jobs(proto::ListJobsRequest {
            ordering_key: long.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, j.id);
    // The key is part of the idempotent request: another key is a conflict.
    let mut r = keyed("keyed", "a", "1");
    r.idempotency_key = "once".into();
    submit(&mut c, r.clone()).await;
    r.ordering_key = "b".into();
    assert_eq!(c.submit(r).await.unwrap_err().code(), Code::AlreadyExists);
    d.stop().await;
}

/// Asserts that no stretch of `starts` (µs, sorted) holds more starts than
/// a bucket of `burst` refilled at `rate` per second allows.
fn assert_within_bucket(starts: &[i64], rate: f64, burst: f64) {
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as f64;
            let secs = (starts[j] - starts[i]) as f64 / 1e6;
            // One token of slack for clock rounding at the edges.
            assert!(
                n <= burst + rate * secs + 1.0,
                "{n} starts within {secs:.3} s: faster than {rate}/s with burst {burst}"
            );
        }
    }
}

#[tokio::test]
async fn a_rate_limit_spreads_starts_and_other_kinds_go_on() {
    let d = start_with(
        "store = \"sqlite:{dir}/jobs.db\"\n[queue]\nworkers = 16\n",
        RATED,
    )
    .await;
    let mut c = d.client().await;
    let rated = submit_all(&mut c, (0..200).map(|_| req("rated", "x")).collect()).await;
    let t0 = std::time::Instant::now();
    let echo = submit_all(&mut c, (0..100).map(|_| req("echo", "x")).collect()).await;
    let echo = finish_all(&mut c, &echo).await;
    let echo_done = t0.elapsed();
    let rated = finish_all(&mut c, &rated).await;
    let mut starts: Vec<i64> = rated.iter().map(|j| span(j).0).collect();
    starts.sort();
    let spread = (starts[199] - starts[0]) as f64 / 1e6;
    // 20 at once (burst), then 180 at 20/s: about 9 s.
    assert!(spread >= 8.5, "200 starts in {spread:.2} s at 20/s");
    assert_within_bucket(&starts, 20.0, 20.0);
    // The echo kind finished long before the rated kind did.
    let last_echo = echo.iter().map(|j| span(j).1).max().unwrap();
    assert!(
        last_echo < starts[100],
        "echo jobs waited behind the rated kind ({echo_done:?})"
    );
    let (_, metrics) = http_get(d.admin, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("jobd_kind_rate_limited_total{kind=\"rated\"}"))
        .expect("rate-limited counter");
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    d.stop().await;
}

#[tokio::test]
async fn two_postgres_instances_share_one_rate() {
    let Some(pg) = PgSchema::new("rate2").await else {
        return;
    };
    let a = start_with(&pg.toml("[queue]\nworkers = 16\n"), RATED).await;
    let b = start_with(&pg.toml("[queue]\nworkers = 16\n"), RATED).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ids = submit_all(&mut ca, (0..40).map(|_| req("shared_rate", "a")).collect()).await;
    ids.extend(submit_all(&mut cb, (0..40).map(|_| req("shared_rate", "b")).collect()).await);
    let jobs = finish_all(&mut ca, &ids).await;
    let mut starts: Vec<i64> = jobs.iter().map(|j| span(j).0).collect();
    starts.sort();
    let spread = (starts[79] - starts[0]) as f64 / 1e6;
    // 5 at once, then 75 at 20/s for both together: about 3.75 s (two
    // separate buckets would take half that).
    assert!(spread >= 3.4, "80 starts in {spread:.2} s");
    assert_within_bucket(&starts, 20.0, 5.0);
    a.stop().await;
    b.stop().await;
}

#[test]
fn zero_key_concurrency_and_zero_rates_are_config_errors() {
    for (kind, key) in [
        ("key_concurrency = 0", "kinds.k.key_concurrency"),
        ("rate = \"0/s\"", "kinds.k.rate"),
        ("rate = \"fast\"", "kinds.k.rate"),
        ("rate = \"5/s\"\nburst = 0", "kinds.k.burst"),
        ("burst = 3", "kinds.k.burst"),
    ] {
        let text = format!("store = \"memory:\"\n[kinds.k]\nhandler = \"echo\"\n{kind}\n");
        let e = jobd::Config::from_toml(&text)
            .map_err(|e| e.to_string())
            .and_then(|c| jobd::prepare(c).map(|_| ()).map_err(|e| e.to_string()))
            .expect_err(kind);
        assert!(e.contains(key), "{kind}: {e}");
    }
}

/// #28.10: a key's finish wakes the claim of its next job: 50 no-op jobs of
/// one key (key_concurrency 1) run one after another with no wait between
/// them (before: a median of ~490 ms between one's end and the next start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ordering_key_runs_its_jobs_back_to_back() {
    for store in ["memory:", "sqlite"] {
        let head = if store == "sqlite" {
            "store = \"sqlite:{dir}/jobd.db\"\n".to_string()
        } else {
            format!("store = \"{store}\"\n")
        };
        let d = start_with(
            &head,
            "[kinds.k]\nhandler = \"echo\"\nkey_concurrency = 1\n",
        )
        .await;
        let mut c = d.client().await;
        let started = std::time::Instant::now();
        let mut last = String::new();
        for i in 0..50 {
            let mut r = req("k", &i.to_string());
            r.ordering_key = "user-7".into();
            last = submit(&mut c, r).await.id;
        }
        let j = wait_terminal(&mut c, &last).await;
        let took = started.elapsed();
        assert_eq!(state(&j), JobState::Succeeded);
        eprintln!("{store}: 50 jobs of one key in {took:?}");
        assert!(
            took < std::time::Duration::from_secs(3),
            "{store}: 50 jobs of one key took {took:?}"
        );
        d.stop().await;
    }
}
