//! The job model shared by every layer: states, the job record, and what a
//! submit asks for. Times are microseconds since the Unix epoch (`Micros`),
//! the unit every store keeps.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

/// Longest kind name.
pub const MAX_KIND_LEN: usize = 64;

/// Kind names, for the config and for requests alike:
/// `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn is_valid_kind(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KIND_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// Longest ordering key, in bytes.
pub const MAX_ORDERING_KEY_LEN: usize = 256;

/// The furthest ahead any time a job carries may be (a `run_at`, a start
/// deadline, a kind's `start_within`, a debounce window): a year and a day.
/// A time further off is almost surely a mistake, refused rather than stored.
pub const MAX_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The current wall-clock time in [`Micros`].
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

/// Adds a duration to a time, saturating instead of overflowing.
pub fn add_micros(t: Micros, d: Duration) -> Micros {
    t.saturating_add(d.as_micros().min(i64::MAX as u128) as i64)
}

/// Where a job is in its life; see DESIGN.md "States".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
    /// Some of its parents (depends_on) have not finished: never claimed.
    Waiting,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::RetryWait,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Waiting,
    ];

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Waiting states count against the backlog bound.
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::RetryWait | JobState::Waiting
        )
    }

    /// Stable lower-case name, used in storage, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::RetryWait => "retry_wait",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Waiting => "waiting",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub state: JobState,
    /// Number of the current or last attempt; also the lease's fencing token.
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `Bytes` so snapshots handed to workers and watchers share one buffer.
    pub payload: Bytes,
    pub result: Bytes,
    pub timeout: Duration,
    pub created_at: Micros,
    pub updated_at: Micros,
    pub started_at: Option<Micros>,
    pub finished_at: Option<Micros>,
    /// Not before this time may the next attempt start.
    pub next_attempt_at: Option<Micros>,
    /// While RUNNING: when the attempt's lease runs out and the sweeper may
    /// take the job back.
    pub lease_expires_at: Option<Micros>,
    pub last_error: String,
    /// Bumped by every state change: the WatchStatus sequence.
    pub sequence: u64,
    /// Hash of the submit request, compared on idempotent resubmits.
    pub request_hash: [u8; 32],
    /// Set only on the snapshot a claim returns: when this attempt became
    /// runnable (for the queue-wait metric). Not stored.
    pub ready_at: Option<Micros>,
    /// Jobs of one kind and key run at most `key_concurrency` at once, in
    /// submit order (when the kind sets it).
    pub ordering_key: Option<String>,
    /// The submitter's W3C trace context, handed to every attempt.
    pub trace: Option<TraceContext>,
    /// How far it got, as its worker last reported; kept after it ends.
    pub progress: Option<Progress>,
    /// Where an attempt got (a worker's Touch, a command's checkpoint
    /// file), handed to the next attempt; empty for none.
    pub checkpoint: Bytes,
    /// The jobs it depends on (depends_on), in the order given.
    pub parents: Vec<Uuid>,
    /// Parents not finished yet; WAITING while above 0.
    pub waiting_on: u32,
    /// What a parent's FAILED or CANCELLED end does to it.
    pub on_parent_failure: ParentFailure,
    /// Its last [`MAX_ATTEMPT_HISTORY`] ended attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Not started by then, it ends FAILED (never starts late).
    pub start_before: Option<Micros>,
    /// The dedup key it was submitted with ([`Dedup`]); held while it has
    /// not started.
    pub dedup_key: Option<String>,
    /// The key a `round_robin` kind's claims rotate over: the submit's
    /// `fairness_key`, else its ordering key, else "" (one shared key).
    pub fairness_key: String,
}

/// Ended attempts a job keeps (the oldest go first).
pub const MAX_ATTEMPT_HISTORY: usize = 25;
/// Error text kept per attempt in the history.
pub const MAX_ATTEMPT_ERROR_BYTES: usize = 1024;

