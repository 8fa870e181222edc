//! When to try again: exponential backoff with full jitter, capped.

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffConfig;

/// The ceiling of the wait after attempt `attempt` (1-based) failed:
/// `min(max, initial * multiplier^(attempt-1))`.
pub fn backoff_cap(b: &BackoffConfig, attempt: u32) -> Duration {
    let exp = b
        .multiplier
        .powi(attempt.saturating_sub(1).min(1000) as i32);
    let secs = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
    Duration::try_from_secs_f64(secs).unwrap_or(b.max)
}

/// Full jitter: uniform in `[0, cap]`, so retries of many jobs that failed
/// together spread out instead of stampeding.
pub fn backoff_delay(b: &BackoffConfig, attempt: u32) -> Duration {
    let cap = backoff_cap(b, attempt);
    if cap.is_zero() {
        return cap;
    }
    let nanos = rand::rng().random_range(0..=cap.as_nanos().min(u64::MAX as u128) as u64);
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }

    #[test]
    fn cap_grows_then_stops_at_max() {
        let b = cfg();
        assert_eq!(backoff_cap(&b, 1), Duration::from_millis(100));
        assert_eq!(backoff_cap(&b, 2), Duration::from_millis(200));
        assert_eq!(backoff_cap(&b, 4), Duration::from_millis(800));
        assert_eq!(backoff_cap(&b, 5), Duration::from_secs(1));
        assert_eq!(backoff_cap(&b, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delay_stays_within_cap() {
        let b = cfg();
        for attempt in 1..10 {
            for _ in 0..100 {
                assert!(backoff_delay(&b, attempt) <= backoff_cap(&b, attempt));
            }
        }
    }
}
