//! The idempotent consumer ("inbox"), generic over the event it consumes.
//!
//! * Exactly-once effect: for each delivery the inbox records the event id
//!   the payload carries ([`Handler::event_id`], which the AMQP `message_id`
//!   must repeat) in `processed_events` and runs the [`Handler`] in the same
//!   transaction, and acknowledges only after the commit. A copy whose id is
//!   already recorded commits nothing and is acknowledged as a duplicate.
//! * Nothing unchecked is applied: a body over
//!   [`InboxConfig::max_message_bytes`], a `content_type` other than
//!   protobuf, a wrong `type`, an undecodable payload, an event id the
//!   `message_id` contradicts or an event [`Handler::validate`] refuses goes
//!   to the dead-letter queue with its reason.
//! * Throughput: deliveries already pushed by the broker are taken together
//!   (up to [`InboxConfig::batch_size`]), applied through
//!   [`Handler::handle_batch`] and committed in one transaction, then
//!   acknowledged with one `multiple` ack. A failing message is isolated by
//!   redoing the batch with a savepoint per message.
//! * Failures: a transient failure parks the message in the next retry tier
//!   (a queue whose TTL dead-letters it back to the main queue) with its
//!   `x-attempt` header incremented; a permanent one, or the last attempt,
//!   moves it to the dead-letter queue with the reason in its headers. Neither
//!   ever requeues, so there is no hot redelivery loop. `x-attempt` is read
//!   only on copies back from a retry tier: on anything else it is not ours.
//! * A message the broker itself dead-lettered (over the main queue's
//!   delivery limit) is moved on to the dead-letter queue with the same
//!   headers, reason `delivery_limit`.
//! * The broker connection is re-established with backoff; its state is
//!   published through [`Inbox::connected`].
//!
//! * The dead-letter console ([`admin`]): list, group, show, replay and purge
//!   dead letters over gRPC (`pulse.admin.v1.DeadLetterService`).
//!
//! Its `INBOX_*` variables ([`variables::VARIABLES`]) are read and checked by
//! [`InboxConfig::apply_env`].
//!
//! The schema (`processed_events`, `dead_letters`) comes with the crate:
//! [`schema::apply`] creates or upgrades it, and a service calls it at start,
//! before its own migrations. See [`Topology`] for the queues and [`headers`]
//! for the headers.

pub mod admin;
mod batch;
mod config;
mod consumer;
mod forward;
mod handler;
pub mod headers;
mod message;
mod metrics;
mod poison;
mod prune;
mod replay;
pub mod schema;
mod stats;
mod topology;
pub mod variables;

pub use config::{DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_RETRY_DELAYS, Fault, InboxConfig, MAX_MESSAGE_BYTES_CEILING};
pub use consumer::Inbox;
pub use handler::{BatchError, Handler, HandlerError, MessageContext, decode_as, handle_each};
pub use headers::DeadLetterReason;
/// The error of [`Handler::decode`].
pub use prost::DecodeError;
pub use prune::prune_processed_events;
pub use replay::replay_dead_letters;
pub use stats::{InboxStats, StatsSnapshot};
pub use topology::{KEEP_DELIVERY_LIMIT, POISON_DELIVERY_LIMIT, Topology, delay_label};
