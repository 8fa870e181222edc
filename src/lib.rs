//! jobd: a gRPC worker-pool daemon.
//!
//! The map, following a job from the client inward:
//!
//! - [`api`] — `jobd.v1.JobService`, `WorkerService` and `AdminService`
//!   over gRPC: validates each request at the edge and maps every refusal
//!   to a status code in one place; auth, request budgets, metrics layers.
//! - [`engine`] — takes validated jobs into the store, claims due jobs onto a
//!   bounded pool of workers (global and per-kind semaphores, a `JoinSet`),
//!   retries with backoff, sweeps due retries and expired leases, drains.
//! - [`store`] — where jobs live: a [`store::Store`] trait with memory,
//!   SQLite and PostgreSQL implementations (PostgreSQL: several instances on
//!   one queue); every state change is one atomic write.
//! - [`handlers`] — what a job does, looked up by kind (builtin `echo`,
//!   `sleep`, `fail`, `command`, `http`; library users can register their
//!   own). `remote` kinds go to [`remote`]: worker processes connected over
//!   `jobd.v1.WorkerService` (`api::worker`), each session holding at most
//!   its `max_in_flight` attempts; [`worker`] is the Rust side of that
//!   protocol (and `jobd work`).
//! - [`events`] — fans each state change out to WatchStatus streams.
//! - [`server`] — the lifecycle: [`prepare`] checks the config and reads
//!   its files once, then [`run`] opens the store, recovers, serves gRPC +
//!   health + reflection + the HTTP/JSON door ([`http`]) on one port, and
//!   drains on SIGTERM; [`connections`] bounds the
//!   accepted connections, [`tls`] terminates TLS (reloaded on SIGHUP).
//! - [`metrics`] and [`admin`] — Prometheus metrics and the HTTP probes.
//! - [`client`] — the CLI client commands (`jobd submit`, `status`, ...);
//!   [`bench`] — `jobd bench`, the load generator.
//! - [`config`] — the TOML file and its bounds, plain data; [`job`] — the
//!   shared model. Neither imports anything above it.

pub mod admin;
pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod connections;
pub mod engine;
pub mod events;
pub mod handlers;
pub mod http;
pub mod job;
pub mod metrics;
pub mod otel;
pub mod proto;
pub mod remote;
pub mod server;
pub mod store;
pub mod tls;
pub mod worker;

pub use config::Config;
pub use server::{prepare, run, run_with_listeners, Prepared, RunError, Shutdown};
