//! Rate-limited warnings: on a full disk or a store that is down, every
//! write fails, and a line per failure would fill the log (on the disk that
//! may be the full one). A site keeps a [`LogLimit`] and logs only when
//! [`LogLimit::admit`] says so, with the count of lines it held back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One line per site at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Admits one log line per [`LOG_EVERY`], counting the ones it held back.
#[derive(Debug)]
pub struct LogLimit {
    /// Milliseconds since the process's first use of any limit, +1 (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written.
    pub fn admit(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now < last + LOG_EVERY.as_millis() as u64
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}
