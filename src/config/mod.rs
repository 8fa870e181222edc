//! Configuration: the TOML file, then `JOBD_*` environment, then flags (the
//! last two are merged by clap in `main.rs`). Every bound the daemon keeps is
//! here with its default as a named constant; `validate` rejects bad values
//! before any port is bound, naming the key.
//!
//! Plain data on the ground floor: this module reads no secret file and
//! imports nothing above it. Kinds are resolved in [`kinds`], tokens in
//! [`auth`]; `server::prepare` reads the token and TLS files exactly once.

mod auth;
mod kinds;
mod postgres_url;
mod schedules;
mod store;
mod validate;
pub mod warnings;

pub use auth::{AuthConfig, Role, Secret, TokenConfig};
pub use kinds::{
    BackoffConfig, Fairness, HandlerSpec, HandlerType, KindConfig, KindLimits, KindSettings,
    RateLimit,
};
pub use postgres_url::{PostgresUrl, PostgresUrlError, ServerCheck, SslMode};
pub use schedules::{
    parse_cron, rfc3339, CronError, Overlap, Schedule, ScheduleConfig, MAX_SCHEDULES,
};
pub use store::{MinFree, StoreConfig, DEFAULT_MIN_FREE_BYTES, DEFAULT_MIN_FREE_PERCENT};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_STORE: &str = "sqlite:./jobd-data/jobd.db";
pub const DEFAULT_MAX_BACKLOG: u64 = 100_000;
pub const DEFAULT_WORKERS: usize = 16;
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// Parents (depends_on) one job may have.
pub const DEFAULT_MAX_PARENTS: usize = 1000;
pub const DEFAULT_MAX_WATCHERS: usize = 10_000;
pub const DEFAULT_DISPATCH_CHANNEL: usize = 1024;
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_KIND_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
pub const DEFAULT_MAX_WATCHERS_PER_CONNECTION: usize = 1000;
/// A tenth of `queue.max_watchers`: ten clients at their bound fill it.
pub const DEFAULT_MAX_WATCHERS_PER_CLIENT: usize = 1000;
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`LimitsConfig::idle_connection_timeout`].
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// See [`LimitsConfig::max_connections_per_peer`].
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
pub const DEFAULT_MAX_BUFFERED_REQUEST_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_MAX_BUFFERED_REQUEST_BYTES_PER_CONNECTION: usize = 16 * 1024 * 1024;
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
pub const MAX_KILL_GRACE: Duration = Duration::from_secs(60);
/// The largest count bound (connections, watchers, channel places).
pub const MAX_SLOTS: u64 = 1_000_000;
/// Grace for handlers with nothing to clean up.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// A config file that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// `source`: the parser's error, when a parser refused the value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        key: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
        source: None,
    }
}

/// A value a parser refused: its error is the message, and the source.
fn invalid_because(
    key: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

/// Durations are written as humantime strings: "250ms", "3s", "5m", "7days".
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Header values and environment values may hold credentials: shown
/// redacted, keys kept.
fn ser_redacted_values<S: Serializer>(
    m: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(m.keys().map(|k| (k, auth::REDACTED)))
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{}@{host}", auth::REDACTED),
        None => url.to_string(),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: String,
    /// Admin HTTP address (metrics and probes), or "off".
    pub admin_listen: String,
    /// Store URL: `memory:`, `sqlite:PATH` or `postgres://...`; or a
    /// `[store]` table with `url` and `min_free` (see [`StoreConfig`]).
    pub store: StoreConfig,
    /// Settings of the `postgres://` store (ignored by the others).
    pub postgres: PostgresConfig,
    pub queue: QueueConfig,
    pub drain: DrainConfig,
    pub retention: RetentionConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub workers: WorkersConfig,
    pub tracing: TracingConfig,
    pub http: HttpConfig,
    pub kinds: BTreeMap<String, KindConfig>,
    /// Cron schedules (`[[schedules]]`), checked by [`Config::schedules`].
    pub schedules: Vec<ScheduleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            store: StoreConfig::from(DEFAULT_STORE.to_string()),
            postgres: PostgresConfig::default(),
            queue: QueueConfig::default(),
            drain: DrainConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            workers: WorkersConfig::default(),
            tracing: TracingConfig::default(),
            http: HttpConfig::default(),
            kinds: BTreeMap::new(),
            schedules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Jobs waiting (QUEUED + RETRY_WAIT) at most; past it Submit answers
    /// RESOURCE_EXHAUSTED and stores nothing.
    pub max_backlog: u64,
    /// Jobs running at once, all kinds together.
    pub workers: usize,
    /// Largest payload accepted; larger is INVALID_ARGUMENT.
    pub max_payload_bytes: usize,
    /// Most entries in one SubmitBatch; more is INVALID_ARGUMENT.
    pub max_batch: usize,
    /// Most parents (depends_on) one job may have; more is
    /// INVALID_ARGUMENT (1..=100000).
    pub max_parents: usize,
    /// Open WatchStatus streams at most; past it RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// Wake-up hints queued for the dispatcher at most; when full, hints are
    /// dropped (the dispatcher is already awake and reads the store anyway).
    pub dispatch_channel: usize,
    /// `memory:` store only: payload and result bytes held at most (every
    /// job lives in RAM there); past it Submit answers RESOURCE_EXHAUSTED.
    /// SQLite and PostgreSQL keep payloads on disk.
    pub max_memory_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_backlog: DEFAULT_MAX_BACKLOG,
            workers: DEFAULT_WORKERS,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            max_parents: DEFAULT_MAX_PARENTS,
            max_watchers: DEFAULT_MAX_WATCHERS,
            dispatch_channel: DEFAULT_DISPATCH_CHANNEL,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// After SIGTERM, keep serving (health NOT_SERVING) this long so load
    /// balancers notice before Submit is refused.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub grace: Duration,
    /// Then give running jobs this long to finish; the rest are stopped and
    /// put back to QUEUED without using up an attempt.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace: DEFAULT_GRACE,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished jobs (and their idempotency keys) are deleted this long after
    /// they finish.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub finished: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            finished: DEFAULT_RETENTION,
        }
    }
}

