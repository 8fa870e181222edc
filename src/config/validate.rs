//! The checks of [`Config::validate`], by section; each error names its
//! key.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    invalid, invalid_because, kinds, Config, ConfigError, KindSettings, PostgresConfig,
    QueueConfig, StoreUrl, TracingConfig, WorkersConfig, MAX_SLOTS, MAX_TIMEOUT,
};

impl Config {
    /// Checks every value and resolves the kinds' defaults. Reads no file
    /// (see `server::prepare` for the token and TLS files), so it may run
    /// any number of times. Sections are checked in a fixed order, so a
    /// file with several mistakes always names the same one first.
    pub fn validate(&self) -> Result<Vec<KindSettings>, ConfigError> {
        self.validate_addresses()?;
        self.tracing.validate()?;
        self.queue.validate_counts()?;
        self.validate_slots()?;
        self.queue.validate_sizes()?;
        self.auth.check()?;
        self.validate_limits()?;
        self.validate_budgets()?;
        self.workers.validate()?;
        if self.drain.timeout.is_zero() {
            return Err(invalid("drain.timeout", "must be more than 0"));
        }
        let kinds = kinds::resolve(self)?;
        self.schedules()?;
        Ok(kinds)
    }

    /// `listen`, `admin_listen` and `store` (with `[postgres]` for a
    /// PostgreSQL store).
    fn validate_addresses(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.admin_listen != "off" {
            self.admin_listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "admin_listen",
                    format!(
                        "{:?} is not an address or \"off\": {e}{}",
                        self.admin_listen,
                        super::address_hint(&self.admin_listen, super::DEFAULT_ADMIN_LISTEN)
                    ),
                )
            })?;
        }
        let store = StoreUrl::parse(&self.store).map_err(|e| invalid_because("store", e))?;
        if let Some(m) = &self.store.min_free {
            super::MinFree::parse(m).map_err(|e| invalid("store.min_free", e))?;
        }
        if matches!(store, StoreUrl::Postgres(_)) {
            self.postgres.validate()?;
        }
        Ok(())
    }

    /// The count bounds of `[queue]` and `[limits]`: semaphores and channels
    /// panic past their own maximum (usize::MAX >> 3 permits); these bounds
    /// keep every value far below it.
    fn validate_slots(&self) -> Result<(), ConfigError> {
        let q = &self.queue;
        for (key, v, max) in [
            (
                "queue.dispatch_channel",
                q.dispatch_channel as u64,
                MAX_SLOTS,
            ),
            ("queue.max_watchers", q.max_watchers as u64, MAX_SLOTS),
            (
                "limits.max_connections",
                self.limits.max_connections as u64,
                MAX_SLOTS,
            ),
            (
                "limits.max_watchers_per_connection",
                self.limits.max_watchers_per_connection as u64,
                MAX_SLOTS,
            ),
        ] {
            if v > max {
                return Err(invalid(key, format!("at most {max}")));
            }
        }
        Ok(())
    }

    /// `limits.max_message_bytes` against the payload limit, and every
    /// other `[limits]` value above 0.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.limits.max_message_bytes {
            let least = self.queue.max_payload_bytes + 1024;
            if n < least || n > 1 << 30 {
                return Err(invalid(
                    "limits.max_message_bytes",
                    format!("must be {least} (queue.max_payload_bytes + 1 KiB) to 1 GiB"),
                ));
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.handshake_timeout",
                l.handshake_timeout.as_millis() as u64,
            ),
            (
                "limits.idle_connection_timeout",
                l.idle_connection_timeout.as_millis() as u64,
            ),
            (
                "limits.max_connections_per_peer",
                l.max_connections_per_peer as u64,
            ),
            (
                "limits.max_buffered_request_bytes",
                l.max_buffered_request_bytes as u64,
            ),
            (
                "limits.max_buffered_request_bytes_per_connection",
                l.max_buffered_request_bytes_per_connection as u64,
            ),
            (
                "limits.max_concurrent_streams",
                u64::from(l.max_concurrent_streams),
            ),
            (
                "limits.max_watchers_per_connection",
                l.max_watchers_per_connection as u64,
            ),
            (
                "limits.max_watchers_per_client",
                l.max_watchers_per_client as u64,
            ),
            (
                "limits.watch_idle_timeout",
                l.watch_idle_timeout.as_millis() as u64,
            ),
            (
                "limits.keepalive_interval",
                l.keepalive_interval.as_millis() as u64,
            ),
            (
                "limits.keepalive_timeout",
                l.keepalive_timeout.as_millis() as u64,
            ),
            (
                "limits.request_timeout",
                l.request_timeout.as_millis() as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        Ok(())
    }

    /// The request budgets: the largest request (its message plus the
    /// 5-byte gRPC frame header) must fit in them, or it could never be
    /// served.
    fn validate_budgets(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let largest = self.max_message_bytes() + 5;
        if l.max_buffered_request_bytes_per_connection < largest {
            return Err(invalid(
                "limits.max_buffered_request_bytes_per_connection",
                format!("must be at least {largest} (limits.max_message_bytes + 5)"),
            ));
        }
        if l.max_buffered_request_bytes < l.max_buffered_request_bytes_per_connection {
            return Err(invalid(
                "limits.max_buffered_request_bytes",
                "must be at least limits.max_buffered_request_bytes_per_connection",
            ));
        }
        Ok(())
    }
}

