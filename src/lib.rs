//! jobd: a gRPC worker-pool daemon.
//!
//! The map, following a job from the client inward (each line imports only
//! lines below it):
//!
//! - [`server`] — the lifecycle: [`prepare`] checks the config and reads its
//!   files once, then [`run`] opens the store, recovers, serves and drains.
//! - [`clients`] — the client side: the CLI commands, `jobd bench` and the
//!   Rust worker (`jobd work`); nothing in the daemon imports it.
//! - [`http`] — the HTTP/JSON door, server-sent events and the dashboard on
//!   the gRPC port (browser-facing requests must name an allowed host).
//! - [`api`] — `jobd.v1.JobService`, `WorkerService` ([`api::workers`]) and
//!   `AdminService` ([`api::operations`]): validates each request at the
//!   edge and maps every refusal to a status code in one place.
//! - [`transport`] — connections and their bounds, TLS termination, and the
//!   tower layers (auth, request budgets, metrics and spans), all reading
//!   the one table of RPCs, [`transport::methods`].
//! - [`engine`] — takes validated jobs into the store, claims due jobs onto a
//!   bounded pool of workers, runs each attempt, retries with backoff,
//!   sweeps, fires schedules, drains. Every change of a job passes its one
//!   transition path (`Engine::changed`): state gauges and events.
//! - [`handlers`] — what a job does, by kind (builtin, `command`, `http`,
//!   and `remote`: worker sessions over WorkerService).
//! - [`store`] — where jobs live: the [`store::Store`] trait, the pure
//!   transitions ([`store::transition`], creation included), memory,
//!   SQLite and PostgreSQL.
//! - [`events`], [`metrics`], [`otel`], [`probes`] — watchers' fan-out,
//!   Prometheus metrics, span export, the probe and metrics listener;
//!   [`panic_log`] sends panics through the log.
//! - [`suggest`] — "did you mean" for unknown names; [`throughput`] —
//!   jobs finished per minute over the last hour, for the dashboard.
//! - [`config`] — the TOML file and its bounds, plain data; [`job`] — the
//!   shared model. Neither imports anything above it.

pub mod api;
pub mod client_tls;
pub mod clients;
pub mod config;
pub mod disk_reserve;
pub mod engine;
pub mod events;
pub mod handlers;
pub mod http;
pub mod job;
pub mod log_limit;
pub mod metrics;
pub mod otel;
pub mod panic_log;
pub mod probes;
pub mod proto;
pub mod server;
pub mod store;
pub mod suggest;
pub mod throughput;
pub mod transport;

pub use config::Config;
pub use server::{prepare, run, run_with_listeners, Prepared, RunError, Shutdown};
