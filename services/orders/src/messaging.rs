//! The messages Orders writes to its outbox: `OrderCreated`, the saga's
//! commands and the orders' outcomes, each keyed by its order so one
//! order's messages are published in the order they were written.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use contracts::{
    Routed,
    events::v1::{OrderCompleted, OrderCreated, OrderFailed},
    inventory::v1::{ReleaseInventory, ReservationLine, ReserveInventory},
    payments::v1::{ProcessPayment, RefundPayment},
};
use outbox::OutboxMessage;
use telemetry::{correlation, tracecontext::TraceParent};
use uuid::Uuid;

use crate::db::{self, OrderRow};

pub const AGGREGATE_TYPE: &str = "order";
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// `order`'s `OrderCreated` without its `occurred_at`: the statement that
/// writes the order stamps it, and the relay adds it ([`db::OCCURRED_AT_FIELD`]).
pub fn order_created(order: &OrderRow) -> OrderCreated {
    OrderCreated {
        event_id: order.event_id.to_string(),
        order_id: order.order_id.to_string(),
        customer_id: order.customer_id.clone(),
        amount: order.amount.clone(),
        currency: order.currency.clone(),
        occurred_at: None,
        correlation_id: order.correlation_id.clone(),
    }
}

/// The outbox row for `order` to `exchange`, with correlation id and trace
/// context as headers; its `occurred_at` is the database's to stamp.
pub fn outbox_message(order: &OrderRow, exchange: &str, trace: TraceParent) -> OutboxMessage {
    routed(order, exchange, order.event_id, &trace.to_string(), &order_created(order))
}

/// The first command of the order's saga to `exchange`, under its own
/// `event_id`; its `occurred_at` is the database's to stamp, as the event's.
pub fn process_payment(order: &OrderRow, exchange: &str, event_id: Uuid, trace: TraceParent) -> OutboxMessage {
    let command = ProcessPayment {
        event_id: event_id.to_string(),
        order_id: order.order_id.to_string(),
        customer_id: order.customer_id.clone(),
        amount: order.amount.clone(),
        currency: order.currency.clone(),
        occurred_at: None,
        correlation_id: order.correlation_id.clone(),
    };
    routed(order, exchange, event_id, &trace.to_string(), &command)
}

/// The saga's later messages of one order, each under a new `event_id`,
/// to `exchange`, occurring at `at` and carrying the trace context `traceparent`.
pub struct SagaMessages<'a> {
    pub order: &'a OrderRow,
    pub exchange: &'a str,
    pub at: DateTime<Utc>,
    pub traceparent: String,
}

impl SagaMessages<'_> {
    pub fn reserve_inventory(&self) -> OutboxMessage {
        let (event_id, order_id, occurred_at, correlation_id) = self.common();
        let lines =
            self.order.lines.iter().map(|l| ReservationLine { sku: l.sku.clone(), quantity: l.quantity }).collect();
        self.routed(
            event_id,
            &ReserveInventory { event_id: event_id.to_string(), order_id, lines, occurred_at, correlation_id },
        )
    }

    pub fn refund_payment(&self) -> OutboxMessage {
        let (event_id, order_id, occurred_at, correlation_id) = self.common();
        self.routed(event_id, &RefundPayment { event_id: event_id.to_string(), order_id, occurred_at, correlation_id })
    }

    pub fn release_inventory(&self) -> OutboxMessage {
        let (event_id, order_id, occurred_at, correlation_id) = self.common();
        self.routed(
            event_id,
            &ReleaseInventory { event_id: event_id.to_string(), order_id, occurred_at, correlation_id },
        )
    }

    pub fn completed(&self) -> OutboxMessage {
        let (event_id, order_id, occurred_at, correlation_id) = self.common();
        let o = self.order;
        let event = OrderCompleted {
            event_id: event_id.to_string(),
            order_id,
            customer_id: o.customer_id.clone(),
            amount: o.amount.clone(),
            currency: o.currency.clone(),
            occurred_at,
            correlation_id,
        };
        self.routed(event_id, &event)
    }

    /// `reason` as the proto's `FailureReason` number.
    pub fn failed(&self, reason: i32, detail: &str) -> OutboxMessage {
        let (event_id, order_id, occurred_at, correlation_id) = self.common();
        let o = self.order;
        let event = OrderFailed {
            event_id: event_id.to_string(),
            order_id,
            customer_id: o.customer_id.clone(),
            amount: o.amount.clone(),
            currency: o.currency.clone(),
            occurred_at,
            correlation_id,
            reason,
            detail: detail.to_owned(),
        };
        self.routed(event_id, &event)
    }

    fn common(&self) -> (Uuid, String, Option<prost_types::Timestamp>, String) {
        (
            Uuid::now_v7(),
            self.order.order_id.to_string(),
            Some(db::timestamp(self.at)),
            self.order.correlation_id.clone(),
        )
    }

    fn routed<M: Routed>(&self, event_id: Uuid, message: &M) -> OutboxMessage {
        routed(self.order, self.exchange, event_id, &self.traceparent, message)
    }
}

