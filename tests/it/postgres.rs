//! Several jobd instances on one PostgreSQL queue: exactly-once completion,
//! an instance killed mid-run, watching across instances, idempotency
//! across instances, and the database restarting under load.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jobd::handlers::{Handler, HandlerError, JobContext, Output};
use jobd::job::JobState;
use jobd::proto::{self, job_service_client::JobServiceClient};
use jobd::store::{self, StoreError};
use tonic::transport::Channel;

use crate::binary::{spawn_config, Proc};
use crate::helpers::*;
use crate::pg::PgSchema;

/// Echo that records each run: (job id, attempt, instance).
struct Counting {
    instance: usize,
    runs: Arc<Mutex<Vec<(uuid::Uuid, u32, usize)>>>,
}

#[async_trait]
impl Handler for Counting {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        self.runs
            .lock()
            .unwrap()
            .push((job.id, job.attempt, self.instance));
        Ok(Output {
            result: job.payload,
        })
    }
}

/// Waits (bounded) until the store holds `n` jobs in `state`.
async fn wait_count(s: &store::SharedStore, state: JobState, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let counts = s.counts().await.unwrap();
        if counts.get(&state).copied().unwrap_or(0) == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {counts:?}, want {n} {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit_batch(
    c: &mut JobServiceClient<Channel>,
    reqs: Vec<proto::SubmitRequest>,
) -> Vec<String> {
    c.submit_batch(proto::SubmitBatchRequest { requests: reqs })
        .await
        .expect("submit batch")
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(proto::submit_result::Result::Accepted(a)) => a.job.unwrap().id,
            other => panic!("entry refused: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_complete_10k_jobs_exactly_once() {
    let Some(pg) = PgSchema::new("three").await else {
        return;
    };
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut daemons = Vec::new();
    for instance in 0..3 {
        let runs = runs.clone();
        daemons.push(
            start_custom(&pg.toml("[queue]\nworkers = 16\n"), KINDS, move |r| {
                r.register("echo", Arc::new(Counting { instance, runs }))
            })
            .await,
        );
    }
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(d.client().await);
    }
    // 100 batches of 100, each to a random instance, 4 in flight.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..4 {
        let clients = clients.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for b in 0..25 {
                let mut c = clients[rand::random::<u32>() as usize % 3].clone();
                let reqs = (0..100)
                    .map(|i| req("echo", &format!("{chunk}-{b}-{i}")))
                    .collect();
                ids.extend(submit_batch(&mut c, reqs).await);
            }
            ids
        });
    }
    let mut ids = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    assert_eq!(ids.len(), 10_000);
    let s = pg.open().await;
    wait_count(&s, JobState::Succeeded, 10_000, Duration::from_secs(180)).await;
    let counts = s.counts().await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), 10_000, "{counts:?}");

    // Side effects: every job ran exactly once, on attempt 1.
    let runs = runs.lock().unwrap().clone();
    let mut per_job: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut per_instance = [0usize; 3];
    for (id, attempt, instance) in &runs {
        assert_eq!(*attempt, 1, "job {id} needed a second attempt");
        *per_job.entry(*id).or_default() += 1;
        per_instance[*instance] += 1;
    }
    assert_eq!(per_job.len(), 10_000);
    assert!(per_job.values().all(|n| *n == 1), "a job ran twice");
    assert!(
        ids.iter()
            .all(|id| per_job.contains_key(&id.parse().unwrap())),
        "an acknowledged job never ran"
    );
    eprintln!("jobs run per instance: {per_instance:?}");
    assert!(per_instance.iter().all(|n| *n > 0), "{per_instance:?}");
    // Each instance counts the completions it committed; together, 10,000.
    let mut finished = 0.0;
    for d in &daemons {
        let (_, text) = http_get(d.admin, "/metrics").await;
        finished += metric_sum(
            &text,
            "jobd_jobs_finished_total{kind=\"echo\",state=\"succeeded\"}",
        );
    }
    assert_eq!(finished, 10_000.0);
    s.close().await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}