impl QueueConfig {
    /// Every count at least 1.
    fn validate_counts(&self) -> Result<(), ConfigError> {
        let q = self;
        for (key, v) in [
            ("queue.workers", q.workers as u64),
            ("queue.max_backlog", q.max_backlog),
            ("queue.max_payload_bytes", q.max_payload_bytes as u64),
            ("queue.max_batch", q.max_batch as u64),
            ("queue.max_parents", q.max_parents as u64),
            ("queue.max_watchers", q.max_watchers as u64),
            ("queue.dispatch_channel", q.dispatch_channel as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The upper bounds on workers, payloads and batches, and memory for at
    /// least one payload.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        let q = self;
        if q.max_memory_bytes < q.max_payload_bytes as u64 {
            return Err(invalid(
                "queue.max_memory_bytes",
                "must be at least queue.max_payload_bytes",
            ));
        }
        if q.workers > 10_000 {
            return Err(invalid("queue.workers", "at most 10000"));
        }
        if q.max_payload_bytes > 64 * 1024 * 1024 {
            return Err(invalid("queue.max_payload_bytes", "at most 64 MiB"));
        }
        if q.max_batch > 10_000 {
            return Err(invalid("queue.max_batch", "at most 10000"));
        }
        if q.max_parents > 100_000 {
            return Err(invalid("queue.max_parents", "at most 100000"));
        }
        Ok(())
    }
}

impl WorkersConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let w = self;
        if w.heartbeat_interval < Duration::from_millis(100) || w.heartbeat_interval > MAX_TIMEOUT {
            return Err(invalid(
                "workers.heartbeat_interval",
                "must be 100ms to 24h",
            ));
        }
        if w.max_sessions == 0 || w.max_sessions as u64 > MAX_SLOTS {
            return Err(invalid("workers.max_sessions", "must be 1 to 1000000"));
        }
        if w.max_sessions_per_client
            .is_some_and(|n| n == 0 || n > w.max_sessions)
        {
            return Err(invalid(
                "workers.max_sessions_per_client",
                "must be 1 to workers.max_sessions",
            ));
        }
        Ok(())
    }
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://"))
                || e.parse::<http::Uri>().is_err()
            {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if self.service_name.is_empty() || self.service_name.len() > 256 {
            return Err(invalid("tracing.service_name", "1 to 256 bytes"));
        }
        if self.export_interval < Duration::from_millis(10)
            || self.export_interval > Duration::from_secs(3600)
        {
            return Err(invalid("tracing.export_interval", "between 10ms and 1h"));
        }
        if !(1..=1_000_000).contains(&self.max_queued_spans) {
            return Err(invalid("tracing.max_queued_spans", "between 1 and 1000000"));
        }
        Ok(())
    }
}

impl PostgresConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.pool_size) {
            return Err(invalid("postgres.pool_size", "must be 1 to 1000"));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(invalid("postgres.timeout", "must be at least 100ms"));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("postgres.lease_ttl", "must be at least 1s"));
        }
        if !is_pg_identifier(&self.schema) {
            return Err(invalid(
                "postgres.schema",
                "1 to 40 of a-z, 0-9 and _, not starting with a digit",
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    "postgres.instance_id",
                    "1 to 100 printable characters",
                ));
            }
        }
        Ok(())
    }
}

/// A name PostgreSQL takes unquoted: lower-case letters, digits, `_`.
fn is_pg_identifier(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
