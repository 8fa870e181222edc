//! `jobd bench`: a load generator pointed at a running daemon, like
//! `redis-benchmark` or `pgbench`. Every submit figure is printed with its
//! ratio to `grpc.health.v1.Health/Check` (the empty-RPC ceiling) measured
//! against the same server in the same run.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::transport::Channel;

use crate::proto::{self, job_service_client::JobServiceClient};

mod fair;
mod progress_load;
mod results;
use results::{micros, wait_all_done};
mod workflows;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Scenario {
    /// Health/Check at each concurrency: the empty-RPC ceiling.
    Baseline,
    /// Unary Submit of echo jobs at each concurrency (with its baseline).
    Submit,
    /// SubmitBatch with each batch size.
    Batch,
    /// Preload N delayed jobs, then measure first-start to last-finish.
    Drain,
    /// Open-loop submit at a fixed rate; latency from the jobs' timestamps.
    E2e,
    /// W concurrent WatchStatus streams on running jobs.
    Watch,
    /// Store N jobs delayed by an hour (backlog for RSS checks); not in `all`.
    Preload,
    /// `drain` alone, then beside `--progress-jobs` running remote jobs
    /// reporting progress (kind `--progress-kind`); not in `all`.
    Progress,
    /// A chain of `--jobs` (at most 1000) jobs, each depending on the one
    /// before: per-link latency; not in `all`.
    Chain,
    /// `--jobs` parents and one callback depending on all: the last
    /// parent's finish to the callback's start; not in `all`.
    Fanin,
    /// `drain` over `--keys` fairness keys on `--kind` (plain), then on
    /// `--fair-kind` (`fairness = "round_robin"`), with the ratio; not in
    /// `all`.
    Fair,
    /// All of the above.
    All,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Concurrent callers (submit, baseline), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub concurrency: Vec<usize>,
    /// Jobs per SubmitBatch call, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub batch: Vec<usize>,
    /// Concurrent SubmitBatch callers.
    #[arg(long, default_value_t = 4)]
    pub batch_concurrency: usize,
    /// How long each closed-loop run lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Jobs preloaded by `drain`.
    #[arg(long, default_value_t = 200_000)]
    pub jobs: usize,
    /// `drain`: spread the jobs over this many ordering keys (round robin),
    /// to measure claims under `key_concurrency`; 0: no keys. `fair`: the
    /// fairness keys (default 10,000).
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// `fair`: the kind declared with `fairness = "round_robin"`.
    #[arg(long, default_value = "fair")]
    pub fair_kind: String,
    /// Set by `fair`: `drain`'s keys go in `fairness_key`.
    #[arg(skip)]
    pub fairness_keys: bool,
    /// Offered submits per second for `e2e`.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Streams opened by `watch`.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// How long the `sleep` jobs that `watch` watches run, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    pub watch_ms: u64,
    /// The daemon's pid, to report its RSS (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// `submit` and `batch`: submit jobs due this far ahead (e.g. 1h), so
    /// the measurement is the durable submit path alone, not the workers.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// The echo-like kind to submit.
    #[arg(long, default_value = "echo")]
    pub kind: String,
    /// Serve `--kind` (declared `handler = "remote"`) from this process: one
    /// worker session with this `max_in_flight`, answering each job with
    /// its payload; measures remote workers beside in-process handlers.
    #[arg(long)]
    pub remote_worker: Option<u32>,
    /// `progress`: remote jobs held running beside the burn-down.
    #[arg(long, default_value_t = 1000)]
    pub progress_jobs: usize,
    /// `progress`: Progress messages each held job sends per second.
    #[arg(long, default_value_t = 10)]
    pub progress_rate: u64,
    /// `progress`: the kind of the held jobs (declared `handler = "remote"`,
    /// with a timeout longer than the burn-down).
    #[arg(long, default_value = "hold")]
    pub progress_kind: String,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub param: String,
    pub per_s: f64,
    pub unit: &'static str,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub ratio: Option<f64>,
    pub note: String,
}

fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn row(
    scenario: &str,
    param: String,
    per_s: f64,
    unit: &'static str,
    h: &Histogram<u64>,
    note: String,
) -> Row {
    Row {
        scenario: scenario.into(),
        param,
        per_s,
        unit,
        p50_ms: ms(h, 0.5),
        p90_ms: ms(h, 0.9),
        p99_ms: ms(h, 0.99),
        max_ms: h.max() as f64 / 1000.0,
        ratio: None,
        note,
    }
}

/// Why a benchmark could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Addr(#[from] tonic::codegen::http::uri::InvalidUri),
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    #[error("submit sleep (watch needs the builtin `sleep` kind): {0}")]
    NoSleepKind(#[source] tonic::Status),
    #[error("only {done} of {n} jobs finished in {limit:?}")]
    Unfinished {
        done: usize,
        n: usize,
        limit: Duration,
    },
}

async fn channels(addr: &str, n: usize) -> Result<Vec<Channel>, BenchError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(
            Channel::from_shared(url.clone())?
                .connect()
                .await
                .map_err(|source| BenchError::Connect {
                    url: url.clone(),
                    source,
                })?,
        );
    }
    Ok(out)
}

fn progress(label: &str, done: u64, started: Instant) {
    if std::io::stderr().is_terminal() {
        let s = started.elapsed().as_secs_f64();
        eprint!(
            "\r{label}: {done} in {s:.1}s ({:.0}/s)   ",
            done as f64 / s.max(1e-9)
        );
        let _ = std::io::stderr().flush();
    }
}

/// Runs `op` from `c` callers for `d`; returns (ops/s, items/s, latency, errors).
async fn closed_loop<F, Fut>(
    label: &str,
    chans: &[Channel],
    c: usize,
    d: Duration,
    op: F,
) -> (f64, f64, Histogram<u64>, u64)
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, tonic::Status>> + Send,
{
    let op = Arc::new(op);
    let items = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Mutex::new(hist()));
    let started = Instant::now();
    let end = started + d;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..c {
        let ch = chans[i % chans.len()].clone();
        let (op, items, errors, all) = (op.clone(), items.clone(), errors.clone(), all.clone());
        tasks.spawn(async move {
            let mut h = hist();
            while Instant::now() < end {
                let t = Instant::now();
                match op(ch.clone()).await {
                    Ok(n) => {
                        items.fetch_add(n, Ordering::Relaxed);
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            all.lock().unwrap().add(&h).ok();
        });
    }
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            progress(label, items.load(Ordering::Relaxed), started);
        }
    };
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = ticker => {}
    }
    let secs = started.elapsed().as_secs_f64();
    let h = all.lock().unwrap().clone();
    let n = items.load(Ordering::Relaxed) as f64;
    (
        h.len() as f64 / secs,
        n / secs,
        h,
        errors.load(Ordering::Relaxed),
    )
}

fn echo(kind: &str, i: u64) -> proto::SubmitRequest {
    proto::SubmitRequest {
        kind: kind.to_string(),
        payload: i.to_le_bytes().to_vec(),
        ..Default::default()
    }
}

/// An echo job, due after `delay` if given.
fn job(a: &BenchArgs, i: u64) -> proto::SubmitRequest {
    proto::SubmitRequest {
        run_at: a
            .delay
            .map(|d| prost_types::Timestamp::from(SystemTime::now() + d)),
        ..echo(&a.kind, i)
    }
}

async fn baseline(a: &BenchArgs, chans: &[Channel], c: usize) -> Row {
    let (per_s, _, h, errors) = closed_loop("baseline", chans, c, a.duration, |ch| async move {
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        h.check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        Ok(1)
    })
    .await;
    row(
        "baseline",
        format!("c={c}"),
        per_s,
        "rpc/s",
        &h,
        format!("errors={errors}"),
    )
}

async fn submit(a: &BenchArgs, chans: &[Channel], c: usize) -> Row {
    let args = Arc::new(a.clone());
    let seq = Arc::new(AtomicU64::new(0));
    let (_, per_s, h, errors) = closed_loop("submit", chans, c, a.duration, move |ch| {
        let (args, seq) = (args.clone(), seq.clone());
        async move {
            let mut cl = JobServiceClient::new(ch);
            cl.submit(job(&args, seq.fetch_add(1, Ordering::Relaxed)))
                .await?;
            Ok(1)
        }
    })
    .await;
    row(
        "submit",
        format!("c={c}"),
        per_s,
        "jobs/s",
        &h,
        format!("errors={errors}"),
    )
}

