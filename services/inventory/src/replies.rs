//! The replies to the saga's commands as the outbox stores them: a fresh
//! event id, the command's order and correlation id, the order as aggregate
//! (so one order's messages keep their order), the correlation id and trace
//! context as headers.

use contracts::{
    Routed,
    inventory::v1::{InventoryReleased, InventoryReservationFailed, InventoryReserved},
};
use outbox::OutboxMessage;
use telemetry::tracecontext::TraceParent;
use uuid::Uuid;

use crate::saga::Outcome;

/// The outbox aggregate of every reply: the order it is about.
pub(crate) const AGGREGATE_TYPE: &str = "order";

/// Who a reply goes to and what it continues.
pub(crate) struct Addressed<'a> {
    /// The exchange replies are published to.
    pub(crate) exchange: &'a str,
    pub(crate) order_id: Uuid,
    pub(crate) correlation_id: &'a str,
    pub(crate) trace: TraceParent,
}

/// The outbox row answering a command with `outcome`.
pub(crate) fn outbox_message(outcome: &Outcome, to: &Addressed<'_>) -> OutboxMessage {
    let event_id = Uuid::now_v7();
    let (event_id_text, order_id) = (event_id.to_string(), to.order_id.to_string());
    let occurred_at = Some(crate::db::timestamp(chrono::Utc::now()));
    let correlation_id = to.correlation_id.to_owned();
    let (message_type, routing_key, payload) = match outcome {
        Outcome::Reserved { reservation_id } => encoded(&InventoryReserved {
            event_id: event_id_text,
            order_id,
            reservation_id: reservation_id.to_string(),
            occurred_at,
            correlation_id,
        }),
        Outcome::Failed { reservation_id, detail } => encoded(&InventoryReservationFailed {
            event_id: event_id_text,
            order_id,
            reservation_id: reservation_id.to_string(),
            detail: detail.clone(),
            occurred_at,
            correlation_id,
        }),
        Outcome::Released { reservation_id, was_reserved } => encoded(&InventoryReleased {
            event_id: event_id_text,
            order_id,
            reservation_id: reservation_id.to_string(),
            was_reserved: *was_reserved,
            occurred_at,
            correlation_id,
        }),
    };
    let (aggregate_id, traceparent) = (to.order_id.to_string(), to.trace.to_string());
    let addressed = outbox::Addressed {
        exchange: to.exchange,
        aggregate: (AGGREGATE_TYPE, &aggregate_id),
        correlation_id: to.correlation_id,
        traceparent: Some(&traceparent),
    };
    OutboxMessage::reply(&addressed, event_id, (routing_key, message_type), payload)
}

fn encoded<M: Routed>(message: &M) -> (&'static str, &'static str, Vec<u8>) {
    (M::MESSAGE_TYPE, M::ROUTING_KEY, message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use telemetry::correlation;

    use super::*;

    #[test]
    fn a_reply_is_routed_by_its_outcome_and_keyed_by_its_order() {
        let order_id = Uuid::new_v4();
        let to =
            Addressed { exchange: "pulse.events", order_id, correlation_id: "corr-1", trace: TraceParent::new_root() };
        let released = Outcome::Released { reservation_id: Uuid::new_v4(), was_reserved: true };
        let message = outbox_message(&released, &to);
        assert_eq!((message.routing_key.as_str(), message.aggregate_id), ("inventory.released", order_id.to_string()));
        assert_eq!(message.message_type, "pulse.inventory.v1.InventoryReleased");
        assert_eq!(message.headers[correlation::HEADER], "corr-1");
        let decoded = InventoryReleased::decode(message.payload.as_slice()).unwrap();
        assert_eq!(decoded.event_id, message.event_id.to_string());
        assert!(decoded.was_reserved);
        let failed = Outcome::Failed { reservation_id: Uuid::new_v4(), detail: "sku A: unknown".into() };
        assert_eq!(outbox_message(&failed, &to).routing_key, "inventory.reservation_failed");
    }
}
