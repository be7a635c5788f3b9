//! The participants' replies, consumed through the inbox: each applied to its
//! order's saga inside the inbox's transaction, with the messages it causes
//! written to the outbox on the same connection.

use contracts::{
    Routed,
    inventory::v1::{InventoryReleased, InventoryReservationFailed, InventoryReserved},
    payments::v1::{PaymentDeclined, PaymentProcessed, PaymentRefunded},
};
use inbox::{BatchError, Handler, HandlerError, MessageContext};
use sqlx::PgConnection;
use telemetry::tracecontext::TraceParent;
use uuid::Uuid;

use super::{
    state::Input,
    store::{Applied, Request, Store},
};

/// One reply of a saga's participant.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    PaymentProcessed(PaymentProcessed),
    PaymentDeclined(PaymentDeclined),
    PaymentRefunded(PaymentRefunded),
    InventoryReserved(InventoryReserved),
    ReservationFailed(InventoryReservationFailed),
    InventoryReleased(InventoryReleased),
}

/// The routing keys of the six replies, which the saga's queue is bound with.
pub const ROUTING_KEYS: &[&str] = &[
    PaymentProcessed::ROUTING_KEY,
    PaymentDeclined::ROUTING_KEY,
    PaymentRefunded::ROUTING_KEY,
    InventoryReserved::ROUTING_KEY,
    InventoryReservationFailed::ROUTING_KEY,
    InventoryReleased::ROUTING_KEY,
];

impl Reply {
    fn ids(&self) -> (&str, &str) {
        match self {
            Self::PaymentProcessed(m) => (&m.event_id, &m.order_id),
            Self::PaymentDeclined(m) => (&m.event_id, &m.order_id),
            Self::PaymentRefunded(m) => (&m.event_id, &m.order_id),
            Self::InventoryReserved(m) => (&m.event_id, &m.order_id),
            Self::ReservationFailed(m) => (&m.event_id, &m.order_id),
            Self::InventoryReleased(m) => (&m.event_id, &m.order_id),
        }
    }

    /// What the reply means to the saga.
    pub fn input(&self) -> Input {
        match self {
            Self::PaymentProcessed(_) => Input::PaymentProcessed,
            Self::PaymentDeclined(m) => Input::PaymentDeclined { detail: m.detail.clone() },
            Self::PaymentRefunded(_) => Input::PaymentRefunded,
            Self::InventoryReserved(_) => Input::InventoryReserved,
            Self::ReservationFailed(m) => Input::ReservationFailed { detail: m.detail.clone() },
            Self::InventoryReleased(_) => Input::InventoryReleased,
        }
    }
}

/// The inbox handler of the saga's replies.
#[derive(Clone)]
pub struct ReplyHandler {
    store: Store,
}

impl ReplyHandler {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn decode<M: Routed>(payload: &[u8], wrap: fn(M) -> Reply) -> Result<Reply, inbox::DecodeError> {
    inbox::decode_as::<M>(payload).map(wrap)
}

impl Handler for ReplyHandler {
    type Event = Reply;
    const MESSAGE_TYPES: &'static [&'static str] = &[
        PaymentProcessed::MESSAGE_TYPE,
        PaymentDeclined::MESSAGE_TYPE,
        PaymentRefunded::MESSAGE_TYPE,
        InventoryReserved::MESSAGE_TYPE,
        InventoryReservationFailed::MESSAGE_TYPE,
        InventoryReleased::MESSAGE_TYPE,
    ];

    fn decode(message_type: &str, payload: &[u8]) -> Result<Reply, inbox::DecodeError> {
        match message_type {
            PaymentProcessed::MESSAGE_TYPE => decode(payload, Reply::PaymentProcessed),
            PaymentDeclined::MESSAGE_TYPE => decode(payload, Reply::PaymentDeclined),
            PaymentRefunded::MESSAGE_TYPE => decode(payload, Reply::PaymentRefunded),
            InventoryReserved::MESSAGE_TYPE => decode(payload, Reply::InventoryReserved),
            InventoryReservationFailed::MESSAGE_TYPE => decode(payload, Reply::ReservationFailed),
            // The inbox dead-letters any type not in MESSAGE_TYPES before decoding:
            // what is left is InventoryReleased.
            _ => decode(payload, Reply::InventoryReleased),
        }
    }

    fn event_id(event: &Reply) -> &str {
        event.ids().0
    }

    fn validate(event: &Reply) -> Result<(), String> {
        let order_id = event.ids().1;
        Uuid::try_parse(order_id).map(drop).map_err(|_| format!("order_id: {order_id:?} is not a UUID"))
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Reply, ctx: &MessageContext) -> Result<(), HandlerError> {
        self.handle_batch(tx, &[(event, ctx)]).await.map_err(|failed| failed.error)
    }

    /// The whole batch in a fixed number of statements ([`Store::apply_all`]):
    /// a reply per message is what the saga's rate is made of.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&Reply, &MessageContext)],
    ) -> Result<(), BatchError> {
        let mut inputs = Vec::with_capacity(events.len());
        for (index, (event, ctx)) in events.iter().enumerate() {
            let order_id = Uuid::try_parse(event.ids().1)
                .map_err(|err| BatchError { index: Some(index), error: HandlerError::Permanent(err.into()) })?;
            let traceparent = telemetry::propagation::traceparent_of(&ctx.span)
                .unwrap_or_else(|| TraceParent::new_root().to_string());
            inputs.push((order_id, event.input(), traceparent));
        }
        let requests: Vec<Request<'_>> = inputs
            .iter()
            .map(|(order_id, input, traceparent)| Request { order_id: *order_id, input, traceparent })
            .collect();
        let applied = self.store.apply_all(tx, &requests).await?;
        for (index, (applied, (_, ctx))) in applied.into_iter().zip(events).enumerate() {
            let (order_id, input, _) = &inputs[index];
            match applied {
                Applied::UnknownOrder => {
                    return Err(BatchError {
                        index: Some(index),
                        error: HandlerError::Permanent(anyhow::anyhow!(
                            "no saga for order {order_id}: {input:?} has no order to apply to"
                        )),
                    });
                }
                Applied::Ignored(reason) => {
                    ctx.span.in_scope(|| tracing::info!(%order_id, %reason, "saga reply ignored"));
                }
                Applied::Moved(effects) => {
                    ctx.span.in_scope(|| tracing::info!(%order_id, ?input, ?effects, "saga moved on"));
                }
            }
        }
        Ok(())
    }
}
