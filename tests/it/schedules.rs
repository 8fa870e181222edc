//! Cron schedules: fires as jobs with keyed idempotency, stored next fire
//! times across restarts and outages, overlap, several instances.

use std::time::Duration;

use jobd::proto;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::*;

/// `[[schedules]]` for schedule `id` firing every second.
fn every_second(id: &str, kind: &str, extra: &str) -> String {
    format!(
        "[[schedules]]\nid = \"{id}\"\nkind = \"{kind}\"\ncron = \"*/1 * * * * *\"\n\
         labels = {{ team = \"ops\" }}\n{extra}\n"
    )
}

/// Every job of schedule `id`, with its fire time (µs) from its key.
pub async fn fires(
    c: &mut proto::job_service_client::JobServiceClient<Channel>,
    id: &str,
) -> Vec<(i64, proto::Job)> {
    let all = c
        .list_jobs(proto::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let prefix = format!("schedule:{id}:");
    let mut out: Vec<(i64, proto::Job)> = all
        .into_iter()
        .filter(|j| j.labels.get("schedule").map(String::as_str) == Some(id))
        .filter(|j| !j.idempotency_key.contains(":manual:"))
        .map(|j| {
            let t = j
                .idempotency_key
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("key {:?}", j.idempotency_key));
            assert!(t.ends_with('Z'), "UTC: {t}");
            let at = chrono::DateTime::parse_from_rfc3339(t)
                .unwrap_or_else(|e| panic!("{t}: {e}"))
                .timestamp_micros();
            (at, j)
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// Fire times are whole seconds, none twice.
pub fn assert_distinct_seconds(f: &[(i64, proto::Job)]) {
    for w in f.windows(2) {
        assert!(w[1].0 > w[0].0, "fire twice: {}", w[0].1.idempotency_key);
    }
    for (t, j) in f {
        assert_eq!(t % 1_000_000, 0, "{}", j.idempotency_key);
        assert_eq!(j.labels.get("team").map(String::as_str), Some("ops"));
    }
}

/// Seconds between consecutive fires.
pub fn gaps(f: &[(i64, proto::Job)]) -> Vec<i64> {
    f.windows(2)
        .map(|w| (w[1].0 - w[0].0) / 1_000_000)
        .collect()
}

/// An every-second schedule makes exactly one job per second, keyed
/// `schedule:{id}:{fire time RFC 3339 UTC}`, labelled `schedule={id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_schedule_fires_once_per_second() {
    let d = start(&every_second("tick", "echo", "")).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let fired = metric_sum(
        &scrape(d.admin).await,
        "jobd_schedule_fires_total{schedule=\"tick\"}",
    ) as u64;
    let f = fires(&mut d.client().await, "tick").await;
    d.stop().await;
    assert!((4..=7).contains(&f.len()), "{} fires", f.len());
    assert_distinct_seconds(&f);
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
    // Read just before the list: a fire may come in between.
    assert!(fired == f.len() as u64 || fired + 1 == f.len() as u64);
}

/// A restart on SQLite within `catchup` neither skips nor doubles a fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_within_catchup_skips_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "store = \"sqlite:{}/jobd.db\"\n{}",
        dir.path().display(),
        every_second("tick", "echo", "catchup = \"30s\"")
    );
    let d = start(&head).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    d.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = start(&head).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let f = fires(&mut d.client().await, "tick").await;
    let missed = metric_sum(&scrape(d.admin).await, "jobd_schedule_missed_total") as u64;
    d.stop().await;
    assert_distinct_seconds(&f);
    assert!(f.len() >= 5, "{} fires", f.len());
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
    assert_eq!(missed, 0);
}

/// With `catchup = "0s"`, fires missed during an outage are counted in
/// `jobd_schedule_missed_total` and not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_no_catchup_counts_missed_fires_and_runs_none() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "store = \"sqlite:{}/jobd.db\"\n{}",
        dir.path().display(),
        every_second("tick", "echo", "catchup = \"0s\"")
    );
    let d = start(&head).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    d.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = start(&head).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let f = fires(&mut d.client().await, "tick").await;
    let missed = metric_sum(
        &scrape(d.admin).await,
        "jobd_schedule_missed_total{schedule=\"tick\"}",
    ) as u64;
    d.stop().await;
    assert_distinct_seconds(&f);
    let g = gaps(&f);
    let outage = g.iter().copied().max().unwrap_or(0);
    // At most the last second before the restart is still on time.
    assert!(outage >= 3, "{g:?}");
    assert!(missed >= 2, "missed {missed}, gaps {g:?}");
    assert_eq!(
        missed as i64,
        outage - 1,
        "every fire in the gap counted: {g:?}"
    );
}

