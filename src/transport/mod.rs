//! What sits between a socket and a service: accepted connections and their
//! bounds ([`connections`]), TLS termination ([`tls`], reloaded on SIGHUP),
//! and the tower layers every gRPC request passes: the token check
//! ([`auth`]), per-connection request budgets ([`request_budget`]), metrics
//! and spans ([`grpc_metrics`]) and protocol-error fixes ([`protocol`]).
//! Each layer reads the one table of RPCs, [`methods`].

pub mod activity;
pub mod auth;
pub mod connections;
pub mod grpc_metrics;
pub mod methods;
pub mod protocol;
pub mod request_budget;
pub mod tls;
