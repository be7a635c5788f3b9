//! The `OrderCreated` event as the outbox stores it.

use std::collections::BTreeMap;

use contracts::events::v1::{ORDER_CREATED_ROUTING_KEY, ORDER_CREATED_TYPE, OrderCreated};
use outbox::OutboxMessage;
use prost::Message;
use telemetry::{correlation, tracecontext::TraceParent};

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
    let headers = BTreeMap::from([
        (correlation::HEADER.to_owned(), order.correlation_id.clone()),
        (telemetry::tracecontext::HEADER.to_owned(), trace.to_string()),
    ]);
    OutboxMessage {
        event_id: order.event_id,
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        aggregate_id: order.order_id.to_string(),
        exchange: contracts::EVENTS_EXCHANGE.to_owned(),
        routing_key: ORDER_CREATED_ROUTING_KEY.to_owned(),
        message_type: ORDER_CREATED_TYPE.to_owned(),
        content_type: CONTENT_TYPE.to_owned(),
        payload: order_created(order).encode_to_vec(),
        headers,
    }
}
