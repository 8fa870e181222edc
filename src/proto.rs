//! Code generated from `proto/jobd/v1/jobd.proto` by `build.rs`.

#![allow(
    clippy::all,
    clippy::too_many_lines,
    missing_docs,
    unreachable_pub,
    missing_debug_implementations
)]

pub mod jobd {
    pub mod v1 {
        tonic::include_proto!("jobd.v1");
    }
}

pub use jobd::v1::*;

/// The encoded descriptors of jobd's protos and their imports, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobd_descriptor.bin"));