/// One ended attempt: when, how, and where it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at: Micros,
    pub finished_at: Micros,
    /// succeeded, failed, retried, lost, cancelled or requeued.
    pub outcome: String,
    pub error: String,
    /// A remote worker's id, "local", or empty when unknown.
    pub worker: String,
}

/// A submit's deduplication (`SubmitRequest.dedup`): what to do when a job
/// of the same kind holds `key` and has not started yet. The rules are
/// `store::dedup`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    pub key: String,
    pub mode: DedupMode,
}

/// See [`Dedup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// The existing job, unchanged.
    Keep,
    /// The existing job takes the new payload, labels and run_at.
    Replace,
    /// Replace, with run_at = now + `window`, never later than the first
    /// submit + `max_wait`.
    Debounce {
        window: Duration,
        max_wait: Option<Duration>,
    },
}

/// What a job does when one of its parents ends FAILED or CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentFailure {
    /// It becomes CANCELLED too, and so on down the graph.
    #[default]
    Cancel,
    /// It runs once every parent is terminal, whatever their outcome.
    Run,
}

/// How far a running job got (a worker's `Progress`). Written only for the
/// attempt that holds the job; each stored value is an event (the
/// sequence moves, the state does not).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// 0..=100.
    pub percent: u32,
    pub message: String,
    pub details: Bytes,
    pub updated_at: Micros,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Increasing per job.
    pub seq: u64,
    pub attempt: u32,
    pub at: Micros,
    pub text: String,
}

/// W3C trace context (`traceparent`, `tracestate`) a submitter sent, kept
/// with its job so the work it caused joins the submitter's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    /// Empty when none was sent (or it was over [`MAX_TRACESTATE_BYTES`]).
    pub tracestate: String,
}

/// The longest `tracestate` kept; W3C asks propagators to pass at least 512
/// bytes, and a longer one is dropped whole rather than cut mid-entry.
pub const MAX_TRACESTATE_BYTES: usize = 512;

impl TraceContext {
    /// Reads the two headers. A `traceparent` that is not W3C's format is
    /// ignored (W3C: the receiver starts afresh, it does not fail the
    /// request), and `tracestate` is read only beside a valid one.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?.trim();
        if !valid_traceparent(tp) {
            return None;
        }
        let ts = tracestate.unwrap_or("").trim();
        let ts_ok =
            ts.len() <= MAX_TRACESTATE_BYTES && ts.bytes().all(|b| (0x20..0x7f).contains(&b));
        Some(TraceContext {
            traceparent: tp.to_ascii_lowercase(),
            tracestate: if ts_ok { ts.to_string() } else { String::new() },
        })
    }

    /// Trace id, parent span id and flags as bytes; `None` if the stored
    /// text is not a valid `traceparent` (it always is when jobd wrote it).
    pub fn ids(&self) -> Option<([u8; 16], [u8; 8], u8)> {
        fn bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
            let mut out = [0u8; N];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        }
        let p: Vec<&str> = self.traceparent.split('-').collect();
        if p.len() < 4 || p[1].len() != 32 || p[2].len() != 16 || p[3].len() != 2 {
            return None;
        }
        Some((bytes(p[1])?, bytes(p[2])?, bytes::<1>(p[3])?[0]))
    }
}

/// `version-traceid-parentid-flags`, hex; version `ff` and all-zero ids are
/// invalid; a later version may add fields after the flags.
fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let zero = |p: &str| p.bytes().all(|b| b == b'0');
    if parts.len() < 4 || !hex(parts[0], 2) || parts[0].eq_ignore_ascii_case("ff") {
        return false;
    }
    if parts[0] == "00" && parts.len() != 4 {
        return false;
    }
    hex(parts[1], 32) && !zero(parts[1]) && hex(parts[2], 16) && !zero(parts[2]) && hex(parts[3], 2)
}