async fn batch(a: &BenchArgs, chans: &[Channel], b: usize) -> Row {
    let args = Arc::new(a.clone());
    let (_, per_s, h, errors) =
        closed_loop("batch", chans, a.batch_concurrency, a.duration, move |ch| {
            let args = args.clone();
            async move {
                let mut cl = JobServiceClient::new(ch);
                let requests = (0..b as u64).map(|i| job(&args, i)).collect();
                let r = cl
                    .submit_batch(proto::SubmitBatchRequest { requests })
                    .await?
                    .into_inner();
                Ok(r.results
                    .iter()
                    .filter(|r| matches!(r.result, Some(proto::submit_result::Result::Accepted(_))))
                    .count() as u64)
            }
        })
        .await;
    row(
        "batch",
        format!("b={b} c={}", a.batch_concurrency),
        per_s,
        "jobs/s",
        &h,
        format!("errors={errors}"),
    )
}

async fn drain(a: &BenchArgs, chans: &[Channel]) -> Result<Row, BenchError> {
    // Its own label per call: `progress` drains twice in one process.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = format!(
        "drain-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    // Due a little after loading should end (at 20k jobs/s, plus 3 s).
    let load_secs = a.jobs as f64 / 20_000.0 + 3.0;
    let due = SystemTime::now() + Duration::from_secs_f64(load_secs);
    let mut cl = JobServiceClient::new(chans[0].clone());
    let started = Instant::now();
    let mut loaded = 0;
    let mut last = String::new();
    while loaded < a.jobs {
        let n = (a.jobs - loaded).min(1000);
        let requests = (0..n)
            .map(|i| proto::SubmitRequest {
                run_at: Some(prost_types::Timestamp::from(due)),
                labels: [("bench".to_string(), run.clone())].into(),
                ordering_key: match a.keys {
                    0 => String::new(),
                    _ if a.fairness_keys => String::new(),
                    k => format!("key-{}", (loaded + i) % k),
                },
                fairness_key: match a.keys {
                    k if k > 0 && a.fairness_keys => format!("key-{}", (loaded + i) % k),
                    _ => String::new(),
                },
                ..echo(&a.kind, (loaded + i) as u64)
            })
            .collect();
        let r = cl
            .submit_batch(proto::SubmitBatchRequest { requests })
            .await?;
        if let Some(proto::submit_result::Result::Accepted(a)) =
            r.into_inner().results.pop().and_then(|r| r.result)
        {
            last = a.job.unwrap_or_default().id;
        }
        loaded += n;
        progress("preloading", loaded as u64, started);
    }
    let late = SystemTime::now() > due;
    let jobs = wait_all_done(&chans[0], &run, a.jobs, &last, Duration::from_secs(600)).await?;
    let first = jobs
        .iter()
        .map(|j| micros(&j.started_at))
        .min()
        .unwrap_or(0);
    let last = jobs
        .iter()
        .map(|j| micros(&j.finished_at))
        .max()
        .unwrap_or(0);
    let secs = (last - first) as f64 / 1e6;
    let mut h = hist();
    for j in &jobs {
        let _ = h.record((micros(&j.finished_at) - first).max(1) as u64);
    }
    let keys = match a.keys {
        0 => String::new(),
        k if a.fairness_keys => format!(" over {k} fairness keys"),
        k => format!(" over {k} ordering keys"),
    };
    let note = if late {
        "WARNING: preload outlasted the start time".into()
    } else {
        format!(
            "{} jobs{keys}, first start to last finish {secs:.2}s",
            jobs.len()
        )
    };
    Ok(row(
        "drain",
        format!("n={}", a.jobs),
        jobs.len() as f64 / secs.max(1e-9),
        "jobs/s",
        &h,
        note,
    ))
}

