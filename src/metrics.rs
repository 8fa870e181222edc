//! Prometheus metrics (via `prometheus-client`). Counters only increase;
//! the state gauges start from the store's counts and then move only on the
//! transitions the store confirmed, so they agree with the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::job::{Job, JobState};

type Labels = Vec<(&'static str, String)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs .. ~105 s in 21 doubling buckets.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub struct Metrics {
    registry: Registry,
    submitted: Family<Labels, Counter>,
    deduplicated: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
    channel_depth: Gauge,
    backlog: Family<Labels, Gauge>,
    inflight: Family<Labels, Gauge>,
    retry_wait: Family<Labels, Gauge>,
    waiting: Family<Labels, Gauge>,
    unconfigured: Family<Labels, Gauge>,
    kind_paused: Family<Labels, Gauge>,
    rate_limited: Family<Labels, Counter>,
    keys_waiting: Family<Labels, Gauge>,
    schedule_fires: Family<Labels, Counter>,
    schedule_missed: Family<Labels, Counter>,
    worker_sessions: Family<Labels, Gauge>,
    worker_assigned: Family<Labels, Counter>,
    log_lines: Family<Labels, Counter>,
    heartbeat_timeouts: Family<Labels, Counter>,
    jobs_expired: Family<Labels, Counter>,
    worker_lost: Counter,
    worker_stale_reports: Counter,
    run_seconds: HistFamily,
    queue_wait_seconds: HistFamily,
    watchers: Gauge,
    sweeper_requeued: Family<Labels, Counter>,
    grpc_requests: Family<Labels, Counter>,
    grpc_seconds: HistFamily,
    /// The HTTP twin of the gRPC health status, for `/readyz`.
    ready: AtomicBool,
    /// Finished jobs per minute over the last hour, for the dashboard.
    throughput: crate::throughput::Throughput,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn kind(k: &str) -> Labels {
    vec![("kind", k.to_string())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `jobd_` prefix.
    pub fn new() -> Metrics {
        let hist = || HistFamily::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let m = Metrics {
            registry: Registry::default(),
            submitted: Family::default(),
            deduplicated: Family::default(),
            rejected: Family::default(),
            attempts: Family::default(),
            finished: Family::default(),
            channel_depth: Gauge::default(),
            backlog: Family::default(),
            inflight: Family::default(),
            retry_wait: Family::default(),
            waiting: Family::default(),
            unconfigured: Family::default(),
            kind_paused: Family::default(),
            rate_limited: Family::default(),
            keys_waiting: Family::default(),
            schedule_fires: Family::default(),
            schedule_missed: Family::default(),
            worker_sessions: Family::default(),
            worker_assigned: Family::default(),
            log_lines: Family::default(),
            heartbeat_timeouts: Family::default(),
            jobs_expired: Family::default(),
            worker_lost: Counter::default(),
            worker_stale_reports: Counter::default(),
            run_seconds: hist(),
            queue_wait_seconds: hist(),
            watchers: Gauge::default(),
            sweeper_requeued: Family::default(),
            grpc_requests: Family::default(),
            grpc_seconds: hist(),
            ready: AtomicBool::new(false),
            throughput: crate::throughput::Throughput::new(),
        };
        let mut registry = Registry::with_prefix("jobd");
        // In this order on /metrics.
        m.register_jobs(&mut registry);
        m.register_queue(&mut registry);
        m.register_schedules(&mut registry);
        m.register_workers(&mut registry);
        m.register_latencies(&mut registry);
        m.register_daemon(&mut registry);
        Metrics { registry, ..m }
    }

    /// What became of submitted jobs.
    fn register_jobs(&self, r: &mut Registry) {
        r.register(
            "jobs_submitted",
            "Jobs stored by Submit/SubmitBatch",
            self.submitted.clone(),
        );
        r.register(
            "jobs_deduplicated",
            "Submits answered with an existing job (same idempotency key and request)",
            self.deduplicated.clone(),
        );
        r.register(
            "jobs_rejected",
            "Submits refused, by reason",
            self.rejected.clone(),
        );
        r.register(
            "job_attempts",
            "Attempts ended, by outcome",
            self.attempts.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs that reached a terminal state",
            self.finished.clone(),
        );
    }

    /// The jobs waiting and running, by state and kind, and what holds them.
    fn register_queue(&self, r: &mut Registry) {
        r.register(
            "queue_channel_depth",
            "Wake-up hints waiting in the dispatcher's bounded channel",
            self.channel_depth.clone(),
        );
        r.register(
            "backlog_queued",
            "Jobs in state QUEUED",
            self.backlog.clone(),
        );
        r.register(
            "processing_inflight",
            "Jobs in state RUNNING",
            self.inflight.clone(),
        );
        r.register(
            "retry_wait",
            "Jobs in state RETRY_WAIT",
            self.retry_wait.clone(),
        );
        r.register(
            "waiting",
            "Jobs in state WAITING (on their parents, depends_on)",
            self.waiting.clone(),
        );
        r.register(
            "unconfigured_kind_jobs",
            "Unfinished jobs of a kind missing from the config, counted at start (they never run)",
            self.unconfigured.clone(),
        );
        r.register(
            "kind_paused",
            "1 while the kind is paused (PauseKind): its jobs wait, none starts",
            self.kind_paused.clone(),
        );
        r.register(
            "kind_rate_limited",
            "Claims in which the kind's rate limit left jobs waiting in QUEUED",
            self.rate_limited.clone(),
        );
        r.register(
            "ordering_keys_waiting",
            "Ordering keys with QUEUED jobs, per kind with key_concurrency (re-read every few seconds)",
            self.keys_waiting.clone(),
        );
    }

    /// Cron schedules.
    fn register_schedules(&self, r: &mut Registry) {
        r.register(
            "schedule_fires",
            "Cron schedule fires submitted (from the schedule or TriggerSchedule)",
            self.schedule_fires.clone(),
        );
        r.register(
            "schedule_missed",
            "Cron schedule fires not run: missed by more than the schedule's catchup",
            self.schedule_missed.clone(),
        );
    }

    /// Remote worker sessions.
    fn register_workers(&self, r: &mut Registry) {
        r.register(
            "worker_sessions",
            "Remote worker sessions connected, per kind they serve",
            self.worker_sessions.clone(),
        );
        r.register(
            "worker_assigned",
            "Attempts handed to remote workers",
            self.worker_assigned.clone(),
        );
        r.register(
            "heartbeat_timeouts",
            "Attempts failed for saying nothing (no progress or log line) for their kind's heartbeat_timeout",
            self.heartbeat_timeouts.clone(),
        );
        r.register(
            "jobs_expired",
            "Jobs ended FAILED for not starting before their start deadline (start_before, start_within)",
            self.jobs_expired.clone(),
        );
        r.register(
            "job_log_lines",
            "Log lines stored for jobs (workers' Log messages), per kind",
            self.log_lines.clone(),
        );
        r.register(
            "worker_lost",
            "Remote worker sessions lost (silent for 3 heartbeat intervals, or their stream broke)",
            self.worker_lost.clone(),
        );
        r.register(
            "worker_stale_reports",
            "Worker reports for attempts that no longer held their job (changed nothing)",
            self.worker_stale_reports.clone(),
        );
    }

    /// How long attempts ran and waited.
    fn register_latencies(&self, r: &mut Registry) {
        r.register_with_unit(
            "job_run",
            "Duration of attempts",
            prometheus_client::registry::Unit::Seconds,
            self.run_seconds.clone(),
        );
        r.register_with_unit(
            "job_queue_wait",
            "Time from runnable to started, per attempt",
            prometheus_client::registry::Unit::Seconds,
            self.queue_wait_seconds.clone(),
        );
    }

    /// The daemon itself: watch streams, the sweeper, gRPC traffic, the build.
    fn register_daemon(&self, r: &mut Registry) {
        r.register(
            "watchers",
            "Open WatchStatus streams",
            self.watchers.clone(),
        );
        r.register(
            "sweeper_requeued",
            "Jobs the sweeper or recovery moved back to the queue, by reason",
            self.sweeper_requeued.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC requests, by method and status code",
            self.grpc_requests.clone(),
        );
        r.register_with_unit(
            "grpc_request_duration",
            "gRPC request latency (to the response headers for streams)",
            prometheus_client::registry::Unit::Seconds,
            self.grpc_seconds.clone(),
        );
        let info: Family<Labels, Gauge> = Family::default();
        info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        r.register("build_info", "Build information; always 1", info);
    }

    fn gauge(&self, state: JobState) -> Option<&Family<Labels, Gauge>> {
        match state {
            JobState::Queued => Some(&self.backlog),
            JobState::Running => Some(&self.inflight),
            JobState::RetryWait => Some(&self.retry_wait),
            JobState::Waiting => Some(&self.waiting),
            _ => None,
        }
    }

    /// Every per-kind series of a configured kind, at 0 until something
    /// moves it, so an operator's scrape (and an alert on `absent()`) sees
    /// the kind before its first job.
    pub fn configured_kind(&self, kind_name: &str) {
        let k = kind(kind_name);
        for g in [
            &self.backlog,
            &self.inflight,
            &self.retry_wait,
            &self.waiting,
            &self.kind_paused,
            &self.keys_waiting,
            &self.worker_sessions,
        ] {
            let _ = g.get_or_create(&k);
        }
        for c in [
            &self.submitted,
            &self.deduplicated,
            &self.rate_limited,
            &self.worker_assigned,
            &self.log_lines,
            &self.heartbeat_timeouts,
            &self.jobs_expired,
        ] {
            let _ = c.get_or_create(&k);
        }
    }

    /// Starts the state gauges from the store's counts.
    pub fn set_state_count(&self, state: JobState, kind_name: &str, n: u64) {
        if let Some(g) = self.gauge(state) {
            g.get_or_create(&kind(kind_name)).set(n as i64);
        }
    }

    /// A transition the store confirmed.
    pub fn transition(&self, from: Option<JobState>, job: &Job) {
        let k = kind(&job.kind);
        if let Some(g) = from.and_then(|s| self.gauge(s)) {
            g.get_or_create(&k).dec();
        }
        if let Some(g) = self.gauge(job.state) {
            g.get_or_create(&k).inc();
        }
        if job.state.is_terminal() {
            self.finished
                .get_or_create(&vec![
                    ("kind", job.kind.clone()),
                    ("state", job.state.to_string()),
                ])
                .inc();
            self.throughput.record(&job.kind, job.state);
        }
    }

    /// Finished jobs per minute, per kind (what the chart shows).
    pub fn throughput(&self) -> &crate::throughput::Throughput {
        &self.throughput
    }

    /// 1 while an operator has the kind paused (PauseKind), else 0.
    pub fn set_kind_paused(&self, kind_name: &str, paused: bool) {
        self.kind_paused
            .get_or_create(&kind(kind_name))
            .set(i64::from(paused));
    }

    /// A claim left jobs of the kind QUEUED for want of rate tokens.
    pub fn kind_rate_limited(&self, kind_name: &str) {
        self.rate_limited.get_or_create(&kind(kind_name)).inc();
    }

    /// Ordering keys of the kind with work waiting.
    pub fn set_keys_waiting(&self, kind_name: &str, n: u64) {
        self.keys_waiting
            .get_or_create(&kind(kind_name))
            .set(n as i64);
    }

    /// A schedule fire was submitted.
    pub fn schedule_fired(&self, id: &str) {
        self.schedule_fires
            .get_or_create(&vec![("schedule", id.to_string())])
            .inc();
    }

    /// `n` fires of a schedule were missed beyond its catchup.
    pub fn schedule_missed(&self, id: &str, n: u64) {
        self.schedule_missed
            .get_or_create(&vec![("schedule", id.to_string())])
            .inc_by(n);
    }

    pub fn set_unconfigured_kind_jobs(&self, kind_name: &str, n: u64) {
        self.unconfigured
            .get_or_create(&kind(kind_name))
            .set(n as i64);
    }

    /// A session serving `kinds` opened (+1) or closed (-1).
    pub fn worker_sessions(&self, kinds: &[String], delta: i64) {
        for k in kinds {
            self.worker_sessions.get_or_create(&kind(k)).inc_by(delta);
        }
    }

    /// An attempt of the kind failed its heartbeat timeout.
    pub fn heartbeat_timeout(&self, kind_name: &str) {
        self.heartbeat_timeouts
            .get_or_create(&kind(kind_name))
            .inc();
    }

    /// A job of the kind expired before it started.
    pub fn job_expired(&self, kind_name: &str) {
        self.jobs_expired.get_or_create(&kind(kind_name)).inc();
    }

    /// Log lines stored for jobs of the kind.
    pub fn log_lines(&self, kind_name: &str, n: u64) {
        self.log_lines.get_or_create(&kind(kind_name)).inc_by(n);
    }

    pub fn worker_assigned(&self, kind_name: &str) {
        self.worker_assigned.get_or_create(&kind(kind_name)).inc();
    }

    pub fn worker_lost(&self) {
        self.worker_lost.inc();
    }

    pub fn worker_stale_report(&self) {
        self.worker_stale_reports.inc();
    }

    pub fn submitted(&self, job: &Job) {
        self.submitted.get_or_create(&kind(&job.kind)).inc();
    }

    pub fn deduplicated(&self, job: &Job) {
        self.deduplicated.get_or_create(&kind(&job.kind)).inc();
    }

    /// Time from runnable to started, for an attempt that just started.
    pub fn started(&self, job: &Job) {
        if let (Some(ready), Some(started)) = (job.ready_at, job.started_at) {
            self.queue_wait_seconds
                .get_or_create(&kind(&job.kind))
                .observe(started.saturating_sub(ready).max(0) as f64 / 1e6);
        }
    }

    /// One gRPC call answered with `code`.
    pub fn grpc_request(&self, method: &str, code: &str, took: Duration) {
        self.grpc_requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
        self.grpc_seconds
            .get_or_create(&vec![("method", method.to_string())])
            .observe(took.as_secs_f64());
    }

    /// Gauges read at scrape time from the engine.
    pub fn set_live(&self, channel_depth: usize, watchers: usize) {
        self.channel_depth.set(channel_depth as i64);
        self.watchers.set(watchers as i64);
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn attempt(&self, kind_name: &str, outcome: &'static str, ran: Duration) {
        self.attempts
            .get_or_create(&vec![
                ("kind", kind_name.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        self.run_seconds
            .get_or_create(&kind(kind_name))
            .observe(ran.as_secs_f64());
    }

    pub fn requeued(&self, reason: &'static str, n: usize) {
        self.sweeper_requeued
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n as u64);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