/// A validated submit, ready for the store.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: String,
    pub max_attempts: u32,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub payload: Bytes,
    pub timeout: Duration,
    pub run_at: Option<Micros>,
    pub request_hash: [u8; 32],
    pub created_at: Micros,
    pub ordering_key: Option<String>,
    pub trace: Option<TraceContext>,
    /// Set by the engine when it holds a free worker slot for this job: if
    /// no job of its kind is ready before it, the store writes it RUNNING
    /// (attempt 1, lease of timeout + this slack) in the insert's own commit,
    /// so an idle daemon runs it without a separate claim commit. A store
    /// may ignore it (the job is then QUEUED as usual).
    pub start: Option<Duration>,
    /// Jobs it waits for (existing ids; the API resolves `$N`).
    pub parents: Vec<Uuid>,
    pub on_parent_failure: ParentFailure,
    /// The start deadline (see [`Job::start_before`]).
    pub start_before: Option<Micros>,
    /// Merge into a not-started job of the same kind and key.
    pub dedup: Option<Dedup>,
    /// See [`Job::fairness_key`] (already defaulted to the ordering key).
    pub fairness_key: String,
}

impl NewJob {
    /// The job record this submit creates, QUEUED.
    pub fn into_job(self) -> Job {
        Job {
            id: self.id,
            kind: self.kind,
            state: JobState::Queued,
            attempt: 0,
            max_attempts: self.max_attempts,
            priority: self.priority,
            idempotency_key: self.idempotency_key,
            labels: self.labels,
            payload: self.payload,
            result: Bytes::new(),
            timeout: self.timeout,
            created_at: self.created_at,
            updated_at: self.created_at,
            started_at: None,
            finished_at: None,
            next_attempt_at: self.run_at.filter(|t| *t > self.created_at),
            lease_expires_at: None,
            last_error: String::new(),
            sequence: 1,
            request_hash: self.request_hash,
            ready_at: None,
            ordering_key: self.ordering_key,
            trace: self.trace,
            progress: None,
            checkpoint: Bytes::new(),
            parents: self.parents,
            waiting_on: 0,
            on_parent_failure: self.on_parent_failure,
            attempts: Vec::new(),
            start_before: self.start_before,
            dedup_key: self.dedup.map(|d| d.key),
            fairness_key: self.fairness_key,
        }
    }
}

#[cfg(test)]
impl NewJob {
    /// A minimal job of kind `k` for unit tests.
    pub(crate) fn example() -> NewJob {
        NewJob {
            id: Uuid::nil(),
            kind: "k".into(),
            max_attempts: 1,
            priority: 0,
            idempotency_key: None,
            labels: Default::default(),
            payload: Default::default(),
            timeout: Duration::from_secs(1),
            run_at: None,
            request_hash: [0; 32],
            created_at: 0,
            ordering_key: None,
            trace: None,
            start: None,
            parents: Vec::new(),
            on_parent_failure: Default::default(),
            start_before: None,
            dedup: None,
            fairness_key: String::new(),
        }
    }
}

#[cfg(test)]
mod trace_tests {
    use super::TraceContext;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_w3c_traceparent_and_ignores_what_is_not() {
        let t = TraceContext::from_headers(Some(TP), Some("congo=t61rcWkgMzE")).unwrap();
        let (trace, parent, flags) = t.ids().unwrap();
        assert_eq!(trace[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!((parent[7], flags), (0xb7, 1));
        assert_eq!(t.tracestate, "congo=t61rcWkgMzE");
        let upper = TP.to_ascii_uppercase();
        assert_eq!(
            TraceContext::from_headers(Some(&upper), None)
                .unwrap()
                .traceparent,
            TP
        );
        // A later version may carry more fields.
        let v1 = format!("01{}-extra", &TP[2..]);
        assert!(TraceContext::from_headers(Some(&v1), None).is_some());
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::from_headers(Some(bad), Some("a=b")),
                None,
                "{bad}"
            );
        }
        // tracestate too long or not printable: dropped, traceparent kept.
        let long = "a=".to_string() + &"x".repeat(600);
        for ts in [long.as_str(), "a=\u{7}"] {
            assert_eq!(
                TraceContext::from_headers(Some(TP), Some(ts))
                    .unwrap()
                    .tracestate,
                ""
            );
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }
}
