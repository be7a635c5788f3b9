//! The replies as the outbox stores them: PaymentProcessed, PaymentDeclined
//! or PaymentRefunded, each with a fresh event id, the command's order and
//! correlation id, and the order as its aggregate (one order's messages keep
//! their order).

use chrono::Utc;
use contracts::{
    Routed,
    payments::v1::{PaymentDeclined, PaymentProcessed, PaymentRefunded},
};
use outbox::{Addressed, OutboxMessage};
use uuid::Uuid;

use crate::commands::Outcome;

/// The outbox aggregate of every reply: the order it is about.
pub(crate) const AGGREGATE_TYPE: &str = "order";

/// Where a reply goes, and what it carries beside the outcome.
#[derive(Debug, Clone)]
pub(crate) struct Envelope<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) order_id: Uuid,
    pub(crate) correlation_id: &'a str,
    /// `traceparent` of the handling span, when there is one.
    pub(crate) traceparent: Option<String>,
}

/// The outbox row that replies `outcome`.
pub(crate) fn outbox_message(envelope: &Envelope<'_>, outcome: &Outcome) -> OutboxMessage {
    let event_id = Uuid::now_v7();
    let (event, order, correlation_id) =
        (event_id.to_string(), envelope.order_id.to_string(), envelope.correlation_id.to_owned());
    let now = Utc::now();
    let occurred_at =
        Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: now.timestamp_subsec_nanos() as i32 });
    let (routing_key, message_type, payload) = match outcome {
        Outcome::Processed { payment_id } => encode(&PaymentProcessed {
            event_id: event,
            order_id: order,
            payment_id: payment_id.to_string(),
            occurred_at,
            correlation_id,
        }),
        Outcome::Declined { payment_id, detail } => encode(&PaymentDeclined {
            event_id: event,
            order_id: order,
            payment_id: payment_id.to_string(),
            detail: detail.clone(),
            occurred_at,
            correlation_id,
        }),
        Outcome::Refunded { payment_id, was_captured } => encode(&PaymentRefunded {
            event_id: event,
            order_id: order,
            payment_id: payment_id.to_string(),
            was_captured: *was_captured,
            occurred_at,
            correlation_id,
        }),
    };
    let aggregate_id = envelope.order_id.to_string();
    let to = Addressed {
        exchange: envelope.exchange,
        aggregate: (AGGREGATE_TYPE, &aggregate_id),
        correlation_id: envelope.correlation_id,
        traceparent: envelope.traceparent.as_deref(),
    };
    OutboxMessage::reply(&to, event_id, (routing_key, message_type), payload)
}

fn encode<M: Routed>(message: &M) -> (&'static str, &'static str, Vec<u8>) {
    (M::ROUTING_KEY, M::MESSAGE_TYPE, message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use telemetry::correlation;

    use super::*;

    #[test]
    fn a_reply_is_routed_by_its_outcome_and_keyed_by_its_order() {
        let order_id = Uuid::new_v4();
        let envelope = Envelope { exchange: "pulse.events", order_id, correlation_id: "corr-1", traceparent: None };
        let payment_id = Uuid::new_v4();
        let message = outbox_message(&envelope, &Outcome::Refunded { payment_id, was_captured: true });
        assert_eq!(
            (message.routing_key.as_str(), message.message_type.as_str()),
            ("payment.refunded", "pulse.payments.v1.PaymentRefunded")
        );
        assert_eq!(message.aggregate_id, order_id.to_string());
        assert_eq!(message.headers.get(correlation::HEADER).map(String::as_str), Some("corr-1"));
        let reply = PaymentRefunded::decode(message.payload.as_slice()).unwrap();
        assert_eq!(reply.event_id, message.event_id.to_string());
        assert_eq!(
            (reply.order_id, reply.payment_id, reply.was_captured),
            (order_id.to_string(), payment_id.to_string(), true)
        );
        assert_eq!(reply.correlation_id, "corr-1");
    }
}
