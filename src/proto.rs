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

/// A job's state on the wire and in the engine: one mapping, here beside
/// the generated type, for every layer that speaks it.
impl crate::job::JobState {
    /// The wire form of a state (every layer speaks it: the API, the
    /// remote handler's Assign).
    pub fn to_proto(self) -> JobState {
        use JobState as P;
        match self {
            crate::job::JobState::Queued => P::Queued,
            crate::job::JobState::Running => P::Running,
            crate::job::JobState::RetryWait => P::RetryWait,
            crate::job::JobState::Succeeded => P::Succeeded,
            crate::job::JobState::Failed => P::Failed,
            crate::job::JobState::Cancelled => P::Cancelled,
            crate::job::JobState::Waiting => P::Waiting,
        }
    }

    /// A wire state; `None` for UNSPECIFIED.
    pub fn from_proto(p: JobState) -> Option<crate::job::JobState> {
        use JobState as P;
        Some(match p {
            P::Unspecified => return None,
            P::Queued => crate::job::JobState::Queued,
            P::Running => crate::job::JobState::Running,
            P::RetryWait => crate::job::JobState::RetryWait,
            P::Succeeded => crate::job::JobState::Succeeded,
            P::Failed => crate::job::JobState::Failed,
            P::Cancelled => crate::job::JobState::Cancelled,
            P::Waiting => crate::job::JobState::Waiting,
        })
    }
}
