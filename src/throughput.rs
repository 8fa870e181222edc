//! Jobs finished per minute, per kind and outcome, over the last hour: what
//! the dashboard's throughput chart shows (`GET /v1/stats/throughput`).
//!
//! Fed where the metrics count a finished job (the one transition path), so
//! it counts exactly what `jobd_jobs_finished_total` counts, on this
//! instance. Kept in memory: a restart starts it empty.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::job::JobState;

/// Minutes kept: the chart's longest window.
pub const WINDOW_MINUTES: u64 = 60;

/// Jobs that finished in one minute, of one kind, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// One minute: its start (whole minutes since the Unix epoch) and its
/// counts per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minute {
    pub minute: u64,
    pub kinds: BTreeMap<String, Counts>,
}

/// The last [`WINDOW_MINUTES`] minutes, oldest first: a ring that never
/// holds more (each minute's map is bounded by the kinds that exist). A
/// plain mutex: one short update per finished job, no await inside.
#[derive(Debug, Default)]
pub struct Throughput {
    minutes: Mutex<VecDeque<Minute>>,
}

/// The current minute since the epoch.
fn now_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Throughput {
    pub fn new() -> Throughput {
        Throughput::default()
    }

    /// A job of `kind` ended in `state` (terminal states only; others are
    /// ignored).
    pub fn record(&self, kind: &str, state: JobState) {
        self.record_at(now_minute(), kind, state);
    }

    fn record_at(&self, minute: u64, kind: &str, state: JobState) {
        let mut ring = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        if ring.back().is_none_or(|m| m.minute < minute) {
            ring.push_back(Minute {
                minute,
                kinds: BTreeMap::new(),
            });
        }
        while ring
            .front()
            .is_some_and(|m| m.minute + WINDOW_MINUTES <= minute)
        {
            ring.pop_front();
        }
        // The clock may step back: count in that minute if it is kept.
        let Some(m) = ring.iter_mut().rev().find(|m| m.minute == minute) else {
            return;
        };
        let c = m.kinds.entry(kind.to_string()).or_default();
        match state {
            JobState::Succeeded => c.succeeded += 1,
            JobState::Failed => c.failed += 1,
            JobState::Cancelled => c.cancelled += 1,
            _ => {}
        }
    }

    /// The last `minutes` minutes (at most [`WINDOW_MINUTES`]), oldest
    /// first, the current one last; a minute with no finished job is
    /// there, empty.
    pub fn last(&self, minutes: u64) -> Vec<Minute> {
        self.last_at(now_minute(), minutes)
    }

    fn last_at(&self, now: u64, minutes: u64) -> Vec<Minute> {
        let minutes = minutes.clamp(1, WINDOW_MINUTES);
        let ring = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        (0..minutes)
            .rev()
            .filter_map(|ago| now.checked_sub(ago))
            .map(|minute| {
                ring.iter()
                    .find(|m| m.minute == minute)
                    .cloned()
                    .unwrap_or(Minute {
                        minute,
                        kinds: BTreeMap::new(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_kind_within_the_window() {
        let t = Throughput::new();
        t.record_at(100, "echo", JobState::Succeeded);
        t.record_at(100, "echo", JobState::Succeeded);
        t.record_at(100, "fail", JobState::Failed);
        t.record_at(100, "echo", JobState::Running);
        t.record_at(102, "echo", JobState::Cancelled);
        let last = t.last_at(102, 3);
        assert_eq!(
            last.iter().map(|m| m.minute).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        assert_eq!(
            last[0].kinds["echo"],
            Counts {
                succeeded: 2,
                ..Counts::default()
            }
        );
        assert_eq!(last[0].kinds["fail"].failed, 1);
        assert!(last[1].kinds.is_empty());
        assert_eq!(last[2].kinds["echo"].cancelled, 1);
    }

    #[test]
    fn the_ring_keeps_one_hour_at_most() {
        let t = Throughput::new();
        for minute in 0..500 {
            t.record_at(minute, "echo", JobState::Succeeded);
        }
        assert_eq!(t.minutes.lock().unwrap().len(), WINDOW_MINUTES as usize);
        let last = t.last_at(499, 1000);
        assert_eq!(last.len(), WINDOW_MINUTES as usize);
        assert_eq!(last[0].minute, 440);
        // A step back in time counts in a kept minute, or is dropped.
        t.record_at(450, "echo", JobState::Succeeded);
        t.record_at(10, "echo", JobState::Succeeded);
        assert_eq!(t.last_at(499, 60)[10].kinds["echo"].succeeded, 2);
    }
}
