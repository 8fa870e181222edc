//! Kinds: what the file says (`KindConfig`) and what the engine runs
//! (`KindSettings`, every default filled in and every value checked).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    duration, invalid, opt_duration, ser_duration, ser_opt_duration, ClientTls, Config,
    ConfigError, DEFAULT_KILL_GRACE, DEFAULT_KIND_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RESULT_BYTES, DEFAULT_STOP_GRACE, JOB_REPLY_OVERHEAD, MAX_ATTEMPTS_LIMIT,
    MAX_KILL_GRACE, MAX_TIMEOUT,
};

/// Which handler runs a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerType {
    #[default]
    Echo,
    Sleep,
    Fail,
    Command,
    Http,
    /// Done by worker processes connected over `jobd.v1.WorkerService`.
    Remote,
}

/// A kind as written in the file: every key but `handler` optional.
/// `Default` is an `echo` kind with nothing set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindConfig {
    pub handler: HandlerType,
    /// Default per-attempt timeout (a submit may set its own).
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub timeout: Option<Duration>,
    /// Default attempts in all (a submit may set its own).
    pub max_attempts: Option<u32>,
    /// Jobs of this kind running at once; default: `queue.workers`.
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Largest payload for this kind; default: `queue.max_payload_bytes`.
    pub max_payload_bytes: Option<usize>,
    /// Result bytes kept; longer output is cut. Default 64 KiB; at most
    /// [`Config::max_result_bytes_allowed`], so every job fits a reply.
    pub max_result_bytes: Option<usize>,
    /// `command`: argv; the payload goes to stdin, stdout is the result.
    pub command: Option<Vec<String>>,
    /// `command`: extra environment (besides JOBD_JOB_ID, JOBD_ATTEMPT, JOBD_KIND).
    #[serde(default, serialize_with = "super::ser_redacted_values")]
    pub env: BTreeMap<String, String>,
    /// `command`: working directory (must exist).
    pub working_dir: Option<PathBuf>,
    /// `command`: exit codes that mean "do not retry".
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// `command`: SIGTERM-to-SIGKILL wait on timeout, cancel and drain.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub kill_grace: Option<Duration>,
    /// `http`: where the payload is sent.
    pub url: Option<String>,
    /// `http`: request method (default POST).
    pub method: Option<String>,
    /// `http`: extra request headers.
    #[serde(default, serialize_with = "super::ser_redacted_values")]
    pub headers: BTreeMap<String, String>,
    /// `http` (https:// URLs): PEM CA bundle the server's certificate must
    /// chain to, instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// `http` (https:// URLs): PEM client certificate chain, for a server
    /// that requires mTLS (with `key`).
    pub cert: Option<PathBuf>,
    /// `http`: PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// `http`: how long connecting (TCP and TLS) may take, apart from the
    /// attempt's `timeout` for the whole request. Default 10 s.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub connect_timeout: Option<Duration>,
    /// Jobs of one ordering key running (or waiting for a retry) at once at
    /// most, in submit order; unset: ordering keys are stored and ignored.
    pub key_concurrency: Option<u32>,
    /// Attempts started at most this often, for all instances together:
    /// `"50/s"`, `"600/m"`, `"1000/h"`.
    pub rate: Option<String>,
    /// Attempts that may start at once after an idle spell; default: the
    /// rate per second, rounded up (at least 1).
    pub burst: Option<u32>,
    /// How a claim orders the kind's due jobs: `"none"` (default: priority,
    /// then submit order) or `"round_robin"` (key by key, see
    /// [`Fairness::RoundRobin`]).
    pub fairness: Option<Fairness>,
    /// Each fairness key's own rate (`"5/s"`, like `rate`), for all
    /// instances together; needs `fairness = "round_robin"`.
    pub key_rate: Option<String>,
    /// Each fairness key's burst; default: `key_rate` per second, rounded
    /// up (at least 1).
    pub key_burst: Option<u32>,
    /// An attempt that reports no progress and writes no log line for this
    /// long fails with "heartbeat timeout" (retryable), even while its
    /// worker session is alive: a hung handler in a live process. Unset:
    /// only the attempt's timeout applies.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub heartbeat_timeout: Option<Duration>,
    /// A start deadline for every job of the kind, counted from its
    /// submit: not started within it, a job ends FAILED ("expired: …")
    /// and never starts late. A submit's own `start_before` may be earlier.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub start_within: Option<Duration>,
    /// The longest a worker's Touch may push an attempt's deadline, counted
    /// from its start; default ten times `timeout`, at least `timeout`.
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub max_timeout: Option<Duration>,
    /// Log lines kept per job (the newest), default 1,000, at most 100,000.
    pub log_lines: Option<usize>,
}

