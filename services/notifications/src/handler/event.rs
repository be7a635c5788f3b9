//! The order events Notifications consumes, one enum over their protobuf
//! messages, with the fields they share and the notification each reads as.

use contracts::{
    Routed,
    events::v1::{OrderCompleted, OrderCreated, OrderFailed},
    orders::v1::FailureReason,
};
use prost::Message as _;

/// An event of an order's life that makes a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    /// `order.created`: the order was accepted.
    Created(OrderCreated),
    /// `order.completed`: paid and its stock reserved.
    Completed(OrderCompleted),
    /// `order.failed`: ended without completing, with the reason.
    Failed(OrderFailed),
}

/// The AMQP types of [`OrderEvent`], in variant order.
pub(crate) const MESSAGE_TYPES: &[&str] =
    &[OrderCreated::MESSAGE_TYPE, OrderCompleted::MESSAGE_TYPE, OrderFailed::MESSAGE_TYPE];

/// The routing keys the consumer's queue is bound to.
pub fn routing_keys() -> Vec<String> {
    [OrderCreated::ROUTING_KEY, OrderCompleted::ROUTING_KEY, OrderFailed::ROUTING_KEY].map(str::to_owned).to_vec()
}

/// The fields every order event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Common<'a> {
    pub(crate) event_id: &'a str,
    pub(crate) order_id: &'a str,
    pub(crate) customer_id: &'a str,
    pub(crate) amount: &'a str,
    pub(crate) currency: &'a str,
    pub(crate) occurred_at: Option<&'a prost_types::Timestamp>,
    pub(crate) correlation_id: &'a str,
}

impl OrderEvent {
    /// Decodes a payload of one of [`MESSAGE_TYPES`].
    pub fn decode(message_type: &str, payload: &[u8]) -> Result<Self, inbox::DecodeError> {
        Ok(match message_type {
            t if t == OrderCompleted::MESSAGE_TYPE => Self::Completed(OrderCompleted::decode(payload)?),
            t if t == OrderFailed::MESSAGE_TYPE => Self::Failed(OrderFailed::decode(payload)?),
            _ => Self::Created(OrderCreated::decode(payload)?),
        })
    }

    /// The routing key the event is published with, e.g. `order.failed`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Created(_) => OrderCreated::ROUTING_KEY,
            Self::Completed(_) => OrderCompleted::ROUTING_KEY,
            Self::Failed(_) => OrderFailed::ROUTING_KEY,
        }
    }

    pub(crate) fn common(&self) -> Common<'_> {
        macro_rules! common {
            ($e:expr) => {
                Common {
                    event_id: &$e.event_id,
                    order_id: &$e.order_id,
                    customer_id: &$e.customer_id,
                    amount: &$e.amount,
                    currency: &$e.currency,
                    occurred_at: $e.occurred_at.as_ref(),
                    correlation_id: &$e.correlation_id,
                }
            };
        }
        match self {
            Self::Created(e) => common!(e),
            Self::Completed(e) => common!(e),
            Self::Failed(e) => common!(e),
        }
    }

    /// The notification's text.
    pub(crate) fn message(&self, order_id: uuid::Uuid) -> String {
        let Common { amount, currency, .. } = self.common();
        match self {
            Self::Created(_) => format!("Order {order_id} for {amount} {currency} has been received"),
            Self::Completed(_) => {
                format!("Order {order_id} for {amount} {currency} is complete: paid and its items reserved")
            }
            Self::Failed(failed) => {
                let reason = reason_text(failed.reason);
                match failed.detail.trim() {
                    "" => format!("Order {order_id} for {amount} {currency} has failed: {reason}"),
                    detail => format!("Order {order_id} for {amount} {currency} has failed: {reason} ({detail})"),
                }
            }
        }
    }
}

/// The failure reason in words; an unknown number (a newer producer) says so.
fn reason_text(reason: i32) -> String {
    match FailureReason::try_from(reason) {
        Ok(FailureReason::PaymentDeclined) => "the payment was declined".into(),
        Ok(FailureReason::OutOfStock) => "an item is out of stock".into(),
        Ok(FailureReason::TimedOut) => "a step did not answer in time".into(),
        Ok(FailureReason::Unspecified) | Err(_) => format!("reason {reason}"),
    }
}

/// The name of a failure reason as the proto spells it, for `describe`.
pub(crate) fn reason_name(reason: i32) -> String {
    FailureReason::try_from(reason).map_or_else(|_| reason.to_string(), |r| r.as_str_name().to_owned())
}