/// Where jobs are kept, as a store URL names it. One parser, so the
/// config check and `store::open_with` accept exactly the same URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory:`
    Memory,
    /// `sqlite:PATH` (or `sqlite://PATH`).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, its TLS parameters read.
    Postgres(PostgresUrl),
}

/// Why a store URL cannot be used; the message names the accepted forms.
#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    #[error(transparent)]
    Postgres(#[from] PostgresUrlError),
    #[error("store URL {0:?} names no file: use sqlite:PATH")]
    NoFile(String),
    #[error(
        "unsupported store URL {0:?} (use memory:, sqlite:PATH, postgres://... \
         or postgresql://...)"
    )]
    Unsupported(String),
}

impl StoreUrl {
    /// Reads a store URL.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreUrlError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(PostgresUrl::parse(url)?));
        }
        // Bare `memory` was accepted by `open` before this parser existed.
        if url == "memory:" || url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreUrlError::NoFile(url.to_string()));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        Err(StoreUrlError::Unsupported(url.to_string()))
    }
}

/// Remote worker sessions (`jobd.v1.WorkerService`, kinds with
/// `handler = "remote"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// A worker sends a message at least this often; one silent for 3 of
    /// these is lost, and its jobs are retried ("worker lost").
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub heartbeat_interval: Duration,
    /// Worker sessions open at once; past it Connect answers
    /// RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Worker sessions open at once per client: per token when auth is on,
    /// else per peer IP address; past it that client's Connect answers
    /// RESOURCE_EXHAUSTED, so one client cannot take every place. At most
    /// `max_sessions`; default half of it.
    pub max_sessions_per_client: Option<usize>,
}

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_WORKER_SESSIONS: usize = 1000;

impl WorkersConfig {
    /// `max_sessions_per_client`, or its default: half of `max_sessions`.
    pub fn sessions_per_client(&self) -> usize {
        self.max_sessions_per_client
            .unwrap_or((self.max_sessions / 2).max(1))
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_sessions: DEFAULT_MAX_WORKER_SESSIONS,
            max_sessions_per_client: None,
        }
    }
}

/// `[http]`: the JSON routes, server-sent events, gRPC-Web and the
/// dashboard on the gRPC port.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Host names (besides `localhost`, any IP address and the name in
    /// `listen`) that browser-facing requests may name in `Host`; others are
    /// refused with 403 before any route runs (DNS rebinding: a page whose
    /// name an attacker points at 127.0.0.1 sends its own name). `"*"`
    /// allows every name (behind a proxy that checks it).
    pub allowed_hosts: Vec<String>,
}

/// Span export (`[tracing]`): off unless `otlp_endpoint` is set, and then a
/// span per RPC and a `process {kind}` span per attempt go to an OTLP/gRPC
/// collector.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `http://collector:4317` (OTLP over gRPC); unset: no spans at all.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Spans are sent in batches at least this often.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub export_interval: Duration,
    /// Finished spans waiting for export at most; past it new spans are
    /// dropped (and counted in a WARN line), never the daemon slowed.
    pub max_queued_spans: usize,
}

pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_QUEUED_SPANS: usize = 4096;

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "jobd".into(),
            export_interval: DEFAULT_EXPORT_INTERVAL,
            max_queued_spans: DEFAULT_MAX_QUEUED_SPANS,
        }
    }
}

/// The shared PostgreSQL store (several instances on one queue).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Database connections this instance opens at most (one more is kept
    /// for LISTEN). Store calls past it wait for a free one, up to `timeout`.
    pub pool_size: usize,
    /// Bound on connecting and on every store call; past it the call fails
    /// with UNAVAILABLE (Submit) or is retried later (workers, sweeper).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// A RUNNING job's lease: renewed every third of it while this instance
    /// lives; when an instance dies, its jobs are taken back this long after
    /// its last renewal.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub lease_ttl: Duration,
    /// This instance's name in the `owner` column. Default: random per
    /// start. Give each instance a stable, unique name (a StatefulSet pod
    /// name) and a restarted instance takes its own jobs back at once instead
    /// of after `lease_ttl`.
    pub instance_id: Option<String>,
    /// PostgreSQL schema holding jobd's tables (created if missing).
    pub schema: String,
}

pub const DEFAULT_PG_POOL_SIZE: usize = 16;
pub const DEFAULT_PG_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PG_LEASE_TTL: Duration = Duration::from_secs(30);

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            pool_size: DEFAULT_PG_POOL_SIZE,
            timeout: DEFAULT_PG_TIMEOUT,
            lease_ttl: DEFAULT_PG_LEASE_TTL,
            instance_id: None,
            schema: "jobd".into(),
        }
    }
}

impl Config {
    /// The request size limit in effect (`limits.max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.limits
            .max_message_bytes
            .unwrap_or((self.queue.max_payload_bytes + MESSAGE_OVERHEAD).max(MIN_MESSAGE_LIMIT))
    }

    /// The largest reply encoded: the request limit, or twice the payload
    /// limit if that is more (a reply may carry a result as large as a
    /// payload).
    pub fn max_reply_bytes(&self) -> usize {
        self.max_message_bytes()
            .max(self.queue.max_payload_bytes.saturating_mul(2))
    }

    /// The largest `max_result_bytes` a kind may have: a job with a result
    /// that long, and every other field at its bound, still fits a reply.
    pub fn max_result_bytes_allowed(&self) -> usize {
        self.max_reply_bytes().saturating_sub(JOB_REPLY_OVERHEAD)
    }
}

/// Connection-level bounds of the gRPC listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// gRPC connections served at once. When all are taken, a new client
    /// takes the place of the oldest connection still in its handshake
    /// (which is closed); when every one has finished its handshake, new
    /// clients wait in the kernel's accept backlog until one closes.
    pub max_connections: usize,
    /// Time from accept to the client's HTTP/2 preface and first SETTINGS
    /// frame (TLS handshake included); a connection that has not sent them
    /// by then is closed, so silent sockets cannot hold places.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// A connection that has finished its handshake and has no request
    /// under way for this long is closed (HTTP/2 PINGs do not count: a
    /// client that only answers them holds a place for nothing). When
    /// every place is taken, a new client takes the place of the
    /// longest-idle such connection at once.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub idle_connection_timeout: Duration,
    /// Connections from one IP address that have finished their handshake,
    /// at once; one more from that address is closed as soon as it has
    /// spoken, so one host cannot hold every place with busy connections.
    pub max_connections_per_peer: usize,
    /// Request bytes buffered at once over all connections (read from the
    /// socket and not yet decoded into a message). A request whose data
    /// would go past it fails at once with RESOURCE_EXHAUSTED. With the
    /// HTTP/2 windows (256 KiB per connection) this bounds request memory:
    /// this + max_connections x 256 KiB.
    pub max_buffered_request_bytes: usize,
    /// The same bound per connection, so one client cannot take the whole
    /// global budget; past it that connection's request fails with
    /// RESOURCE_EXHAUSTED.
    pub max_buffered_request_bytes_per_connection: usize,
    /// HTTP/2 streams (concurrent RPCs) per connection; past it the client
    /// queues new RPCs on its side.
    pub max_concurrent_streams: u32,
    /// Open WatchStatus streams per connection; past it RESOURCE_EXHAUSTED.
    /// (A connection also carries at most `max_concurrent_streams` RPCs.)
    pub max_watchers_per_connection: usize,
    /// Open WatchStatus streams per client: per token when auth is on, else
    /// per peer IP address (every connection from one host counts
    /// together); past it RESOURCE_EXHAUSTED. Kept below
    /// `queue.max_watchers` so one client cannot take every place.
    pub max_watchers_per_client: usize,
    /// A WatchStatus stream whose client has taken no message for this long
    /// while one waits (it stopped reading, and HTTP/2 flow control holds
    /// the rest back) is ended: its watcher places are freed at once, and a
    /// client that reads again gets RESOURCE_EXHAUSTED (resume with
    /// `after_sequence`). Watching a quiet job is never idle in this sense.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub watch_idle_timeout: Duration,
    /// HTTP/2 PING interval on idle connections.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered this fast is closed.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub keepalive_timeout: Duration,
    /// Ceiling on the time to answer one RPC (for streams: to start it);
    /// past it the RPC fails with CANCELLED. Client deadlines shorter than
    /// this apply as sent.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    /// Largest request message decoded, in bytes; larger ones are refused
    /// before they are read (OUT_OF_RANGE). Default: the payload limit plus
    /// 64 KiB for the other fields, at least 4 MiB (room for SubmitBatch).
    pub max_message_bytes: Option<usize>,
}