/// Default [`KindConfig::log_lines`].
pub(super) const DEFAULT_LOG_LINES: usize = 1000;
/// Most [`KindConfig::log_lines`].
pub(super) const MAX_LOG_LINES: usize = 100_000;
/// Longest `start_within`.
const MAX_START_WITHIN: Duration = crate::job::MAX_AHEAD;

/// Exponential backoff with full jitter: the wait before attempt n+1 is
/// uniform in [0, min(max, initial * multiplier^(n-1))].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub initial: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
        }
    }
}

/// What runs a kind, with its settings checked.
#[derive(Debug, Clone)]
pub enum HandlerSpec {
    Echo,
    Sleep,
    Fail,
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        working_dir: Option<PathBuf>,
        permanent_exit_codes: Vec<i32>,
        kill_grace: Duration,
    },
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls: ClientTls,
        connect_timeout: Duration,
    },
    Remote,
}

/// Default and bounds of an `http` kind's `connect_timeout`.
pub(crate) const DEFAULT_HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// A kind with every default filled in.
#[derive(Debug, Clone)]
pub struct KindSettings {
    pub name: String,
    pub handler: HandlerSpec,
    /// How long a handler told to stop may take before its task is aborted.
    pub stop_grace: Duration,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: usize,
    pub backoff: BackoffConfig,
    pub max_payload_bytes: usize,
    pub max_result_bytes: usize,
    /// Ordering keys and rate, enforced by the store's claim.
    pub limits: KindLimits,
    /// See [`KindConfig::heartbeat_timeout`].
    pub heartbeat_timeout: Option<Duration>,
    /// See [`KindConfig::log_lines`].
    pub log_lines: usize,
    /// See [`KindConfig::max_timeout`].
    pub max_timeout: Duration,
    /// See [`KindConfig::start_within`].
    pub start_within: Option<Duration>,
}

impl Config {
    /// With no kinds declared, jobd serves the builtin demo kinds so the
    /// README's run command gives a usable daemon at once.
    pub fn with_default_kinds(mut self) -> Config {
        if self.kinds.is_empty() {
            for (name, handler) in [
                ("echo", HandlerType::Echo),
                ("sleep", HandlerType::Sleep),
                ("fail", HandlerType::Fail),
            ] {
                self.kinds.insert(
                    name.into(),
                    KindConfig {
                        handler,
                        ..KindConfig::default()
                    },
                );
            }
        }
        self
    }
}

