//! The transactional outbox, generic over what it carries.
//!
//! * [`OutboxWriter::append`] adds a message to `outbox_messages` inside the
//!   caller's transaction, so the message exists if and only if the caller's
//!   own rows commit. [`WithEvents`] does the same inside the caller's own
//!   statement, when one round trip should write both.
//! * [`Relay`] moves pending rows to RabbitMQ: it claims a batch from the
//!   partitions it owns, publishes the whole batch with publisher confirms in
//!   flight together and the `mandatory` flag set, and deletes (or archives)
//!   exactly the rows the broker confirmed.
//! * Ordering: every aggregate hashes to one of [`PARTITIONS`] partitions, and a
//!   partition is owned by one relay at a time through a Postgres advisory lock
//!   held on the relay's connection. Relays share the partitions between them
//!   and hand one over only between batches, so an aggregate's events reach
//!   the broker in the order they were written, also with several relays.
//! * Wake-ups: after a commit, [`OutboxWriter::hand_over`] gives the rows to
//!   the in-process relay, which at light load publishes them without
//!   claiming them when that cannot reorder an aggregate (see `handover`), and
//!   [`OutboxWriter::committed`] pokes that relay; for rows of other relays
//!   both ring a doorbell that sends one `NOTIFY` (on a connection of its own,
//!   coalescing bursts) to relays in other processes, which `LISTEN`; a slow
//!   poll is the fallback. Relays drain without waiting while batches come
//!   back full.
//!
//! * Metrics: [`Relay::with_metrics`] records the backlog (count and age of the
//!   oldest row), commit-to-confirm latency, batch sizes, failures, retries and
//!   owned partitions into a `telemetry::metrics` registry.
//!
//! * Status: [`read_status`] reads the backlog, the partitions' owners and
//!   the last publish errors from the database alone (`orders outbox status`).
//!
//! * Configuration: [`OutboxSettings::from_env`] reads and checks the
//!   `OUTBOX_*` variables ([`config::VARIABLES`]).
//!
//! * Schema: [`schema::apply`] creates or upgrades the outbox's tables,
//!   versioned in their own table; a service calls it at start, before its
//!   own migrations.

pub mod config;
mod handover;
mod message;
mod metrics;
mod occurred;
mod ownership;
mod partitions;
mod publisher;
mod relay;
mod reply;
mod retention;
pub mod schema;
mod statement;
mod status;
mod vacuum;

pub use config::OutboxSettings;
pub use message::{
    Appended, DEFAULT_NOTIFY_CHANNEL, LocalRelay, OutboxMessage, OutboxWriter, PARTITIONS, partition_of,
};
pub use relay::{Relay, RelayConfig, RelayStatus};
pub use reply::{Addressed, PROTOBUF, ReplyWriter};
/// One pass of archive upkeep (what the relay runs every minute); for operators and tests.
pub use retention::run_once as maintain_archive_once;
pub use statement::{Ready, WithEvents};
pub use status::{OutboxStatus, PartitionStatus, PublishError, RelaySession, Session, read_status};
