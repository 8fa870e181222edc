//! Deduplication modes (#33): `SubmitRequest.dedup` KEEP, REPLACE and
//! DEBOUNCE (with its `max_wait` cap) over jobs not started, on every
//! store; two PostgreSQL instances racing one key end with one job; bad
//! inputs name their field.

use std::time::Duration;

use jobd::proto::{self, DedupMode, DedupOutcome, JobState};
use tonic::Code;

use crate::helpers::*;
use crate::pg::PgSchema;

const KINDS: &str = r#"
[kinds.echo]
handler = "echo"
"#;

fn dedup(r: proto::SubmitRequest, key: &str, mode: DedupMode) -> proto::SubmitRequest {
    proto::SubmitRequest {
        dedup: Some(proto::Dedup {
            key: key.into(),
            mode: mode as i32,
            ..Default::default()
        }),
        ..r
    }
}

fn debounce(payload: &str, window_ms: u64, max_wait_ms: u64) -> proto::SubmitRequest {
    proto::SubmitRequest {
        dedup: Some(proto::Dedup {
            key: "debounced".into(),
            mode: DedupMode::Debounce as i32,
            window: Some(Duration::from_millis(window_ms).try_into().unwrap()),
            max_wait: Some(Duration::from_millis(max_wait_ms).try_into().unwrap()),
        }),
        ..req("echo", payload)
    }
}

async fn send(
    c: &mut jobd::proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    r: proto::SubmitRequest,
) -> proto::SubmitResponse {
    c.submit(r).await.expect("submit").into_inner()
}

fn outcome(r: &proto::SubmitResponse) -> DedupOutcome {
    DedupOutcome::try_from(r.dedup_outcome).unwrap()
}

async fn pause(d: &TestDaemon, paused: bool) {
    let mut a = admin(&d.url()).await;
    let kind = "echo".to_string();
    if paused {
        a.pause_kind(proto::PauseKindRequest { kind })
            .await
            .unwrap();
    } else {
        a.resume_kind(proto::ResumeKindRequest { kind })
            .await
            .unwrap();
    }
}

