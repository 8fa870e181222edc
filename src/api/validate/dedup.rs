//! A submit's `dedup`: a key, a mode, and DEBOUNCE's window and cap.

use std::time::Duration;

use super::{duration, Violations, MAX_RUN_AT_AHEAD};
use crate::job::{Dedup, DedupMode};
use crate::proto;

/// A dedup key's bound, the same as an idempotency key's.
pub const MAX_DEDUP_KEY_BYTES: usize = 256;

/// The submit's dedup, checked; `None` when absent or bad (each problem
/// added to `v`, naming its field). `has_run_at`: DEBOUNCE sets run_at
/// itself, so a submit giving both is refused (the deadline is checked
/// against that run_at by `submit`, once every value is known).
pub(super) fn dedup(
    d: Option<&proto::Dedup>,
    has_run_at: bool,
    v: &mut Violations<'_>,
) -> Option<Dedup> {
    let d = d?;
    let before = v.list.len();
    if d.key.is_empty() {
        v.bad("dedup.key", "required".into());
    } else if let Some(why) = super::key_problem(&d.key, MAX_DEDUP_KEY_BYTES) {
        v.bad("dedup.key", why);
    }
    let window = bounded(d.window.as_ref(), "dedup.window", v);
    let max_wait = bounded(d.max_wait.as_ref(), "dedup.max_wait", v);
    let mode = match proto::DedupMode::try_from(d.mode) {
        Ok(proto::DedupMode::Unspecified | proto::DedupMode::Keep) => Some(DedupMode::Keep),
        Ok(proto::DedupMode::Replace) => Some(DedupMode::Replace),
        Ok(proto::DedupMode::Debounce) => match window {
            Some(window) => Some(DedupMode::Debounce { window, max_wait }),
            None => {
                if d.window.is_none() {
                    v.bad("dedup.window", "required with mode DEBOUNCE".into());
                }
                None
            }
        },
        Err(_) => {
            v.bad("dedup.mode", format!("unknown mode {}", d.mode));
            None
        }
    };
    if let Some(DedupMode::Keep | DedupMode::Replace) = mode {
        for (field, set) in [
            ("dedup.window", d.window.is_some()),
            ("dedup.max_wait", d.max_wait.is_some()),
        ] {
            if set {
                v.bad(field, "only with mode DEBOUNCE".into());
            }
        }
    }
    if matches!(mode, Some(DedupMode::Debounce { .. })) && has_run_at {
        v.bad(
            "run_at",
            "not with dedup mode DEBOUNCE, which sets run_at = now + dedup.window".into(),
        );
    }
    let mode = mode.filter(|_| v.list.len() == before)?;
    Some(Dedup {
        key: d.key.clone(),
        mode,
    })
}

/// A duration more than 0 and at most a year; `None` when unset or bad.
fn bounded(
    d: Option<&prost_types::Duration>,
    field: &str,
    v: &mut Violations<'_>,
) -> Option<Duration> {
    let d = d?;
    match duration(d) {
        Some(d) if !d.is_zero() && d <= MAX_RUN_AT_AHEAD => Some(d),
        _ => {
            v.bad(field, "must be more than 0 and at most a year".into());
            None
        }
    }
}
