//! What the commands print: tables and job details for people (daemon text
//! made safe for a terminal), JSON for scripts.

use std::sync::OnceLock;

use serde_json::Value;

use crate::api::convert::state_from_proto;
use crate::http::json::{Json, Named};
use crate::proto::{self, JobState};

pub(super) fn state_name(s: i32) -> &'static str {
    JobState::try_from(s)
        .ok()
        .and_then(state_from_proto)
        .map_or("unspecified", |s| s.as_str())
}

pub(super) fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.to_string()),
        None => Value::Null,
    }
}

/// A reply printed as `--json` asked: the proto3 JSON mapping, exactly as
/// grpcurl prints it and the HTTP/JSON routes answer it (lowerCamelCase
/// fields, `JOB_STATE_…` enum names, bytes as base64, 64-bit integers as
/// strings, fields at their default left out), on one line.
pub(super) fn print_json<M: Named>(msg: &M) {
    static JSON: OnceLock<Result<Json, String>> = OnceLock::new();
    let printed = JSON
        .get_or_init(|| Json::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|j| j.to_vec(msg).map_err(|s| s.message().to_string()));
    match printed {
        Ok(bytes) => out!("{}", String::from_utf8_lossy(&bytes)),
        Err(e) => eprintln!("jobd: cannot print {} as JSON: {e}", M::NAME),
    }
}

/// Text from the daemon made safe for a terminal: control characters
/// (ESC, CR, C1 CSI, ...) are shown escaped instead of being executed by it;
/// `multiline` keeps newlines and tabs (results, errors).
pub(super) fn printable(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && !(multiline && matches!(c, '\n' | '\t')) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn print_job(j: &proto::Job) {
    let show = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into())
    };
    out!("id:           {}", j.id);
    out!("kind:         {}", j.kind);
    out!("state:        {}", state_name(j.state));
    out!("attempt:      {} of {}", j.attempt, j.max_attempts);
    out!("priority:     {}", j.priority);
    if !j.idempotency_key.is_empty() {
        out!("key:          {}", printable(&j.idempotency_key, false));
    }
    if !j.ordering_key.is_empty() {
        out!("ordering key: {}", printable(&j.ordering_key, false));
    }
    if !j.dedup_key.is_empty() {
        out!("dedup key:    {}", printable(&j.dedup_key, false));
    }
    // Only a key of its own: by default it is the ordering key shown above.
    if !j.fairness_key.is_empty() && j.fairness_key != j.ordering_key {
        out!("fairness key: {}", printable(&j.fairness_key, false));
    }
    for (k, v) in &j.labels {
        out!(
            "label:        {}={}",
            printable(k, false),
            printable(v, false)
        );
    }
    out!("created:      {}", show(&j.created_at));
    out!("started:      {}", show(&j.started_at));
    out!("finished:     {}", show(&j.finished_at));
    if j.next_attempt_at.is_some() {
        out!("next attempt: {}", show(&j.next_attempt_at));
    }
    if let Some(p) = &j.progress {
        let message = printable(&p.message, true);
        out!("progress:     {}% {message}", p.percent);
    }
    if j.start_before.is_some() {
        out!("start before: {}", show(&j.start_before));
    }
    if !j.last_error.is_empty() {
        out!("last error:   {}", printable(&j.last_error, true));
    }
    // The history explains what went before: shown when there is more
    // than one clean attempt to tell.
    if j.attempts.len() > 1 || j.attempts.iter().any(|a| !a.error.is_empty()) {
        out!("attempts:");
        for a in &j.attempts {
            let error = printable(&a.error, true);
            let worker = if a.worker.is_empty() { "-" } else { &a.worker };
            out!(
                "  {:>3}  {:<9}  {:<16}  {}  {}",
                a.attempt,
                a.outcome,
                printable(worker, false),
                show(&a.finished_at),
                error
            );
        }
    }
    if !j.result.is_empty() {
        match std::str::from_utf8(&j.result) {
            Ok(text) => out!("result:       {}", printable(text.trim_end(), true)),
            Err(_) => out!(
                "result:       {} bytes, not UTF-8 text (--output FILE writes them, --json shows base64)",
                j.result.len()
            ),
        }
    }
}

pub(super) fn print_schedules(list: &[proto::ScheduleStatus]) {
    out!(
        "{:<16}  {:<12}  {:<20}  {:<16}  {:<26}  {:<6}  LAST_JOB",
        "ID",
        "KIND",
        "CRON",
        "TIMEZONE",
        "NEXT_FIRE",
        "PAUSED"
    );
    for s in list {
        out!(
            "{:<16}  {:<12}  {:<20}  {:<16}  {:<26}  {:<6}  {}",
            printable(&s.id, false),
            printable(&s.kind, false),
            printable(&s.cron, false),
            printable(&s.timezone, false),
            s.next_fire_at
                .as_ref()
                .map_or_else(|| "never".to_string(), |t| t.to_string()),
            if s.paused { "yes" } else { "no" },
            if s.last_job_id.is_empty() {
                "-"
            } else {
                &s.last_job_id
            }
        );
    }
}

pub(super) fn print_kinds(kinds: &[proto::KindStatus]) {
    out!(
        "{:<16}  {:<12}  {:<6}  {:>8}  {:>8}  {:>10}  {:>8}  {:>5}  {:>7}",
        "KIND",
        "HANDLER",
        "PAUSED",
        "QUEUED",
        "RUNNING",
        "RETRY_WAIT",
        "FAILED",
        "CONC",
        "WORKERS"
    );
    for k in kinds {
        out!(
            "{:<16}  {:<12}  {:<6}  {:>8}  {:>8}  {:>10}  {:>8}  {:>5}  {:>7}",
            printable(&k.kind, false),
            k.handler,
            if k.paused { "yes" } else { "no" },
            k.queued,
            k.running,
            k.retry_wait,
            k.failed,
            k.concurrency,
            k.connected_workers
        );
    }
}

/// `jobd list`'s table: one line per job, the last error's first line cut
/// to 60 characters; `more` adds a line saying that more jobs match.
pub(super) fn print_job_table(jobs: &[proto::Job], more: bool) {
    out!(
        "{:<36}  {:<10}  {:<16}  {:>7}  {:<27}  LAST ERROR",
        "ID",
        "STATE",
        "KIND",
        "ATTEMPT",
        "CREATED"
    );
    for j in jobs {
        let mut error = printable(j.last_error.lines().next().unwrap_or(""), false);
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        out!(
            "{:<36}  {:<10}  {:<16}  {:>7}  {:<27}  {}",
            j.id,
            state_name(j.state),
            j.kind,
            format!("{}/{}", j.attempt, j.max_attempts),
            ts(&j.created_at).as_str().unwrap_or("-"),
            error
        );
    }
    if more {
        out!("(more jobs match: --limit N for more, --all for every one)");
    }
}

/// `jobd retry`'s answer: the ids on stdout (for scripts), what was skipped
/// and the counts on stderr.
pub(super) fn print_retry(r: &proto::RetryJobsResponse, dry_run: bool) {
    for id in &r.ids {
        out!("{id}");
    }
    for s in &r.skipped {
        eprintln!("skipped {}: {}", s.id, printable(&s.reason, false));
    }
    eprintln!(
        "{} matched, {} {}{}",
        r.matched,
        if dry_run { r.matched } else { r.retried },
        if dry_run {
            "would be retried (dry run)"
        } else {
            "retried"
        },
        if r.more {
            "; more matched: run again"
        } else {
            ""
        }
    );
}
