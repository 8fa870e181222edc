//! The engine's parts that are plain state: the drain's stop signals,
//! what decides whether new jobs are taken, the attempts running here,
//! what is wired in after start, and settings fixed at start. (The
//! completion path and the dispatcher own theirs: `completer::Completion`,
//! `dispatcher::Dispatch`.)

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{feed, RunningAttempt};

/// The drain's stop signals, in the order it gives them.
pub(super) struct Stops {
    /// Stops the dispatcher and sweeper loops (drain step 3).
    pub(super) stop_dispatch: CancellationToken,
    /// Stops every running attempt; they go back to QUEUED (drain step 4).
    pub(super) stop_attempts: CancellationToken,
    /// Stops lease renewal, once drain has no attempt left running.
    pub(super) stop_heartbeat: CancellationToken,
}

/// Whether new jobs are taken, and how many may wait.
pub(super) struct Intake {
    pub(super) accepting: AtomicBool,
    /// Set when the store refused a write as unavailable (a full disk):
    /// health goes NOT_SERVING until a probe write succeeds (see
    /// `server::follow_store_health`).
    pub(super) write_failing: AtomicBool,
    /// The store's free-space reserve (`store.min_free`; SQLite only):
    /// below it submits are refused and health is NOT_SERVING, while
    /// outcomes and the rest are still written.
    pub(super) disk: Option<Arc<crate::disk_reserve::DiskGuard>>,
    pub(super) max_backlog: u64,
    /// Parents (depends_on) one job may have.
    pub(super) max_parents: usize,
}

/// The attempts running here.
pub(super) struct Attempts {
    /// Workers' progress, coalesced per job.
    pub(super) progress: super::progress::ProgressGates,
    /// Stop tokens of running attempts, to signal a cancel.
    /// Keyed by job and attempt, so an old attempt never removes a newer
    /// one's token.
    pub(super) running: Mutex<HashMap<(Uuid, u32), RunningAttempt>>,
    /// Shared stores: see [`feed::LateNotices`].
    pub(super) late_notices: Mutex<feed::LateNotices>,
    /// The longest `stop_grace` of any kind (kinds are fixed at start; read
    /// on every claim and submit).
    pub(super) max_stop_grace: Duration,
}

/// Parts connected once, after start.
pub(super) struct Wiring {
    /// Worker sessions for remote kinds (set once at start).
    pub(super) remote: std::sync::OnceLock<Arc<crate::handlers::remote::Workers>>,
    /// Span export, when `[tracing] otlp_endpoint` is set.
    pub(super) spans: std::sync::OnceLock<crate::otel::Spans>,
}

/// Settings fixed at start.
pub(super) struct Settings {
    /// Several instances share the store (read once: it decides paths taken
    /// per job).
    pub(super) shared: bool,
    pub(super) retention: Duration,
    /// Cron schedules (`[[schedules]]`), run by the scheduler task.
    pub(super) schedules: Vec<crate::config::Schedule>,
}
