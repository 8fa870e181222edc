//! jobd: a gRPC worker-pool daemon.
//!
//! The map, following a job from the client inward:
//!
//! - [`api`] — `jobd.v1.JobService` over gRPC: validates each request at the
//!   edge and maps every refusal to a status code in one place.
//! - [`engine`] — takes validated jobs into the store, claims due jobs onto a
//!   bounded pool of workers (global and per-kind semaphores, a `JoinSet`),
//!   retries with backoff, sweeps due retries and expired leases, drains.
//! - [`store`] — where jobs live: a [`store::Store`] trait with memory and
//!   SQLite implementations; every state change is one atomic write.
//! - [`handlers`] — what a job does, looked up by kind (builtin `echo`,
//!   `sleep`, `fail`; library users can register their own).
//! - [`events`] — fans each state change out to WatchStatus streams.
//! - [`server`] — the lifecycle: open, recover, serve gRPC + health +
//!   reflection, drain on SIGTERM.
//! - [`metrics`] and [`admin`] — Prometheus metrics and the HTTP probes.
//! - [`client`] — the CLI client commands (`jobd submit`, `status`, ...);
//!   [`bench`] — `jobd bench`, the load generator.
//! - [`config`] — the TOML file and its bounds; [`job`] — the shared model.

pub mod admin;
pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod connections;
pub mod engine;
pub mod events;
pub mod handlers;
pub mod job;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::{run, run_with_registry, RunError, Shutdown};
