//! Schedules through the API: CreateSchedule, UpdateSchedule and
//! DeleteSchedule on every store; stored schedules fire once per tick on
//! two PostgreSQL instances, survive a restart, and are checked exactly as
//! the config is; config schedules are read-only.

use std::time::Duration;

use jobd::proto;
use jobd::proto::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::schedules::{assert_distinct_seconds, fires, gaps};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A config schedule that never fires during a test.
const NIGHTLY: &str = "[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 1 1 *\"\n";

/// Schedule `id` of kind echo, labelled team=ops.
fn def(id: &str, cron: &str) -> proto::ScheduleDefinition {
    proto::ScheduleDefinition {
        id: id.into(),
        kind: "echo".into(),
        cron: cron.into(),
        labels: [("team".to_string(), "ops".to_string())].into(),
        ..Default::default()
    }
}

async fn create(
    a: &mut AdminServiceClient<Channel>,
    d: proto::ScheduleDefinition,
) -> Result<proto::ScheduleStatus, tonic::Status> {
    a.create_schedule(proto::CreateScheduleRequest { schedule: Some(d) })
        .await
        .map(|r| r.into_inner().schedule.unwrap())
}

async fn update(
    a: &mut AdminServiceClient<Channel>,
    d: proto::ScheduleDefinition,
) -> Result<proto::ScheduleStatus, tonic::Status> {
    a.update_schedule(proto::UpdateScheduleRequest { schedule: Some(d) })
        .await
        .map(|r| r.into_inner().schedule.unwrap())
}

async fn delete(a: &mut AdminServiceClient<Channel>, id: &str) -> Result<(), tonic::Status> {
    a.delete_schedule(proto::DeleteScheduleRequest { id: id.into() })
        .await
        .map(|_| ())
}

async fn list(a: &mut AdminServiceClient<Channel>) -> Vec<proto::ScheduleStatus> {
    a.list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .schedules
}