/// Resolves every declared kind against the queue settings.
pub(super) fn resolve(config: &Config) -> Result<Vec<KindSettings>, ConfigError> {
    let q = &config.queue;
    let mut kinds = Vec::new();
    for (name, k) in &config.kinds {
        let key = |f: &str| format!("kinds.{name}.{f}");
        if !crate::job::is_valid_kind(name) {
            return Err(invalid(
                format!("kinds.{name}"),
                "kind names match [a-z0-9][a-z0-9_.-]{0,63}",
            ));
        }
        let (handler, stop_grace) = handler_spec(name, k)?;
        let timeout = k.timeout.unwrap_or(DEFAULT_KIND_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(invalid(
                key("timeout"),
                "must be more than 0 and at most 24h",
            ));
        }
        let max_attempts = k.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(invalid(key("max_attempts"), "must be 1..=100"));
        }
        let concurrency = k.concurrency.unwrap_or(q.workers);
        if concurrency == 0 {
            return Err(invalid(key("concurrency"), "must be at least 1"));
        }
        let b = &k.backoff;
        if !(b.multiplier.is_finite() && b.multiplier >= 1.0 && b.multiplier <= 100.0) {
            return Err(invalid(key("backoff.multiplier"), "must be 1.0..=100.0"));
        }
        if b.initial > b.max {
            return Err(invalid(
                key("backoff.initial"),
                "must not exceed backoff.max",
            ));
        }
        let max_payload_bytes = k.max_payload_bytes.unwrap_or(q.max_payload_bytes);
        if max_payload_bytes > q.max_payload_bytes {
            return Err(invalid(
                key("max_payload_bytes"),
                "must not exceed queue.max_payload_bytes",
            ));
        }
        // A result that cannot fit a reply would make its job unreadable
        // (GetStatus, WatchStatus and ListJobs would all fail on it).
        let result_room = config.max_result_bytes_allowed();
        let max_result_bytes = match k.max_result_bytes {
            Some(n) if n > result_room => {
                return Err(invalid(
                    key("max_result_bytes"),
                    format!(
                        "{n} is over {result_room}: a job reply must fit the reply limit of {} \
                         bytes (the larger of limits.max_message_bytes and 2 x \
                         queue.max_payload_bytes) with {JOB_REPLY_OVERHEAD} bytes to spare \
                         for the job's other fields; raise one of those or lower this",
                        config.max_reply_bytes()
                    ),
                ))
            }
            Some(n) => n,
            None => DEFAULT_MAX_RESULT_BYTES.min(result_room),
        };
        let limits = limits(name, k)?;
        if k.heartbeat_timeout
            .is_some_and(|h| h < Duration::from_millis(100))
        {
            return Err(invalid(key("heartbeat_timeout"), "at least 100ms"));
        }
        let max_timeout = k.max_timeout.unwrap_or(timeout.saturating_mul(10));
        if max_timeout < timeout {
            return Err(invalid(
                key("max_timeout"),
                "must be at least the kind's timeout",
            ));
        }
        if k.start_within
            .is_some_and(|d| d.is_zero() || d > MAX_START_WITHIN)
        {
            return Err(invalid(key("start_within"), "more than 0 and at most 366d"));
        }
        let log_lines = k.log_lines.unwrap_or(DEFAULT_LOG_LINES);
        if log_lines == 0 || log_lines > MAX_LOG_LINES {
            return Err(invalid(key("log_lines"), "must be 1 to 100000"));
        }
        kinds.push(KindSettings {
            limits,
            name: name.clone(),
            handler,
            stop_grace,
            timeout,
            max_attempts,
            concurrency: concurrency.min(q.workers),
            backoff: b.clone(),
            max_payload_bytes,
            max_result_bytes,
            heartbeat_timeout: k.heartbeat_timeout,
            log_lines,
            max_timeout,
            start_within: k.start_within,
        });
    }
    Ok(kinds)
}

/// Most jobs of one key at once (`key_concurrency`).
pub(crate) const MAX_KEY_CONCURRENCY: u32 = 10_000;
/// Highest `rate`, per second, and highest `burst`.
pub(crate) const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;
pub(crate) const MAX_BURST: u32 = 1_000_000;

/// `key_concurrency`, `rate`, `burst`, `fairness`, `key_rate` and
/// `key_burst`, checked.
fn limits(name: &str, k: &KindConfig) -> Result<KindLimits, ConfigError> {
    let key = |f: &str| format!("kinds.{name}.{f}");
    if let Some(n) = k.key_concurrency {
        if n == 0 || n > MAX_KEY_CONCURRENCY {
            return Err(invalid(
                key("key_concurrency"),
                format!("must be 1..={MAX_KEY_CONCURRENCY} (leave it out to ignore ordering keys)"),
            ));
        }
    }
    let rate = rate_limit(k.rate.as_deref(), k.burst, &key("rate"), &key("burst"))?;
    let fairness = k.fairness.unwrap_or_default();
    let key_rate = rate_limit(
        k.key_rate.as_deref(),
        k.key_burst,
        &key("key_rate"),
        &key("key_burst"),
    )?;
    if key_rate.is_some() && fairness != Fairness::RoundRobin {
        // Per-key buckets are checked key by key, which only a rotation
        // over the keys does without walking a flooding key's jobs.
        return Err(invalid(
            key("key_rate"),
            "needs fairness = \"round_robin\" (buckets are per fairness key)",
        ));
    }
    if fairness == Fairness::RoundRobin && k.key_concurrency.is_some() {
        return Err(invalid(
            key("fairness"),
            "round_robin does not combine with key_concurrency (a kind rotates over its keys \
             or runs each key in order, not both)",
        ));
    }
    Ok(KindLimits {
        key_concurrency: k.key_concurrency,
        rate,
        fairness,
        key_rate,
    })
}