/// One `jobd serve` process on the test's schema.
async fn spawn_instance(pg: &PgSchema, dir: &std::path::Path, name: &str, kinds: &str) -> Proc {
    spawn_config(
        dir,
        &format!(
            "admin_listen = \"off\"\n{}[queue]\nworkers = 4\n[drain]\ngrace = \"0s\"\n{kinds}",
            pg.toml(&format!("lease_ttl = \"2s\"\ninstance_id = \"{name}\"\n"))
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_its_jobs_finish_elsewhere_once() {
    let Some(pg) = PgSchema::new("kill").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("effects.log");
    let kinds = format!(
        "[kinds.record]\nhandler = \"command\"\nmax_attempts = 5\n\
         command = [\"sh\", \"-c\", \"sleep 0.2; echo $JOBD_JOB_ID $JOBD_ATTEMPT >> {}\"]\n",
        log.display()
    );
    let mut procs = Vec::new();
    for name in ["victim", "survivor-a", "survivor-b"] {
        procs.push(spawn_instance(&pg, dir.path(), name, &kinds).await);
    }
    let mut ids = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let mut c = connect(&p.url).await;
        ids.extend(
            submit_batch(
                &mut c,
                (0..100)
                    .map(|n| req("record", &format!("{i}-{n}")))
                    .collect(),
            )
            .await,
        );
    }
    // Kill the victim while it holds leases.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = pg
            .sql("SELECT COUNT(*) FROM jobs WHERE state = 1 AND owner = 'victim'")
            .await[0]
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never ran a job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut victim = procs.remove(0);
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let orphaned: HashSet<String> = pg
        .sql("SELECT id::text FROM jobs WHERE state = 1 AND owner = 'victim'")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "jobs left running by the killed instance: {}",
        orphaned.len()
    );

    let s = pg.open().await;
    wait_count(
        &s,
        JobState::Succeeded,
        ids.len() as u64,
        Duration::from_secs(90),
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<String, Vec<u32>> = HashMap::new();
    let mut pairs = HashSet::new();
    for line in text.lines() {
        let (id, attempt) = line.split_once(' ').unwrap();
        assert!(pairs.insert(line.to_string()), "attempt ran twice: {line}");
        runs.entry(id.to_string())
            .or_default()
            .push(attempt.parse().unwrap());
    }
    for id in &ids {
        let j = s.get(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        let ran = runs.get(id).cloned().unwrap_or_default();
        assert!(
            ran.contains(&j.attempt),
            "job {id}: final attempt {} left no trace",
            j.attempt
        );
        if orphaned.contains(id) {
            // Its first attempt died with the victim; another instance took
            // it back after the lease ran out and finished it.
            assert!(
                j.attempt >= 2,
                "orphaned job {id} finished on attempt {}",
                j.attempt
            );
            // The success cleared last_error; the history keeps the loss.
            let lost = j.attempts.iter().find(|a| a.outcome == "lost");
            assert!(
                lost.is_some_and(|a| a.error.contains("lease expired")),
                "{:?}",
                j.attempts
            );
        } else {
            assert_eq!(ran.len(), 1, "job {id} ran {ran:?} without being orphaned");
        }
    }
    s.close().await.unwrap();
    for mut p in procs {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_one_instance_follows_a_job_run_on_another() {
    let Some(pg) = PgSchema::new("watch").await else {
        return;
    };
    // Only instance C runs these kinds.
    let c_kinds = format!(
        "{KINDS}\n[kinds.flaky]\nhandler = \"fail\"\nmax_attempts = 3\n\
         backoff = {{ initial = \"50ms\", max = \"50ms\" }}\n[kinds.slow]\nhandler = \"sleep\"\n"
    );
    let a = start(&pg.toml("")).await;
    let b = start(&pg.toml("")).await;
    let c = start_with(&pg.toml(""), &c_kinds).await;
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);

    // A job that fails twice, then for good: 9 states, every one seen on A.
    let mut r = req("flaky", "");
    r.run_at = Some(prost_types::Timestamp::from(
        std::time::SystemTime::now() + Duration::from_millis(300),
    ));
    let job = submit(&mut cc, r).await;
    let events = watch_all(&mut ca, &job.id).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "in order, no gaps");
    use proto::JobState as P;
    let states: Vec<P> = events
        .iter()
        .map(|e| state(e.job.as_ref().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            P::Queued,
            P::Running,
            P::RetryWait,
            P::Queued,
            P::Running,
            P::RetryWait,
            P::Queued,
            P::Running,
            P::Failed
        ]
    );

    // A cancel on B stops the attempt running on C.
    let long = submit(&mut cc, req("slow", "30000")).await;
    wait_for(&mut ca, &long.id, |s| s == P::Running).await;
    let cancelled = cb
        .cancel(proto::CancelRequest {
            id: long.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(state(&cancelled), P::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = http_get(c.admin, "/metrics").await;
        if metric_sum(
            &text,
            "jobd_job_attempts_total{kind=\"slow\",outcome=\"cancelled\"}",
        ) == 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "C kept running a job cancelled on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in [a, b, c] {
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_three_instances_makes_one_job() {
    let Some(pg) = PgSchema::new("idem").await else {
        return;
    };
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(start(&pg.toml("")).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let url = daemons[i % 3].url();
        tasks.spawn(async move {
            let mut c = connect(&url).await;
            let mut r = req("echo", "same");
            r.idempotency_key = "order-42".into();
            c.submit(r).await.unwrap().into_inner()
        });
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        ids.insert(r.job.unwrap().id);
        fresh += usize::from(!r.deduplicated);
    }
    assert_eq!(ids.len(), 1, "one job for one key");
    assert_eq!(fresh, 1, "exactly one submit created it");
    let n: i64 = pg.sql("SELECT COUNT(*) FROM jobs").await[0].get(0);
    assert_eq!(n, 1);
    // A different request under the same key is refused on any instance.
    let mut c = daemons[2].client().await;
    let mut r = req("echo", "different");
    r.idempotency_key = "order-42".into();
    let e = c.submit(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    for d in daemons {
        d.stop().await;
    }
}

/// A drain outlasting the lease: the draining instance keeps renewing its
/// leases until its last attempt ends (else another instance would take the
/// jobs back mid-drain), a job that ends in time succeeds on attempt 1, and
/// one the drain stops goes back to the queue with its attempt not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_leases_alive_and_requeues_what_it_stops() {
    let Some(pg) = PgSchema::new("drain").await else {
        return;
    };
    let lease = "lease_ttl = \"1s\"\n";
    // Only A runs `slow`; B only watches the leases with its sweeper.
    let a_kinds = format!("{KINDS}\n[kinds.slow]\nhandler = \"sleep\"\n");
    let a = start_with(
        &format!(
            "{}[drain]\ngrace = \"0s\"\ntimeout = \"2500ms\"\n",
            pg.toml(lease)
        ),
        &a_kinds,
    )
    .await;
    let b = start(&pg.toml(lease)).await;
    let mut c = a.client().await;
    let short = submit(&mut c, req("slow", "1800")).await;
    let long = submit(&mut c, req("slow", "60000")).await;
    for id in [&short.id, &long.id] {
        wait_for(&mut c, id, |s| s == proto::JobState::Running).await;
    }
    a.stop().await;
    let s = pg.open().await;
    let short = s.get(short.id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        (short.state, short.attempt),
        (JobState::Succeeded, 1),
        "{}",
        short.last_error
    );
    let long = s.get(long.id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((long.state, long.attempt), (JobState::Queued, 0));
    assert!(long.last_error.contains("drain"), "{}", long.last_error);
    s.close().await.unwrap();
    b.stop().await;
}

/// PostgreSQL text cannot hold NUL; a command's stderr may. The error is
/// kept (NUL replaced), not a failed write that would rerun the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_stderr_is_stored_not_a_failed_write() {
    let Some(pg) = PgSchema::new("nul").await else {
        return;
    };
    let kinds = "[kinds.nul]\nhandler = \"command\"\nmax_attempts = 1\n\
                 command = [\"sh\", \"-c\", \"printf 'a\\\\000b' >&2; exit 3\"]\n";
    let d = start_with(&pg.toml(""), kinds).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("nul", "")).await;
    let done = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&done), proto::JobState::Failed);
    assert!(
        done.last_error.contains("a\u{fffd}b"),
        "{:?}",
        done.last_error
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_when_instances_start_together() {
    let Some(pg) = PgSchema::new("migrate").await else {
        return;
    };
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, cfg) = (pg.url.clone(), pg.config());
        opens.spawn(async move { store::open_with(&url, &cfg).await });
    }
    while let Some(r) = opens.join_next().await {
        r.unwrap()
            .expect("every instance opens")
            .close()
            .await
            .unwrap();
    }
    let v: Vec<i32> = pg
        .sql("SELECT version FROM jobd_migrations ORDER BY version")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = (1..=jobd_pg_schema_versions()).collect();
    assert_eq!(v, expected, "each migration applied once");
    // A schema from a newer jobd is refused, not used.
    pg.sql("INSERT INTO jobd_migrations (version) VALUES (99)")
        .await;
    match store::open_with(&pg.url, &pg.config()).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("newer"), "{m}"),
        other => panic!("newer schema accepted: {:?}", other.err()),
    }
}

/// Stops or starts the local cluster; false when this machine cannot.
fn cluster(action: &str) -> bool {
    let out = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", action])
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "pg_ctlcluster {action}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("pg_ctlcluster {action}: {e}");
            false
        }
    }
}

