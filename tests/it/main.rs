//! Integration tests: one binary, a module per capability, every test over
//! real gRPC on an ephemeral port.

// The package's lints hold src/ to them; a test may walk a long scenario in
// one function, and its modules share helpers with plain `pub`.
#![allow(clippy::too_many_lines, unreachable_pub)]

mod api;
mod api_schedules;
mod attempts;
mod auth;
mod bench_smoke;
mod binary;
mod browser;
mod checkpoints;
mod cli;
mod dedup;
mod docs;
mod engine;
mod fairness;
mod first_hour;
mod handlers;
mod helpers;
mod hostile_clients;
mod hostile_files;
mod hostile_workers;
mod http_api;
mod interop;
mod job_graph;
mod limits;
mod long_running;
mod operations;
mod operator;
mod ordering;
mod pg;
mod pg_workflows;
mod postgres;
mod postgres_tls;
mod python_client;
mod python_worker;
mod remote;
mod samples;
mod schedules;
mod sdk_python;
mod sdk_typescript;
mod stalled_watchers;
mod start_deadlines;
mod store_contract;
mod tls;
mod trace;
mod watch_jobs;
mod worker_protocol;
mod workflows;
mod workflows_crash;