/// A rate and its burst (`rate`/`burst` or `key_rate`/`key_burst`),
/// checked; errors name `rate_key` or `burst_key`.
fn rate_limit(
    rate: Option<&str>,
    burst: Option<u32>,
    rate_key: &str,
    burst_key: &str,
) -> Result<Option<RateLimit>, ConfigError> {
    let Some(r) = rate else {
        if burst.is_some() {
            return Err(invalid(burst_key, "needs a rate"));
        }
        return Ok(None);
    };
    let per_second = parse_rate(r).ok_or_else(|| {
        invalid(
            rate_key,
            format!(
                "{r:?} is not a rate: a count above 0 per second, minute or hour, \
                 like \"50/s\", \"600/m\" or \"1000/h\" (at most {MAX_RATE_PER_SECOND}/s)"
            ),
        )
    })?;
    let burst = burst.unwrap_or(per_second.ceil().max(1.0) as u32);
    if burst == 0 || burst > MAX_BURST {
        return Err(invalid(burst_key, format!("must be 1..={MAX_BURST}")));
    }
    Ok(Some(RateLimit { per_second, burst }))
}

/// `"N/s"`, `"N/m"` or `"N/h"` (N above 0, may have a fraction) as a
/// per-second figure.
pub(crate) fn parse_rate(s: &str) -> Option<f64> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: f64 = n.trim().parse().ok()?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return None,
    };
    let r = n / per;
    (n.is_finite() && n > 0.0 && r <= MAX_RATE_PER_SECOND).then_some(r)
}

/// Checks the handler-specific keys: each belongs to one handler type.
/// Answers the handler and how long it may take to stop.
fn handler_spec(name: &str, k: &KindConfig) -> Result<(HandlerSpec, Duration), ConfigError> {
    only_own_keys(name, k)?;
    Ok(match k.handler {
        HandlerType::Echo => (HandlerSpec::Echo, DEFAULT_STOP_GRACE),
        HandlerType::Sleep => (HandlerSpec::Sleep, DEFAULT_STOP_GRACE),
        HandlerType::Fail => (HandlerSpec::Fail, DEFAULT_STOP_GRACE),
        HandlerType::Remote => (HandlerSpec::Remote, DEFAULT_STOP_GRACE),
        HandlerType::Command => command_spec(name, k)?,
        HandlerType::Http => http_spec(name, k)?,
    })
}

/// A key of another handler type (`url` on a `command` kind) is refused.
fn only_own_keys(name: &str, k: &KindConfig) -> Result<(), ConfigError> {
    let key = |f: &str| format!("kinds.{name}.{f}");
    let is_command = k.handler == HandlerType::Command;
    let is_http = k.handler == HandlerType::Http;
    for (field, set, ok) in [
        ("command", k.command.is_some(), is_command),
        ("env", !k.env.is_empty(), is_command),
        ("working_dir", k.working_dir.is_some(), is_command),
        (
            "permanent_exit_codes",
            !k.permanent_exit_codes.is_empty(),
            is_command,
        ),
        ("kill_grace", k.kill_grace.is_some(), is_command),
        ("url", k.url.is_some(), is_http),
        ("method", k.method.is_some(), is_http),
        ("headers", !k.headers.is_empty(), is_http),
        ("ca", k.ca.is_some(), is_http),
        ("cert", k.cert.is_some(), is_http),
        ("key", k.key.is_some(), is_http),
        ("connect_timeout", k.connect_timeout.is_some(), is_http),
    ] {
        if set && !ok {
            return Err(invalid(
                key(field),
                format!("not a setting of handler {:?}", k.handler).to_lowercase(),
            ));
        }
    }
    Ok(())
}