async fn preload(a: &BenchArgs, chans: &[Channel]) -> Result<Row, BenchError> {
    let later = prost_types::Timestamp::from(SystemTime::now() + Duration::from_secs(3600));
    let started = Instant::now();
    let mut h = hist();
    let mut loaded = 0;
    let mut cl = JobServiceClient::new(chans[0].clone());
    while loaded < a.jobs {
        let n = (a.jobs - loaded).min(1000);
        let requests = (0..n)
            .map(|i| proto::SubmitRequest {
                run_at: Some(later),
                ..echo(&a.kind, (loaded + i) as u64)
            })
            .collect();
        let t = Instant::now();
        cl.submit_batch(proto::SubmitBatchRequest { requests })
            .await?;
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        loaded += n;
        progress("preloading", loaded as u64, started);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(row(
        "preload",
        format!("n={}", a.jobs),
        loaded as f64 / secs,
        "jobs/s",
        &h,
        format!(
            "server RSS {} MB after",
            rss_mb(a.server_pid).map_or("?".into(), |r| format!("{r:.1}"))
        ),
    ))
}

async fn e2e(a: &BenchArgs, chans: &[Channel]) -> Result<Vec<Row>, BenchError> {
    let run = format!("e2e-{}", std::process::id());
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let inflight = Arc::new(tokio::sync::Semaphore::new(4096));
    let end = Instant::now() + a.duration;
    let mut sent = 0u64;
    let mut dropped = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        // Open loop: the offered rate does not slow down when the server
        // does; what cannot be sent (4096 in flight) is counted, not hidden.
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let mut cl = JobServiceClient::new(chans[sent as usize % chans.len()].clone());
        let req = proto::SubmitRequest {
            labels: [("bench".to_string(), run.clone())].into(),
            ..echo(&a.kind, sent)
        };
        sent += 1;
        tasks.spawn(async move {
            let _p = permit;
            cl.submit(req)
                .await
                .ok()
                .and_then(|r| r.into_inner().job)
                .map(|j| j.id)
        });
    }
    let mut ok = 0;
    let mut last = String::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(id)) = r {
            ok += 1;
            last = last.max(id);
        }
    }
    let jobs = wait_all_done(&chans[0], &run, ok, &last, Duration::from_secs(120)).await?;
    let (mut started, mut finished) = (hist(), hist());
    for j in &jobs {
        let c = micros(&j.created_at);
        let _ = started.record((micros(&j.started_at) - c).max(1) as u64);
        let _ = finished.record((micros(&j.finished_at) - c).max(1) as u64);
    }
    let note = format!(
        "offered {}/s for {:?}; sent {sent}, not sent {dropped}",
        a.rate, a.duration
    );
    let per_s = ok as f64 / a.duration.as_secs_f64();
    Ok(vec![
        row(
            "e2e submit->started",
            format!("rate={}", a.rate),
            per_s,
            "jobs/s",
            &started,
            note.clone(),
        ),
        row(
            "e2e submit->finished",
            format!("rate={}", a.rate),
            per_s,
            "jobs/s",
            &finished,
            note,
        ),
    ])
}

