//! The transactional outbox, generic over what it carries.
//!
//! * [`OutboxWriter::append`] adds a message to `outbox_messages` inside the
//!   caller's transaction, so the message exists if and only if the caller's
//!   own rows commit.
//! * [`Relay`] moves pending rows to RabbitMQ: it claims a batch from the
//!   partitions it owns, publishes the whole batch with publisher confirms in
//!   flight together and the `mandatory` flag set, and deletes (or archives)
//!   exactly the rows the broker confirmed.
//! * Ordering: every aggregate hashes to one of [`PARTITIONS`] partitions, and a
//!   partition is owned by one relay at a time through a Postgres advisory lock
//!   held on the relay's connection. Relays share the partitions between them
//!   and hand one over only between batches, so an aggregate's events reach
//!   the broker in the order they were written, also with several relays.
//! * Wake-ups: the writer's transaction sends `NOTIFY` (delivered at commit) and
//!   an in-process waker can be poked after commit; a slow poll is the fallback.
//!
//! The schema is in `migrations/orders/0001_outbox.sql`; a service that uses
//! the outbox copies that migration into its own set.

mod message;
mod ownership;
mod publisher;
mod relay;
mod retention;

pub use message::{DEFAULT_NOTIFY_CHANNEL, OutboxMessage, OutboxWriter, PARTITIONS, partition_of};
pub use relay::{Relay, RelayConfig, RelayStatus};
/// One pass of archive upkeep (what the relay runs every minute); for operators and tests.
pub use retention::run_once as maintain_archive_once;