/// Room in a request beyond the payload limit, for the other fields.
pub const MESSAGE_OVERHEAD: usize = 64 * 1024;
/// Room in a job reply for everything but the result: id, kind, labels
/// (at most 32 x 319 bytes), idempotency key, last error (handlers keep at
/// most 4 KiB of it), times, and the reply's own framing.
pub const JOB_REPLY_OVERHEAD: usize = 32 * 1024;
/// The smallest default request limit, so SubmitBatch of small jobs fits.
pub const MIN_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_buffered_request_bytes: DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
            max_buffered_request_bytes_per_connection:
                DEFAULT_MAX_BUFFERED_REQUEST_BYTES_PER_CONNECTION,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watchers_per_connection: DEFAULT_MAX_WATCHERS_PER_CONNECTION,
            max_watchers_per_client: DEFAULT_MAX_WATCHERS_PER_CLIENT,
            watch_idle_timeout: DEFAULT_WATCH_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_message_bytes: None,
        }
    }
}

/// TLS on the gRPC listener (rustls). With `client_ca`, clients must show a
/// certificate signed by it (mTLS).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; unset: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The files of a TLS client (an `http` kind, the PostgreSQL store), read
/// when the connector is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust only this CA bundle; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key, for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// Reads and parses a TOML file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".into(),
            message: e.to_string(),
        })
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!(
                    "{:?} is not an address: {e}{}",
                    self.listen,
                    address_hint(&self.listen, DEFAULT_LISTEN)
                ),
            )
        })
    }

    /// The schedules, checked against the kinds (also run by `validate`).
    pub fn schedules(&self) -> Result<Vec<Schedule>, ConfigError> {
        schedules::resolve(self)
    }
}

/// What to write instead of a listen address that names a host
/// (`localhost:50051`): listeners bind an IP address and a port.
pub(crate) fn address_hint(given: &str, example: &str) -> String {
    let port = given.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    let example_port = example.rsplit_once(':').map_or("", |(_, p)| p);
    let port = if port.parse::<u16>().is_ok() {
        port
    } else {
        example_port
    };
    format!(
        "; use an IP address and a port, e.g. 127.0.0.1:{port} (this machine only) or \
         0.0.0.0:{port} (every interface)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_in_listen_gets_an_ip_address_hint() {
        let mut c = Config {
            listen: "localhost:50051".into(),
            ..Config::default()
        };
        let e = c.listen_addr().unwrap_err().to_string();
        assert!(
            e.contains("use an IP address") && e.contains("e.g. 127.0.0.1:50051"),
            "{e}"
        );
        c.admin_listen = "localhost:9191".into();
        c.listen = "127.0.0.1:50051".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("admin_listen") && e.contains("e.g. 127.0.0.1:9191"),
            "{e}"
        );
    }

    #[test]
    fn store_urls_parse_one_way() {
        let ok = |u: &str| StoreUrl::parse(u).unwrap();
        assert_eq!(ok("memory:"), StoreUrl::Memory);
        assert_eq!(ok("memory"), StoreUrl::Memory);
        assert_eq!(ok("sqlite:a/b.db"), StoreUrl::Sqlite("a/b.db".into()));
        assert_eq!(ok("sqlite:///x.db"), StoreUrl::Sqlite("/x.db".into()));
        for u in ["postgres://h/db", "postgresql://u@h:5432/db"] {
            assert_eq!(ok(u), StoreUrl::Postgres(PostgresUrl::parse(u).unwrap()));
        }
        for bad in [
            "memoryx",
            "memory:x",
            "sqlite:",
            "sqlite://",
            "mysql://h",
            "",
        ] {
            let e = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(StoreUrl::parse("nope")
            .unwrap_err()
            .to_string()
            .contains("sqlite:PATH"));
    }
}
