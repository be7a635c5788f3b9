//! What a service plugs into the inbox: the event it consumes and the effect
//! it applies inside the inbox's transaction.

use std::future::Future;

use sqlx::PgConnection;
use tracing::{Instrument, Span};
use uuid::Uuid;

/// Handles `events` in turn inside `tx`, each in its own span, naming the
/// one that fails: what [`Handler::handle_batch`] does by default, for a
/// handler that prepares a batch first (e.g. locks the rows it touches in one
/// order, so that two consumers' batches queue up instead of deadlocking).
pub async fn handle_each<H: Handler + ?Sized>(
    handler: &H,
    tx: &mut PgConnection,
    events: &[(&H::Event, &MessageContext)],
) -> Result<(), BatchError> {
    for (index, (event, ctx)) in events.iter().enumerate() {
        handler
            .handle(tx, event, ctx)
            .instrument(ctx.span.clone())
            .await
            .map_err(|error| BatchError { index: Some(index), error })?;
    }
    Ok(())
}

/// Applies events. The inbox decodes, validates and deduplicates before
/// calling the handler, and commits the handler's writes together with the
/// record that each event was processed.
///
/// One queue may carry several message types (a service's commands, the
/// replies an orchestrator waits for): [`Self::Event`] is then an enum with a
/// variant per type, and [`Self::decode`] picks the variant by the AMQP `type`.
/// A handler of a single protobuf message sets `Event` to it and decodes
/// with [`decode_as`].
pub trait Handler: Send + Sync + 'static {
    /// The decoded payload.
    type Event: std::fmt::Debug + Send + Sync + 'static;
    /// The AMQP `type` properties the messages carry, e.g.
    /// `pulse.events.v1.OrderCreated`: a message of any other type is
    /// dead-lettered with reason `unknown_type`.
    const MESSAGE_TYPES: &'static [&'static str];

    /// Decodes a protobuf payload whose AMQP `type` is `message_type`, one of
    /// [`Self::MESSAGE_TYPES`]; an `Err` dead-letters it with reason `decode_error`.
    fn decode(message_type: &str, payload: &[u8]) -> Result<Self::Event, crate::DecodeError>;

    /// The event id the payload carries, as text. The inbox deduplicates on it,
    /// so a copy republished under another AMQP `message_id` still has its
    /// effect once: a `message_id` that differs from it dead-letters the
    /// message (reason `event_id_mismatch`), one that is not a UUID with
    /// reason `validation_failed`.
    fn event_id(event: &Self::Event) -> &str;

    /// Checks a decoded event; an `Err` dead-letters it with reason `validation_failed`.
    fn validate(event: &Self::Event) -> Result<(), String>;

    /// The event as JSON, for the dead-letter console's `show`. The default
    /// gives the payload's debug text; override it to show its fields.
    fn describe(event: &Self::Event) -> serde_json::Value {
        serde_json::json!({ "debug": format!("{event:?}") })
    }

    /// Applies one event inside the open transaction `tx`. Has effect at most
    /// once per event id; may run again after a rolled-back attempt. The
    /// transaction is the inbox's: a handler never begins, commits or rolls
    /// back one itself (a savepoint of its own is fine).
    fn handle(
        &self,
        tx: &mut PgConnection,
        event: &Self::Event,
        ctx: &MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies several events, in order, inside `tx`; the inbox's fast path.
    /// The default calls [`Self::handle`] for each; override it to write many
    /// rows per statement. If it fails, the inbox rolls the transaction back
    /// and applies the events one by one with [`Self::handle`], each under a
    /// savepoint, leaving out the failed event when [`BatchError::index`] names it.
    fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&Self::Event, &MessageContext)],
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        handle_each(self, tx, events)
    }

    /// Called once the transaction that applied `events` has committed, before
    /// they are acked: a place for quick in-process work that must wait for the
    /// commit, such as handing what the transaction wrote to a local worker.
    /// It is not called for a transaction that rolled back, nor again for the
    /// events after a crash, so nothing durable may depend on it. Does nothing
    /// by default.
    fn committed(&self, events: &[(&Self::Event, &MessageContext)]) {
        let _ = events;
    }
}

/// Decodes `payload` as a `M`: [`Handler::decode`] for a handler of one message type.
pub fn decode_as<M: prost::Message + Default>(payload: &[u8]) -> Result<M, prost::DecodeError> {
    M::decode(payload)
}

/// What the inbox knows about the message being handled.
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// The event id the payload carries ([`Handler::event_id`]), which the
    /// AMQP `message_id` repeats.
    pub event_id: Uuid,
    /// `x-correlation-id` header, or the AMQP `correlation_id` property.
    pub correlation_id: Option<String>,
    /// This attempt's number, 1 for the first.
    pub attempt: u32,
    /// The broker delivered this copy before (a consumer died or lost its connection).
    pub redelivered: bool,
    /// The message's log span (carries `event_id` and `correlation_id`);
    /// [`Handler::handle`] already runs inside it.
    pub span: Span,
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (database trouble, a busy dependency): the
    /// message goes to the next retry tier, or the dead-letter queue once its
    /// attempts are used up.
    #[error("retryable: {0:#}")]
    Retryable(anyhow::Error),
    /// Will fail however often it is tried: straight to the dead-letter queue.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

/// Database errors are retried: connection loss, deadlocks and serialization
/// failures pass, and a query bug still ends in the dead-letter queue once the
/// attempts are used up, replayable after the fix.
impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        Self::Retryable(err.into())
    }
}

/// Why [`Handler::handle_batch`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BatchError {
    /// Position of the failed event in the batch, when known.
    pub index: Option<usize>,
    pub error: HandlerError,
}

impl From<HandlerError> for BatchError {
    fn from(error: HandlerError) -> Self {
        Self { index: None, error }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(err: sqlx::Error) -> Self {
        HandlerError::from(err).into()
    }
}