async fn watch(a: &BenchArgs, addr: &str) -> Result<Row, BenchError> {
    // h2 servers cap streams per connection; spread watchers out.
    let chans = channels(addr, (a.watchers / 100).max(4)).await?;
    let mut cl = JobServiceClient::new(chans[0].clone());
    let rss_before = rss_mb(a.server_pid);
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = cl
            .submit(proto::SubmitRequest {
                kind: "sleep".into(),
                payload: b"4000".to_vec(),
                ..Default::default()
            })
            .await
            .map_err(BenchError::NoSleepKind)?;
        ids.push(r.into_inner().job.unwrap_or_default().id);
    }
    let latencies = Arc::new(Mutex::new(hist()));
    let mut tasks = tokio::task::JoinSet::new();
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for i in 0..a.watchers {
        let mut c = JobServiceClient::new(chans[i % chans.len()].clone());
        let id = ids[i % ids.len()].clone();
        let (lat, opened) = (latencies.clone(), opened.clone());
        tasks.spawn(async move {
            let Ok(s) = c
                .watch_status(proto::WatchStatusRequest {
                    id,
                    after_sequence: 0,
                })
                .await
            else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut s = s.into_inner();
            while let Ok(Some(ev)) = s.message().await {
                let j = ev.job.unwrap_or_default();
                if j.finished_at.is_some() {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros() as i64;
                    let _ = lat
                        .lock()
                        .unwrap()
                        .record((now - micros(&j.finished_at)).max(1) as u64);
                }
            }
        });
        if i % 500 == 0 {
            progress("opening watchers", i as u64, started);
        }
    }
    tokio::time::sleep(Duration::from_millis(a.watch_ms / 2)).await;
    let rss_open = rss_mb(a.server_pid);
    while tasks.join_next().await.is_some() {}
    let h = latencies.lock().unwrap().clone();
    let note = format!(
        "opened {} streams; server RSS {} -> {} MB while open; latency = terminal event delivery after finished_at",
        opened.load(Ordering::Relaxed),
        rss_before.map_or("?".into(), |r| format!("{r:.1}")),
        rss_open.map_or("?".into(), |r| format!("{r:.1}")),
    );
    Ok(row(
        "watch",
        format!("w={}", a.watchers),
        h.len() as f64,
        "events",
        &h,
        note,
    ))
}

/// Runs the scenario; returns the table rows.
pub async fn run(a: &BenchArgs, addr: &str) -> Result<Vec<Row>, BenchError> {
    let chans = channels(addr, a.connections).await?;
    let worker = a.remote_worker.map(|n| {
        let mut opts = crate::clients::worker::WorkerOptions::new(addr, [a.kind.clone()]);
        opts.max_in_flight = n;
        opts.worker_id = "jobd-bench".into();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::clients::worker::serve(
            opts,
            stop.clone(),
            |job| async move { Ok(job.payload) },
        ));
        stop.drop_guard()
    });
    let mut rows = Vec::new();
    let all = a.scenario == Scenario::All;
    if all || a.scenario == Scenario::Baseline {
        for &c in &a.concurrency {
            rows.push(baseline(a, &chans, c).await);
        }
    }
    if all || a.scenario == Scenario::Submit {
        for &c in &a.concurrency {
            let base = baseline(a, &chans, c).await;
            let mut r = submit(a, &chans, c).await;
            r.ratio = Some(r.per_s / base.per_s.max(1e-9));
            if a.scenario == Scenario::Submit {
                rows.push(base);
            }
            rows.push(r);
        }
    }
    if all || a.scenario == Scenario::Batch {
        let base = baseline(a, &chans, a.batch_concurrency).await;
        for &b in &a.batch {
            let mut r = batch(a, &chans, b).await;
            r.ratio = Some(r.per_s / base.per_s.max(1e-9));
            rows.push(r);
        }
    }
    if all || a.scenario == Scenario::Drain {
        rows.push(drain(a, &chans).await?);
    }
    if all || a.scenario == Scenario::E2e {
        rows.extend(e2e(a, &chans).await?);
    }
    if all || a.scenario == Scenario::Watch {
        rows.push(watch(a, addr).await?);
    }
    if a.scenario == Scenario::Preload {
        rows.push(preload(a, &chans).await?);
    }
    match a.scenario {
        Scenario::Progress => rows.extend(progress_load::progress_load(a, addr, &chans).await?),
        Scenario::Chain => rows.push(workflows::chain(a, &chans).await?),
        Scenario::Fanin => rows.push(workflows::fanin(a, &chans).await?),
        Scenario::Fair => rows.extend(fair::fair(a, &chans).await?),
        _ => {}
    }
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    drop(worker);
    Ok(rows)
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:<14} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}  note",
        "scenario", "param", "rate", "unit", "p50 ms", "p90 ms", "p99 ms", "max ms", "vs base"
    );
    for r in rows {
        println!(
            "{:<22} {:<14} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8}  {}",
            r.scenario,
            r.param,
            r.per_s,
            r.unit,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.ratio.map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
            r.note
        );
    }
}

pub fn to_json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario, "param": r.param, "rate": r.per_s, "unit": r.unit,
                    "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                    "ratio_to_baseline": r.ratio, "note": r.note,
                })
            })
            .collect(),
    )
}