/// An outbox row of `message` about `order`: the aggregate is the order, the
/// headers its correlation id and `traceparent`.
fn routed<M: Routed>(
    order: &OrderRow,
    exchange: &str,
    event_id: Uuid,
    traceparent: &str,
    message: &M,
) -> OutboxMessage {
    let headers = BTreeMap::from([
        (correlation::HEADER.to_owned(), order.correlation_id.clone()),
        (telemetry::tracecontext::HEADER.to_owned(), traceparent.to_owned()),
    ]);
    OutboxMessage {
        event_id,
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        aggregate_id: order.order_id.to_string(),
        exchange: exchange.to_owned(),
        routing_key: M::ROUTING_KEY.to_owned(),
        message_type: M::MESSAGE_TYPE.to_owned(),
        content_type: CONTENT_TYPE.to_owned(),
        payload: message.encode_to_vec(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use contracts::events::v1::OrderFailed;
    use prost::Message;

    use super::*;
    use crate::db::OrderLine;

    fn order() -> OrderRow {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        OrderRow {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            amount: "77.50".into(),
            currency: "EUR".into(),
            status: "CREATED".into(),
            request_id: None,
            event_id: Uuid::now_v7(),
            correlation_id: "corr-1".into(),
            created_at: at,
            failure_reason: None,
            failure_detail: None,
            updated_at: at,
            lines: vec![OrderLine { sku: "ABC-1".into(), quantity: 3 }],
        }
    }

    #[test]
    fn every_saga_message_is_keyed_by_its_order_and_carries_its_correlation() {
        let order = order();
        let trace = TraceParent::new_root();
        let exchange = contracts::EVENTS_EXCHANGE;
        let messages = SagaMessages { order: &order, exchange, at: order.created_at, traceparent: trace.to_string() };
        let all = [
            (
                process_payment(&order, exchange, Uuid::now_v7(), trace),
                "payment.process",
                "pulse.payments.v1.ProcessPayment",
            ),
            (messages.reserve_inventory(), "inventory.reserve", "pulse.inventory.v1.ReserveInventory"),
            (messages.refund_payment(), "payment.refund", "pulse.payments.v1.RefundPayment"),
            (messages.release_inventory(), "inventory.release", "pulse.inventory.v1.ReleaseInventory"),
            (messages.completed(), "order.completed", "pulse.events.v1.OrderCompleted"),
            (messages.failed(2, "sku ABC-1: unknown"), "order.failed", "pulse.events.v1.OrderFailed"),
        ];
        let mut ids = std::collections::HashSet::new();
        for (message, key, kind) in &all {
            assert_eq!((message.routing_key.as_str(), message.message_type.as_str()), (*key, *kind));
            assert_eq!(message.aggregate_id, order.order_id.to_string(), "{key}");
            assert_eq!(message.exchange, contracts::EVENTS_EXCHANGE);
            assert_eq!(message.headers.get(correlation::HEADER).map(String::as_str), Some("corr-1"));
            assert!(ids.insert(message.event_id), "{key}: a new event id");
        }
        let reserve = ReserveInventory::decode(all[1].0.payload.as_slice()).unwrap();
        assert_eq!((reserve.event_id, reserve.lines.len()), (all[1].0.event_id.to_string(), 1));
        let failed = OrderFailed::decode(all[5].0.payload.as_slice()).unwrap();
        assert_eq!((failed.reason, failed.detail.as_str(), failed.amount.as_str()), (2, "sku ABC-1: unknown", "77.50"));
    }
}
