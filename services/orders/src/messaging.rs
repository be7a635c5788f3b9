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

pub fn order_created(order: &OrderRow) -> OrderCreated {
    OrderCreated {
        event_id: order.event_id.to_string(),
        order_id: order.order_id.to_string(),
        customer_id: order.customer_id.clone(),
        amount: order.amount.clone(),
        currency: order.currency.clone(),
        occurred_at: Some(db::timestamp(order.created_at)),
        correlation_id: order.correlation_id.clone(),
    }
}

/// The outbox row for `order`, with correlation id and trace context as headers.
pub fn outbox_message(order: &OrderRow, trace: TraceParent) -> OutboxMessage {
    routed(order, order.event_id, &trace.to_string(), &order_created(order))
}

/// The first command of the order's saga, under its own `event_id`.
pub fn process_payment(order: &OrderRow, event_id: Uuid, trace: TraceParent) -> OutboxMessage {
    let command = ProcessPayment {
        event_id: event_id.to_string(),
        order_id: order.order_id.to_string(),
        customer_id: order.customer_id.clone(),
        amount: order.amount.clone(),
        currency: order.currency.clone(),
        occurred_at: Some(db::timestamp(order.created_at)),
        correlation_id: order.correlation_id.clone(),
    };
    routed(order, event_id, &trace.to_string(), &command)
}

/// The saga's later messages of one order, each under a new `event_id`,
/// occurring at `at` and carrying the trace context `traceparent`.
pub struct SagaMessages<'a> {
    pub order: &'a OrderRow,
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
        routed(self.order, event_id, &self.traceparent, message)
    }
}

/// An outbox row of `message` about `order`: the aggregate is the order, the
/// headers its correlation id and `traceparent`.
fn routed<M: Routed>(order: &OrderRow, event_id: Uuid, traceparent: &str, message: &M) -> OutboxMessage {
    let headers = BTreeMap::from([
        (correlation::HEADER.to_owned(), order.correlation_id.clone()),
        (telemetry::tracecontext::HEADER.to_owned(), traceparent.to_owned()),
    ]);
    OutboxMessage {
        event_id,
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        aggregate_id: order.order_id.to_string(),
        exchange: contracts::EVENTS_EXCHANGE.to_owned(),
        routing_key: M::ROUTING_KEY.to_owned(),
        message_type: M::MESSAGE_TYPE.to_owned(),
        content_type: CONTENT_TYPE.to_owned(),
        payload: message.encode_to_vec(),
        headers,
    }
}
