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
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::RetryWait,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
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
        matches!(self, JobState::Queued | JobState::RetryWait)
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
}

impl NewJob {
    /// The job record this submit creates.
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
        }
    }
}