/// Create (fires each second), list with sources, refusals, update (a new
/// cron moves the next fire; a new payload does not), delete (fires stop),
/// config schedules read-only, against the store in `head`.
async fn create_update_delete(head: &str) {
    let d = start(&format!("{head}\n{NIGHTLY}")).await;
    let mut a = admin(&d.url()).await;
    let mut c = d.client().await;
    let mut tick = def("tick", "*/1 * * * * *");
    tick.payload = "hi".into();
    let made = create(&mut a, tick.clone()).await.unwrap();
    assert_eq!(made.source, proto::ScheduleSource::Api as i32);
    assert_eq!(
        (made.payload.as_str(), made.timezone.as_str()),
        ("hi", "UTC")
    );
    assert!(made.next_fire_at.is_some());
    let all = list(&mut a).await;
    let sources: Vec<(&str, i32)> = all.iter().map(|s| (s.id.as_str(), s.source)).collect();
    assert_eq!(
        sources,
        [
            ("nightly", proto::ScheduleSource::Config as i32),
            ("tick", proto::ScheduleSource::Api as i32)
        ]
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let f = fires(&mut c, "tick").await;
    assert!(f.len() >= 2, "{} fires", f.len());
    assert_distinct_seconds(&f);
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
    assert_eq!(f[0].1.payload_size, 2, "the payload \"hi\"");

    // Ids are shared by config and stored schedules.
    for id in ["tick", "nightly"] {
        let e = create(&mut a, def(id, "* * * * *")).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{id}: {e:?}");
    }
    // Config schedules are read-only; unknown ids are NOT_FOUND.
    let e = update(&mut a, def("nightly", "* * * * *"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("config"), "{}", e.message());
    let e = delete(&mut a, "nightly").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("config"), "{}", e.message());
    assert_eq!(
        update(&mut a, def("nope", "* * * * *"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        delete(&mut a, "nope").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(list(&mut a).await.len(), 2, "refusals changed nothing");

    // A stored schedule can be paused and triggered like a config one.
    let job = a
        .trigger_schedule(proto::TriggerScheduleRequest { id: "tick".into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(job.idempotency_key.starts_with("schedule:tick:manual:"));

    // A new payload keeps the next fire; a new cron moves it (to 2099).
    let before = list(&mut a).await[1].next_fire_at;
    tick.payload = "ho".into();
    let same = update(&mut a, tick.clone()).await.unwrap();
    assert_eq!(same.payload, "ho");
    let after = same.next_fire_at.as_ref().unwrap().seconds;
    assert!(
        after - before.unwrap().seconds <= 2,
        "kept (or one fire on)"
    );
    // 6 fields are seconds first: "0 0 1 1 * 2099" has no year field, and
    // 2099 is no weekday.
    let e = update(&mut a, def("tick", "0 0 1 1 * 2099"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("schedule.cron"), "{}", e.message());
    let moved = update(&mut a, def("tick", "0 0 3 1 1 *")).await.unwrap();
    let next = moved.next_fire_at.unwrap().seconds;
    assert!(
        next > now_secs() + 3600,
        "a new cron starts from its next fire"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = fires(&mut c, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        fires(&mut c, "tick").await.len(),
        n,
        "no fire after the update"
    );

    // Delete: gone from the list, no more fires, NOT_FOUND again.
    update(&mut a, def("tick", "*/1 * * * * *")).await.unwrap();
    delete(&mut a, "tick").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = fires(&mut c, "tick").await.len();
    let ids: Vec<String> = list(&mut a).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["nightly"]);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(fires(&mut c, "tick").await.len(), n, "no fire after delete");
    assert_eq!(
        delete(&mut a, "tick").await.unwrap_err().code(),
        Code::NotFound
    );
    // The id is free again.
    create(&mut a, def("tick", "0 3 * * *")).await.unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_in_memory() {
    create_update_delete("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_on_sqlite() {
    create_update_delete("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_on_postgres() {
    let Some(pg) = crate::pg::PgSchema::new("api_sched").await else {
        return;
    };
    create_update_delete(&pg.toml("")).await;
}

/// Two PostgreSQL instances: a schedule created on A fires once per second
/// (one job per fire, both schedulers running it); B lists it and, once A
/// is gone, keeps firing it alone; an update through B stops the fires; a
/// delete through B removes it for every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_share_api_schedules() {
    let Some(pg) = crate::pg::PgSchema::new("api_sched2").await else {
        return;
    };
    let toml = pg.toml("");
    let a = start(&toml).await;
    let b = start(&toml).await;
    let mut ab = admin(&b.url()).await;
    create(&mut admin(&a.url()).await, def("tick", "*/1 * * * * *"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let on_b = list(&mut ab).await;
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].source, proto::ScheduleSource::Api as i32);
    let mut cb = b.client().await;
    let f = fires(&mut cb, "tick").await;
    assert!(f.len() >= 2, "{} fires", f.len());
    assert_distinct_seconds(&f);
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
    // A, where it was created, stops: B fires it alone.
    a.stop().await;
    let stopped = now_secs() * 1_000_000;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let f = fires(&mut cb, "tick").await;
    assert_distinct_seconds(&f);
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
    assert!(
        f.iter().filter(|(t, _)| *t > stopped).count() >= 1,
        "B fires a schedule created on A: {:?}",
        gaps(&f)
    );
    // A comes back with B: an update through B moves the next fire to
    // January; neither instance fires after it.
    let a = start(&toml).await;
    update(&mut ab, def("tick", "0 0 3 1 1 *")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let n = fires(&mut cb, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        fires(&mut cb, "tick").await.len(),
        n,
        "no instance fires after the update"
    );
    let mut aa = admin(&a.url()).await;
    assert_eq!(list(&mut aa).await[0].cron, "0 0 3 1 1 *");
    delete(&mut ab, "tick").await.unwrap();
    assert!(list(&mut aa).await.is_empty());
    assert_eq!(
        delete(&mut aa, "tick").await.unwrap_err().code(),
        Code::NotFound
    );
    a.stop().await;
    b.stop().await;
}

/// A schedule created through the API is stored: after a restart on the
/// same SQLite file it is listed and fires again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_keeps_api_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!("store = \"sqlite:{}/jobd.db\"\n", dir.path().display());
    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    let mut s = def("tick", "*/1 * * * * *");
    s.timezone = "Europe/Berlin".into();
    s.catchup = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    create(&mut a, s).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.stop().await;
    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    let l = list(&mut a).await;
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0].id.as_str(), l[0].timezone.as_str(), l[0].source),
        ("tick", "Europe/Berlin", proto::ScheduleSource::Api as i32)
    );
    assert_eq!(l[0].catchup.as_ref().map(|c| c.seconds), Some(30));
    let restarted = now_secs() * 1_000_000;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let f = fires(&mut d.client().await, "tick").await;
    d.stop().await;
    assert_distinct_seconds(&f);
    assert!(
        f.iter()
            .filter(|(t, _)| *t >= restarted - 1_000_000)
            .count()
            >= 2,
        "fires after the restart: {:?}",
        gaps(&f)
    );
    // catchup 30s: the restart's gap ran, nothing was lost.
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
}

/// Bad definitions are INVALID_ARGUMENT naming the field, as the config
/// names its key; the bound on schedules (config and stored together) is
/// RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_name_the_field() {
    // 999 config schedules: one more fits, the next does not.
    let mut head = String::new();
    for i in 0..999 {
        head.push_str(&format!(
            "[[schedules]]\nid = \"c{i}\"\nkind = \"echo\"\ncron = \"0 3 1 1 *\"\n"
        ));
    }
    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    let with = |f: &dyn Fn(&mut proto::ScheduleDefinition)| {
        let mut d = def("s1", "* * * * *");
        f(&mut d);
        d
    };
    let many: std::collections::HashMap<String, String> =
        (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(&str, proto::ScheduleDefinition, &str)> = vec![
        (
            "bad cron",
            with(&|d| d.cron = "61 * * * *".into()),
            "schedule.cron",
        ),
        (
            "3 fields",
            with(&|d| d.cron = "* * *".into()),
            "schedule.cron",
        ),
        (
            "empty cron",
            with(&|d| d.cron = String::new()),
            "schedule.cron",
        ),
        (
            "bad zone",
            with(&|d| d.timezone = "Mars/Base".into()),
            "schedule.timezone",
        ),
        (
            "unknown kind",
            with(&|d| d.kind = "nope".into()),
            "schedule.kind",
        ),
        (
            "too many labels",
            with(&|d| d.labels = many.clone()),
            "schedule.labels",
        ),
        (
            "empty label key",
            with(&|d| {
                d.labels.insert(String::new(), "v".into());
            }),
            "schedule.labels.",
        ),
        ("empty id", with(&|d| d.id = String::new()), "schedule.id"),
        ("bad id", with(&|d| d.id = "Bad Id".into()), "schedule.id"),
        (
            "catchup over 7 days",
            with(&|d| {
                d.catchup = Some(prost_types::Duration {
                    seconds: 8 * 86400,
                    nanos: 0,
                })
            }),
            "schedule.catchup",
        ),
        (
            "negative catchup",
            with(&|d| {
                d.catchup = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            "schedule.catchup",
        ),
        (
            "unknown overlap",
            with(&|d| d.overlap = 7),
            "schedule.overlap",
        ),
    ];
    for (what, d, field) in cases {
        for e in [
            create(&mut a, d.clone()).await.unwrap_err(),
            update(&mut a, d).await.unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
            let fields: Vec<String> = e
                .get_details_bad_request()
                .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
                .unwrap_or_default();
            assert_eq!(fields.len(), 1, "{what}: {fields:?}");
            assert_eq!(&fields[0], field, "{what}: {}", e.message());
            assert!(e.message().contains(field), "{what}: {}", e.message());
        }
    }
    let e = a
        .create_schedule(proto::CreateScheduleRequest { schedule: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The 1000th fits, the 1001st does not; after a delete it fits again.
    create(&mut a, def("s1", "0 3 * * *")).await.unwrap();
    let e = create(&mut a, def("s2", "0 3 * * *")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("1000"), "{}", e.message());
    delete(&mut a, "s1").await.unwrap();
    create(&mut a, def("s2", "0 3 * * *")).await.unwrap();
    d.stop().await;
}

/// `jobd schedules create|update|delete`: update changes only the flags
/// given; refusals exit 64 (invalid, config schedule) or 3 (unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_create_update_delete() {
    let d = start(NIGHTLY).await;
    let addr = d.url();
    let o = cli(
        &addr,
        &[
            "schedules",
            "create",
            "tick",
            "--kind",
            "echo",
            "--cron",
            "0 3 * * *",
            "--timezone",
            "Asia/Tokyo",
            "--label",
            "team=ops",
            "--overlap",
            "skip",
            "--catchup",
            "10m",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schedule"]["source"], "SCHEDULE_SOURCE_API", "{v}");
    assert_eq!(v["schedule"]["catchup"], "600s", "{v}");
    let o = cli(
        &addr,
        &[
            "schedules",
            "update",
            "tick",
            "--cron",
            "0 4 * * *",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["schedule"];
    assert_eq!(
        (
            &s["cron"],
            &s["timezone"],
            &s["labels"]["team"],
            &s["overlap"]
        ),
        (
            &"0 4 * * *".into(),
            &"Asia/Tokyo".into(),
            &"ops".into(),
            &"SCHEDULE_OVERLAP_SKIP".into()
        ),
        "only --cron changed: {v}"
    );
    let o = cli(&addr, &["schedules"]).await;
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("tick") && table.contains("0 4 * * *"),
        "{table}"
    );
    for (args, code) in [
        (&["schedules", "update", "tick", "--cron", "nope"][..], 64),
        (&["schedules", "create", "x", "--kind", "echo"][..], 64),
        (
            &[
                "schedules",
                "create",
                "tick",
                "--kind",
                "echo",
                "--cron",
                "* * * * *",
            ][..],
            64,
        ),
        (&["schedules", "delete", "nightly"][..], 64),
        (
            &["schedules", "update", "nightly", "--cron", "* * * * *"][..],
            64,
        ),
        (
            &["schedules", "update", "nope", "--cron", "* * * * *"][..],
            3,
        ),
        (&["schedules", "delete", "nope"][..], 3),
    ] {
        let o = cli(&addr, args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {o:?}");
    }
    let o = cli(&addr, &["schedules", "delete", "tick"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("deleted"));
    let mut a = admin(&addr).await;
    assert_eq!(list(&mut a).await.len(), 1);
    d.stop().await;
}

/// The HTTP routes: POST /v1/schedules, PUT and DELETE /v1/schedules/{id},
/// proto3 JSON in and out; a body whose id differs from the path is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes() {
    let d = start(NIGHTLY).await;
    let http = http_client();
    let base = format!("{}/v1/schedules", d.url());
    let body = serde_json::json!({"schedule": {"id": "tick", "kind": "echo", "cron": "0 3 * * *",
        "labels": {"team": "ops"}, "catchup": "60s", "overlap": "SCHEDULE_OVERLAP_SKIP"}});
    let r = http
        .post(&base)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["schedule"]["source"], "SCHEDULE_SOURCE_API", "{v}");
    let r = http
        .post(&base)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "ALREADY_EXISTS");
    let put = serde_json::json!({"schedule": {"kind": "echo", "cron": "0 5 * * *"}});
    let r = http
        .put(format!("{base}/tick"))
        .header("content-type", "application/json")
        .body(put.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["schedule"]["cron"], "0 5 * * *", "{v}");
    let other =
        serde_json::json!({"schedule": {"id": "other", "kind": "echo", "cron": "0 5 * * *"}});
    let r = http
        .put(format!("{base}/tick"))
        .header("content-type", "application/json")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let bad = serde_json::json!({"schedule": {"id": "x", "kind": "echo", "cron": "0 5 * *"}});
    let r = http
        .post(&base)
        .header("content-type", "application/json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("schedule.cron"),
        "{v}"
    );
    let r = http.delete(format!("{base}/nightly")).send().await.unwrap();
    assert_eq!(r.status(), 400, "FAILED_PRECONDITION");
    let r = http.delete(format!("{base}/tick")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.delete(format!("{base}/tick")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(format!("{base}/tick")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    d.stop().await;
}
