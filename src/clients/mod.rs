//! The client side of jobd, as the `jobd` binary's client commands and as a
//! library: [`cli`] (`jobd submit`, `status`, `watch`, ...), [`bench`] (`jobd
//! bench`, the load generator) and [`worker`] (the Rust side of
//! `jobd.v1.WorkerService`, and `jobd work`). Nothing in the daemon imports
//! it.

pub mod bench;
pub mod cli;
pub mod worker;
