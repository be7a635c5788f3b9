//! The dead-letter console: `pulse.admin.v1.DeadLetterService`, served by each
//! service that runs an inbox (see [`DeadLetterConsole`]).
//!
//! Each call first takes what waits in the dead-letter queue into the
//! `dead_letters` table (created by [`crate::schema::apply`]), so listing,
//! grouping and showing are queries and nothing is lost by looking. Replay
//! republishes a row to the consumer's main queue and marks it replayed once
//! the broker confirmed the copy; purge marks rows purged with who and why.
//! Rows are never deleted.

mod auth;
mod broker;
mod service;
mod store;

pub use auth::BearerAuth;
pub use broker::REPLAY_OF;
pub use service::DeadLetterConsole;
pub use store::{Filter, State};

/// The generated messages, client and server of `pulse.admin.v1`.
#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("pulse.admin.v1");
    /// Full gRPC name of the service, for reflection and health.
    pub const SERVICE_NAME: &str = "pulse.admin.v1.DeadLetterService";
}

/// Encoded `FileDescriptorSet` of `pulse.admin.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