/// `overlap = "skip"`: no fire while the previous job still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_waits_for_the_previous_job() {
    let head = every_second("slow", "sleep", "overlap = \"skip\"\npayload = \"2500\"");
    let d = start(&head).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let f = fires(&mut d.client().await, "slow").await;
    d.stop().await;
    assert!((1..=3).contains(&f.len()), "{} fires", f.len());
    assert!(gaps(&f).iter().all(|g| *g >= 3), "{:?}", gaps(&f));
}

/// Two PostgreSQL instances with one schedule: one job per fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_fire_each_time_once() {
    let Some(pg) = crate::pg::PgSchema::new("schedules").await else {
        return;
    };
    let toml = pg.toml(&every_second("tick", "echo", ""));
    let a = start(&toml).await;
    let b = start(&toml).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let f = fires(&mut a.client().await, "tick").await;
    a.stop().await;
    b.stop().await;
    assert!(f.len() >= 3, "{} fires", f.len());
    assert_distinct_seconds(&f);
    assert!(gaps(&f).iter().all(|g| *g == 1), "{:?}", gaps(&f));
}

/// ListSchedules shows the config and stored state; TriggerSchedule fires
/// once now; PauseSchedule stops fires (stored) and ResumeSchedule starts
/// them again; unknown ids are NOT_FOUND, bad ones INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_trigger_pause_resume_and_not_found() {
    let head = "[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 * * *\"\n\
                timezone = \"Europe/Berlin\"\npayload = \"hi\"\n"
        .to_string()
        + &every_second("tick", "echo", "");
    let d = start(&head).await;
    let mut a = admin(&d.url()).await;
    let list = a
        .list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(list.len(), 2);
    let n = list.iter().find(|s| s.id == "nightly").unwrap();
    assert_eq!(
        (n.kind.as_str(), n.cron.as_str(), n.timezone.as_str()),
        ("echo", "0 3 * * *", "Europe/Berlin")
    );
    assert!(n.next_fire_at.is_some() && !n.paused);

    let job = a
        .trigger_schedule(proto::TriggerScheduleRequest {
            id: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(job.idempotency_key.starts_with("schedule:nightly:manual:"));
    assert_eq!(job.labels.get("schedule").unwrap(), "nightly");
    let mut c = d.client().await;
    assert_eq!(
        state(&wait_terminal(&mut c, &job.id).await),
        proto::JobState::Succeeded
    );
    let list = a
        .list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .schedules;
    let n = list.iter().find(|s| s.id == "nightly").unwrap();
    assert_eq!(n.last_job_id, job.id);

    let p = a
        .pause_schedule(proto::PauseScheduleRequest { id: "tick".into() })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(p.paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fires(&mut c, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fires(&mut c, "tick").await.len(),
        before,
        "fired while paused"
    );
    let r = a
        .resume_schedule(proto::ResumeScheduleRequest { id: "tick".into() })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(!r.paused);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fires(&mut c, "tick").await.len() > before, "resumed");

    for (id, code) in [
        ("nope", Code::NotFound),
        ("", Code::InvalidArgument),
        ("Bad Id", Code::InvalidArgument),
    ] {
        let e = a
            .trigger_schedule(proto::TriggerScheduleRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "trigger {id:?}");
        let e = a
            .pause_schedule(proto::PauseScheduleRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "pause {id:?}");
        let e = a
            .resume_schedule(proto::ResumeScheduleRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "resume {id:?}");
    }
    d.stop().await;
}

/// `jobd schedules` and `jobd trigger ID`, with --json and as tables;
/// an unknown schedule exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_schedules_and_trigger() {
    let d = start(
        "[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 * * *\"\n\
         timezone = \"America/New_York\"\n",
    )
    .await;
    let addr = d.url();
    let o = cli(&addr, &["schedules", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["schedules"][0];
    assert_eq!(s["id"], "nightly");
    assert_eq!(s["timezone"], "America/New_York");
    assert_eq!(s["paused"], serde_json::Value::Null, "false is left out");
    assert!(s["nextFireAt"].is_string(), "{v}");
    let o = cli(&addr, &["trigger", "nightly", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = j["job"]["id"].as_str().unwrap().to_string();
    let o = cli(&addr, &["schedules"]).await;
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("NEXT_FIRE") && table.contains(&id),
        "{table}"
    );
    assert_eq!(
        cli(&addr, &["trigger", "nope"]).await.status.code(),
        Some(3)
    );
    // `schedules pause ID` / `resume ID`.
    let o = cli(&addr, &["schedules", "pause", "nightly", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schedule"]["paused"], true, "{v}");
    let o = cli(&addr, &["schedules", "resume", "nightly"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("nightly") && table.contains(" no "),
        "{table}"
    );
    let o = cli(&addr, &["schedules", "pause", "nope"]).await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    d.stop().await;
}