/// Every mode on one store: the kind is paused so nothing starts until the
/// test says so.
async fn modes_on(head: &str) {
    let d = start_with(head, KINDS).await;
    let mut c = d.client().await;
    pause(&d, true).await;

    // KEEP: the first job stays as it is.
    let first = send(&mut c, dedup(req("echo", "a1"), "a", DedupMode::Keep)).await;
    assert_eq!(outcome(&first), DedupOutcome::Created);
    assert!(!first.deduplicated);
    let kept = send(
        &mut c,
        dedup(req("echo", "a222"), "a", DedupMode::Unspecified),
    )
    .await;
    assert_eq!(outcome(&kept), DedupOutcome::Kept);
    assert!(kept.deduplicated);
    let a = first.job.unwrap();
    assert_eq!(kept.job.as_ref().unwrap().id, a.id);
    assert_eq!(status(&mut c, &a.id).await.payload_size, 2);
    assert_eq!(a.dedup_key, "a");

    // REPLACE: same id, new payload and labels, the sequence moves.
    let b = send(&mut c, dedup(req("echo", "b1"), "b", DedupMode::Replace)).await;
    let b = b.job.unwrap();
    let mut r = dedup(req("echo", "b222"), "b", DedupMode::Replace);
    r.labels.insert("v".into(), "2".into());
    let replaced = send(&mut c, r).await;
    assert_eq!(outcome(&replaced), DedupOutcome::Replaced);
    assert!(!replaced.deduplicated);
    let now_b = status(&mut c, &b.id).await;
    assert_eq!(replaced.job.unwrap().id, b.id);
    assert_eq!(now_b.payload_size, 4);
    assert_eq!(now_b.labels.get("v").map(String::as_str), Some("2"));
    assert!(micros(&now_b.updated_at) > micros(&b.updated_at));
    let mut w = c
        .watch_status(proto::WatchStatusRequest {
            id: b.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = w.message().await.unwrap().expect("a snapshot");
    assert_eq!(first.sequence, 2, "the merge is an event: {first:?}");
    drop(w);
    assert_eq!(state(&now_b), JobState::Queued);

    // DEBOUNCE: each submit pushes run_at to now + window, never past the
    // first submit + max_wait.
    let d1 = send(&mut c, debounce("d0", 400, 900)).await;
    assert_eq!(outcome(&d1), DedupOutcome::Created);
    let d1 = d1.job.unwrap();
    let created = micros(&d1.created_at);
    assert!(micros(&d1.next_attempt_at) >= created + 390_000, "{d1:?}");
    let mut last = d1.clone();
    for i in 1..=6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = send(&mut c, debounce(&format!("d{i}"), 400, 900)).await;
        assert_eq!(outcome(&r), DedupOutcome::Debounced);
        last = r.job.unwrap();
        assert_eq!(last.id, d1.id);
        assert!(
            micros(&last.next_attempt_at) <= created + 900_000,
            "max_wait caps run_at: {last:?}"
        );
    }
    assert_eq!(
        micros(&last.next_attempt_at),
        created + 900_000,
        "the last pushes hit the cap"
    );

    // A batch: entry 1 merges into entry 0's new job; entry 2 names it.
    let batch = c
        .submit_batch(proto::SubmitBatchRequest {
            requests: vec![
                dedup(req("echo", "e1"), "e", DedupMode::Replace),
                dedup(req("echo", "e222"), "e", DedupMode::Replace),
                proto::SubmitRequest {
                    depends_on: vec!["$1".into()],
                    ..req("echo", "child")
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let ok = |i: usize| match batch[i].result.clone().unwrap() {
        proto::submit_result::Result::Accepted(r) => r,
        proto::submit_result::Result::Error(e) => panic!("entry {i}: {e:?}"),
    };
    let (e0, e1, child) = (ok(0), ok(1), ok(2));
    assert_eq!(outcome(&e0), DedupOutcome::Created);
    assert_eq!(outcome(&e1), DedupOutcome::Replaced);
    let e_id = e0.job.unwrap().id;
    assert_eq!(e1.job.unwrap().id, e_id);
    assert_eq!(status(&mut c, &e_id).await.payload_size, 4);
    assert_eq!(child.job.unwrap().parent_ids, vec![e_id.clone()]);

    // Idempotency is checked first: the same request again is the same
    // job, whatever its dedup key says.
    let mut i = dedup(req("echo", "i"), "i", DedupMode::Replace);
    i.idempotency_key = "idem-1".into();
    let i1 = send(&mut c, i.clone()).await;
    let i2 = send(&mut c, i).await;
    assert!(i2.deduplicated);
    assert_eq!(outcome(&i2), DedupOutcome::Unspecified);
    assert_eq!(i1.job.unwrap().id, i2.job.unwrap().id);

    // Running: each job runs once, with its last payload; then the keys
    // are free again.
    pause(&d, false).await;
    let done = wait_terminal(&mut c, &b.id).await;
    assert_eq!(done.result, b"b222");
    let done = wait_terminal(&mut c, &d1.id).await;
    assert_eq!(done.result, b"d6");
    assert!(micros(&done.started_at) >= created + 900_000);
    wait_terminal(&mut c, &a.id).await;
    let again = send(&mut c, dedup(req("echo", "a3"), "a", DedupMode::Keep)).await;
    assert_eq!(outcome(&again), DedupOutcome::Created);
    assert_ne!(again.job.unwrap().id, a.id);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_on_memory() {
    modes_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_on_sqlite() {
    modes_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_on_postgres() {
    let Some(pg) = PgSchema::new("dedup_modes").await else {
        return;
    };
    modes_on(&pg.toml("")).await;
}

/// Two instances on one PostgreSQL schema, 2 x 25 concurrent REPLACE
/// submits of one key: one job, every answer names it, and it holds the
/// payload of one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_one_key_make_one_job() {
    let Some(pg) = PgSchema::new("dedup_race").await else {
        return;
    };
    let one = start_with(&pg.toml(""), KINDS).await;
    let two = start_with(&pg.toml(""), KINDS).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = if i % 2 == 0 {
            one.client().await
        } else {
            two.client().await
        };
        tasks.push(tokio::spawn(async move {
            // Due in an hour, so no instance starts it (freeing the key).
            let r = proto::SubmitRequest {
                run_at: Some(ts_in(Duration::from_secs(3600))),
                ..dedup(req("echo", &format!("p{i}")), "race", DedupMode::Replace)
            };
            send(&mut c, r).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        created += usize::from(outcome(&r) == DedupOutcome::Created);
        ids.insert(r.job.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(created, 1);
    let mut c = one.client().await;
    let listed = c
        .list_jobs(proto::ListJobsRequest {
            kind: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].payload_size >= 2);
    one.stop().await;
    two.stop().await;
}

/// Each bad dedup is INVALID_ARGUMENT naming its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dedups_name_their_field() {
    let d = start_with("", KINDS).await;
    let mut c = d.client().await;
    let secs = |s: i64| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let with = |d: proto::Dedup| proto::SubmitRequest {
        dedup: Some(d),
        ..req("echo", "x")
    };
    let cases = [
        (with(proto::Dedup::default()), "dedup.key", "required"),
        (
            with(proto::Dedup {
                key: "k".repeat(257),
                ..Default::default()
            }),
            "dedup.key",
            "at most 256",
        ),
        (
            with(proto::Dedup {
                key: "k".into(),
                mode: DedupMode::Debounce as i32,
                ..Default::default()
            }),
            "dedup.window",
            "required",
        ),
        (
            with(proto::Dedup {
                key: "k".into(),
                mode: DedupMode::Keep as i32,
                window: secs(1),
                ..Default::default()
            }),
            "dedup.window",
            "only with mode DEBOUNCE",
        ),
        (
            with(proto::Dedup {
                key: "k".into(),
                mode: 9,
                ..Default::default()
            }),
            "dedup.mode",
            "unknown mode 9",
        ),
        (
            with(proto::Dedup {
                key: "k".into(),
                mode: DedupMode::Debounce as i32,
                window: secs(0),
                ..Default::default()
            }),
            "dedup.window",
            "more than 0",
        ),
        (
            proto::SubmitRequest {
                run_at: Some(ts_in(Duration::from_secs(5))),
                ..with(proto::Dedup {
                    key: "k".into(),
                    mode: DedupMode::Debounce as i32,
                    window: secs(1),
                    max_wait: secs(2),
                })
            },
            "run_at",
            "DEBOUNCE",
        ),
        (
            proto::SubmitRequest {
                start_before: Some(ts_in(Duration::from_secs(1))),
                ..with(proto::Dedup {
                    key: "k".into(),
                    mode: DedupMode::Debounce as i32,
                    window: secs(5),
                    max_wait: None,
                })
            },
            "start_before",
            "could never start",
        ),
    ];
    for (r, field, words) in cases {
        let e = c.submit(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let b = tonic_types::StatusExt::get_details_bad_request(&e).expect("bad request details");
        assert_eq!(b.field_violations[0].field, field, "{e:?}");
        assert!(
            b.field_violations[0].description.contains(words),
            "{field}: {e:?}"
        );
    }
    d.stop().await;
}
