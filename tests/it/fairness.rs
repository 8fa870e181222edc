//! Fair claiming (#33), end to end: a tenant's flood does not hold up
//! another tenant's first job on a round_robin kind (it does on a plain
//! one), `key_rate` holds per key (across two PostgreSQL instances), and
//! bad settings and keys are refused naming the field.

use std::time::{Duration, Instant};

use jobd::proto::{self, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;

/// Two slots per kind and 50 ms jobs: a flood keeps both busy for minutes.
const KINDS: &str = r#"
[kinds.fair]
handler = "sleep"
concurrency = 2
fairness = "round_robin"

[kinds.plain]
handler = "sleep"
concurrency = 2

[kinds.keyrated]
handler = "echo"
fairness = "round_robin"
key_rate = "10/s"
key_burst = 2
"#;

const HEAD: &str = "[queue]\nworkers = 16\nmax_backlog = 200000\n";
const FLOOD: usize = 50_000;

type Client = proto::job_service_client::JobServiceClient<tonic::transport::Channel>;

fn tenant(kind: &str, key: &str, payload: &str) -> proto::SubmitRequest {
    proto::SubmitRequest {
        fairness_key: key.into(),
        ..req(kind, payload)
    }
}

/// Tenant A's flood, in batches of 1,000.
async fn flood(c: &mut Client, kind: &str) -> Duration {
    let t = Instant::now();
    for _ in 0..FLOOD / 1000 {
        let r = c
            .submit_batch(proto::SubmitBatchRequest {
                requests: vec![tenant(kind, "tenant-a", "50"); 1000],
            })
            .await
            .expect("flood batch")
            .into_inner();
        assert!(r
            .results
            .iter()
            .all(|r| matches!(r.result, Some(proto::submit_result::Result::Accepted(_)))));
    }
    t.elapsed()
}

/// Jobs of `kind` that started at or after `from` (µs) and before `to`:
/// only started jobs are listed (RUNNING and SUCCEEDED), a few hundred.
async fn started_between(c: &mut Client, kind: &str, key: &str, from: i64, to: i64) -> usize {
    let mut n = 0;
    for st in [JobState::Running, JobState::Succeeded] {
        let mut token = String::new();
        loop {
            let page = c
                .list_jobs(proto::ListJobsRequest {
                    kind: kind.into(),
                    state: st as i32,
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            n += page
                .jobs
                .iter()
                .filter(|j| j.fairness_key == key && j.started_at.is_some())
                .filter(|j| (from..to).contains(&micros(&j.started_at)))
                .count();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    n
}

fn now_us() -> i64 {
    jobd::job::now_micros()
}

/// A floods 50,000 jobs, then B submits one. On the round_robin kind B's
/// job starts at the next free slot (within one rotation: A and B); on
/// the plain kind it waits behind A's whole flood.
async fn flood_then_one(store: &str, c: &mut Client) {
    let took = flood(c, "fair").await;
    let t0 = now_us();
    let b = submit(c, tenant("fair", "tenant-b", "1")).await;
    let b = wait_for(c, &b.id, |s| s != JobState::Queued).await;
    let started = micros(&b.started_at);
    let delay_ms = (started - t0) as f64 / 1000.0;
    let a_before = started_between(c, "fair", "tenant-a", t0, started).await;
    println!(
        "FAIRNESS FLOOD [{store}] round_robin: tenant B's job started {delay_ms:.1} ms after \
         its submit; {a_before} of tenant A's {FLOOD} queued jobs started in between \
         (kind concurrency 2, 50 ms jobs; flood submitted in {took:.2?})"
    );
    assert!(
        a_before <= 4,
        "{a_before} A jobs started before B: more than one rotation (two slots, two keys)"
    );
    assert!(delay_ms < 2000.0, "B waited {delay_ms} ms");

    let took = flood(c, "plain").await;
    let t0 = now_us();
    let b = submit(c, tenant("plain", "tenant-b", "1")).await;
    let window = Duration::from_millis(1500);
    tokio::time::sleep(window).await;
    let b = status(c, &b.id).await;
    let a_meanwhile = started_between(c, "plain", "tenant-a", t0, now_us()).await;
    let a_started = started_between(c, "plain", "tenant-a", 0, i64::MAX).await;
    let ahead = FLOOD - a_started;
    println!(
        "FAIRNESS FLOOD [{store}] plain (fifo): tenant B's job still {:?} after {window:?}; \
         {a_meanwhile} A jobs started meanwhile and {ahead} are still ahead of it \
         (about {:.0} s more at 2 x 50 ms; flood submitted in {took:.2?})",
        state(&b),
        ahead as f64 * 0.05 / 2.0
    );
    assert_eq!(state(&b), JobState::Queued, "the plain kind is FIFO");
    assert!(a_meanwhile >= 10, "the flood did not run: {a_meanwhile}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_delays_another_by_one_rotation_memory() {
    let d = start_with(HEAD, KINDS).await;
    flood_then_one("memory", &mut d.client().await).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_delays_another_by_one_rotation_sqlite() {
    let head = format!("store = \"sqlite:{{dir}}/jobs.db\"\n{HEAD}");
    let d = start_with(&head, KINDS).await;
    flood_then_one("sqlite", &mut d.client().await).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_delays_another_by_one_rotation_postgres() {
    let Some(pg) = PgSchema::new("fairflood").await else {
        return;
    };
    let d = start_with(&pg.toml(HEAD), KINDS).await;
    flood_then_one("postgres", &mut d.client().await).await;
    d.stop().await;
}

/// Asserts that no stretch of `starts` (µs, sorted) holds more starts than
/// a bucket of `burst` refilled at `rate` per second allows.
fn assert_within_bucket(key: &str, starts: &[i64], rate: f64, burst: f64) {
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as f64;
            let secs = (starts[j] - starts[i]) as f64 / 1e6;
            // One token of slack for clock rounding at the edges.
            assert!(
                n <= burst + rate * secs + 1.0,
                "key {key}: {n} starts within {secs:.3} s: faster than {rate}/s, burst {burst}"
            );
        }
    }
}

/// Key x gets 30 jobs (half through each daemon), key y 15: each key's
/// starts fit its own bucket (10/s, burst 2), shared by every daemon, and
/// y is not held up by x's empty bucket.
async fn key_rate_holds(a: &mut Client, b: &mut Client) {
    let mut ids = Vec::new();
    for (second, key) in [(false, "x"), (true, "x"), (false, "y")] {
        let c = if second { &mut *b } else { &mut *a };
        for _ in 0..15 {
            ids.push((key, submit(c, tenant("keyrated", key, "p")).await.id));
        }
    }
    let mut starts: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for (key, id) in &ids {
        let j = wait_terminal(a, id).await;
        assert_eq!(state(&j), JobState::Succeeded);
        starts.entry(key).or_default().push(micros(&j.started_at));
    }
    for (key, s) in starts.iter_mut() {
        s.sort();
        assert_within_bucket(key, s, 10.0, 2.0);
    }
    let (x, y) = (&starts["x"], &starts["y"]);
    let spread = (x[29] - x[0]) as f64 / 1e6;
    // 2 at once, then 28 at 10/s: 2.8 s (a bucket per daemon: half that).
    assert!(spread >= 2.5, "30 starts of key x in {spread:.2} s");
    assert!(y[14] < x[29], "key y waited for key x's bucket");
    println!("KEY RATE: key x's 30 starts took {spread:.2} s at 10/s, burst 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_holds_per_key_sqlite() {
    let head = format!("store = \"sqlite:{{dir}}/jobs.db\"\n{HEAD}");
    let d = start_with(&head, KINDS).await;
    let (mut a, mut b) = (d.client().await, d.client().await);
    key_rate_holds(&mut a, &mut b).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_holds_per_key_across_two_postgres_instances() {
    let Some(pg) = PgSchema::new("keyrate2").await else {
        return;
    };
    let one = start_with(&pg.toml(HEAD), KINDS).await;
    let two = start_with(&pg.toml(HEAD), KINDS).await;
    let (mut a, mut b) = (one.client().await, two.client().await);
    key_rate_holds(&mut a, &mut b).await;
    one.stop().await;
    two.stop().await;
}

#[test]
fn bad_fairness_settings_are_config_errors_naming_the_key() {
    for (kind, key) in [
        ("fairness = \"weighted\"", "fairness"),
        ("key_rate = \"5/s\"", "kinds.k.key_rate"),
        (
            "fairness = \"round_robin\"\nkey_rate = \"0/s\"",
            "kinds.k.key_rate",
        ),
        (
            "fairness = \"round_robin\"\nkey_rate = \"lots\"",
            "kinds.k.key_rate",
        ),
        (
            "fairness = \"round_robin\"\nkey_rate = \"5/s\"\nkey_burst = 0",
            "kinds.k.key_burst",
        ),
        (
            "fairness = \"round_robin\"\nkey_burst = 3",
            "kinds.k.key_burst",
        ),
        (
            "fairness = \"round_robin\"\nkey_concurrency = 1",
            "kinds.k.fairness",
        ),
    ] {
        let text = format!("store = \"memory:\"\n[kinds.k]\nhandler = \"echo\"\n{kind}\n");
        let e = jobd::Config::from_toml(&text)
            .map_err(|e| e.to_string())
            .and_then(|c| jobd::prepare(c).map(|_| ()).map_err(|e| e.to_string()))
            .expect_err(kind);
        assert!(e.contains(key), "{kind}: {e}");
    }
    let ok = "store = \"memory:\"\n[kinds.k]\nhandler = \"echo\"\nfairness = \"round_robin\"\n\
              key_rate = \"600/m\"\n";
    jobd::prepare(jobd::Config::from_toml(ok).unwrap()).expect("valid");
}

#[tokio::test]
async fn fairness_keys_are_checked_stored_and_default_to_the_ordering_key() {
    let d = start_with("", KINDS).await;
    let mut c = d.client().await;
    for (key, why) in [
        ("k".repeat(257), "at most 256 bytes"),
        ("a\0b".to_string(), "NUL"),
    ] {
        let e = c.submit(tenant("fair", &key, "1")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("fairness_key"), "{e:?}");
        let details = tonic_types::StatusExt::get_details_bad_request(&e).expect("BadRequest");
        assert_eq!(details.field_violations[0].field, "fairness_key");
        assert!(
            details.field_violations[0].description.contains(why),
            "{details:?}"
        );
    }
    let long = "k".repeat(256);
    let j = submit(&mut c, tenant("fair", &long, "1")).await;
    assert_eq!(j.fairness_key, long);
    assert_eq!(status(&mut c, &j.id).await.fairness_key, long);
    // Default: the ordering key; neither: "".
    let keyed = proto::SubmitRequest {
        ordering_key: "order-1".into(),
        ..req("fair", "1")
    };
    assert_eq!(submit(&mut c, keyed).await.fairness_key, "order-1");
    assert_eq!(submit(&mut c, req("fair", "1")).await.fairness_key, "");
    // Part of the idempotent request: another key is a conflict.
    let mut r = tenant("fair", "a", "1");
    r.idempotency_key = "once".into();
    submit(&mut c, r.clone()).await;
    r.fairness_key = "b".into();
    assert_eq!(c.submit(r).await.unwrap_err().code(), Code::AlreadyExists);
    // The CLI submits with a key and shows it.
    let addr = d.addr.to_string();
    let out = cli(
        &addr,
        &[
            "submit",
            "fair",
            "--payload",
            "1",
            "--fairness-key",
            "tenant-9",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(status(&mut c, &id).await.fairness_key, "tenant-9");
    let out = cli(&addr, &["status", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fairness key: tenant-9"), "{text}");
    d.stop().await;
}