async fn health(url: &str) -> Option<i32> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load_loses_no_acknowledged_job() {
    let Some(pg) = PgSchema::exclusive("restart").await else {
        return;
    };
    if std::env::var_os("CI").is_none() && !cluster("status") {
        eprintln!("SKIPPED: cannot control the local PostgreSQL cluster here");
        return;
    }
    // Results that could not be written during the outage run again once
    // their lease (3 s) runs out.
    let head = pg.toml("timeout = \"1s\"\nlease_ttl = \"3s\"\n");
    let a = start(&head).await;
    let b = start(&head).await;
    let stop = tokio_util::sync::CancellationToken::new();
    // Producers: every acknowledged id is recorded, with how long each
    // refused submit took.
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..4 {
        let url = if p % 2 == 0 { a.url() } else { b.url() };
        let stop = stop.clone();
        producers.spawn(async move {
            let mut c = connect(&url).await;
            let (mut acked, mut refused, mut slowest) = (Vec::new(), 0usize, Duration::ZERO);
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let t = Instant::now();
                match c.submit(req("echo", &format!("{p}-{i}"))).await {
                    Ok(r) => acked.push(r.into_inner().job.unwrap().id),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                        refused += 1;
                        slowest = slowest.max(t.elapsed());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acked, refused, slowest)
        });
    }
    // A watcher on B of a job that comes due during the outage: B's LISTEN
    // connection drops with the database, and must resubscribe and re-read.
    let mut cb = b.client().await;
    let mut r = req("sleep", "10");
    r.run_at = Some(prost_types::Timestamp::from(
        std::time::SystemTime::now() + Duration::from_secs(2),
    ));
    let watched = submit(&mut cb, r).await;
    let watch = tokio::spawn(async move { watch_all(&mut cb, &watched.id).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster("stop"), "could not stop the PostgreSQL cluster");
    let down = Instant::now();
    // Health goes NOT_SERVING (2) while the database is away.
    let mut saw_not_serving = false;
    while down.elapsed() < Duration::from_secs(10) {
        if health(&a.url()).await == Some(2) {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = cluster("start");
    assert!(started, "could not start the PostgreSQL cluster again");
    assert!(
        saw_not_serving,
        "health stayed SERVING with the database down"
    );
    // Health comes back by itself.
    let up = Instant::now();
    while health(&a.url()).await != Some(1) {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "health never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (mut acked, mut refused, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    while let Some(r) = producers.join_next().await {
        let (a, r, s) = r.unwrap();
        acked.extend(a);
        refused += r;
        slowest = slowest.max(s);
    }
    eprintln!(
        "acknowledged={} refused={refused} slowest refusal={slowest:?}",
        acked.len()
    );
    assert!(refused > 0, "no submit met the outage");
    // Refusals are quick: bounded by the store timeout (1s), not by the
    // client's patience.
    assert!(
        slowest < Duration::from_secs(5),
        "a submit hung for {slowest:?}"
    );
    // Every acknowledged job exists and finishes.
    let s = pg.open().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &acked {
        loop {
            let j = s.get(id.parse().unwrap()).await.unwrap();
            let j = j.unwrap_or_else(|| panic!("acknowledged job {id} lost"));
            if j.state == JobState::Succeeded {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} stuck in {}", j.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let events = watch.await.unwrap().expect("watch across the restart");
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, [1, 2, 3], "every state, in order, across the restart");
    s.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}

/// Schema versions this jobd knows (one per migration).
fn jobd_pg_schema_versions() -> i32 {
    15
}

/// jobd's connections plan each prepared statement once (a generic plan:
/// re-planning the claim and result statements on every execution was a
/// fifth of the server's CPU in a burn-down), unless the URL's own
/// `options` say otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_plan_each_statement_once_unless_the_url_says_otherwise() {
    let Some(pg) = PgSchema::new("plans").await else {
        return;
    };
    let mode = |url: String| async move {
        let c = store::postgres::connect(&url).await.unwrap();
        let row = c.query_one("SHOW plan_cache_mode", &[]).await.unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(mode(pg.url.clone()).await, "force_generic_plan");
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let own = format!(
        "{}{sep}options=-c%20plan_cache_mode%3Dforce_custom_plan",
        pg.url
    );
    assert_eq!(mode(own).await, "force_custom_plan");
}