/// A `command` kind: argv, working directory and kill grace checked; it may
/// take the kill grace and a second more to stop.
fn command_spec(name: &str, k: &KindConfig) -> Result<(HandlerSpec, Duration), ConfigError> {
    let key = |f: &str| format!("kinds.{name}.{f}");
    let argv = k.command.clone().unwrap_or_default();
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(invalid(
            key("command"),
            "required: a non-empty argv list, e.g. [\"sha256sum\"]",
        ));
    }
    if let Some(dir) = &k.working_dir {
        if !dir.is_dir() {
            return Err(invalid(
                key("working_dir"),
                format!("{} is not a directory", dir.display()),
            ));
        }
    }
    let kill_grace = k.kill_grace.unwrap_or(DEFAULT_KILL_GRACE);
    if kill_grace > MAX_KILL_GRACE {
        return Err(invalid(key("kill_grace"), "at most 60s"));
    }
    Ok((
        HandlerSpec::Command {
            argv,
            env: k.env.clone(),
            working_dir: k.working_dir.clone(),
            permanent_exit_codes: k.permanent_exit_codes.clone(),
            kill_grace,
        },
        kill_grace + Duration::from_secs(1),
    ))
}

/// An `http` kind: URL, TLS files, timeout, method and headers checked.
fn http_spec(name: &str, k: &KindConfig) -> Result<(HandlerSpec, Duration), ConfigError> {
    let key = |f: &str| format!("kinds.{name}.{f}");
    let url = k.url.clone().unwrap_or_default();
    // Parsed as the HTTP client will parse it, so a bad URL stops
    // the start instead of failing every job.
    let parsed = reqwest::Url::parse(&url);
    let https = url.starts_with("https://");
    if !(https || url.starts_with("http://")) || parsed.as_ref().map_or(true, |u| !u.has_host()) {
        let why = parsed.err().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(invalid(
            key("url"),
            format!("{url:?}{why}: required, an http:// or https:// URL with a host"),
        ));
    }
    for (field, set) in [
        ("ca", k.ca.is_some()),
        ("cert", k.cert.is_some()),
        ("key", k.key.is_some()),
    ] {
        if set && !https {
            return Err(invalid(key(field), "a TLS setting: needs an https:// url"));
        }
    }
    let identity = match (&k.cert, &k.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid(key("key"), "required with cert")),
        (None, Some(_)) => return Err(invalid(key("cert"), "required with key")),
    };
    let connect_timeout = k.connect_timeout.unwrap_or(DEFAULT_HTTP_CONNECT_TIMEOUT);
    if connect_timeout.is_zero() || connect_timeout > MAX_HTTP_CONNECT_TIMEOUT {
        return Err(invalid(
            key("connect_timeout"),
            "must be more than 0 and at most 5m",
        ));
    }
    let method = k
        .method
        .clone()
        .unwrap_or_else(|| "POST".into())
        .to_uppercase();
    if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
        return Err(invalid(key("method"), "one of POST, PUT, PATCH"));
    }
    for (h, v) in &k.headers {
        let name_ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok || v.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err(invalid(
                format!("kinds.{name}.headers.{h}"),
                "not a valid header",
            ));
        }
    }
    Ok((
        HandlerSpec::Http {
            url,
            method,
            headers: k.headers.clone(),
            tls: ClientTls {
                ca: k.ca.clone(),
                identity,
            },
            connect_timeout,
        },
        DEFAULT_STOP_GRACE,
    ))
}

/// A kind's limits, as its config sets them (plain data: the bucket
/// arithmetic lives in `store::limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KindLimits {
    /// Jobs of one ordering key RUNNING or RETRY_WAIT at most; the QUEUED
    /// ones start in submit order. `None`: keys are stored and ignored.
    pub key_concurrency: Option<u32>,
    pub rate: Option<RateLimit>,
    /// How the claim orders the kind's due jobs.
    pub fairness: Fairness,
    /// Each fairness key's own token bucket (round_robin kinds only).
    pub key_rate: Option<RateLimit>,
}

/// A kind's `fairness` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// Priority, then submit order, over all the kind's due jobs.
    #[default]
    None,
    /// Claims take the due jobs key by key (the job's fairness key, by
    /// default its ordering key): one job per key per turn, starting after
    /// the key served last; priority and submit order hold within a key.
    RoundRobin,
}

/// Attempts started per second at most, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}
