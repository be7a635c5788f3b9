//! Replies a consumer writes from inside the transaction of the message it
//! handles: a protobuf message about an aggregate ([`OutboxMessage::reply`])
//! appended on the caller's connection by a [`ReplyWriter`], which wakes the
//! relays once the transaction commits.

use std::collections::BTreeMap;

use sqlx::{PgConnection, QueryBuilder};
use telemetry::{correlation, tracecontext};
use uuid::Uuid;

use crate::{
    OutboxMessage, OutboxWriter,
    statement::{COLUMNS, push_rows},
};

/// The content type of a protobuf payload.
pub const PROTOBUF: &str = "application/x-protobuf";

/// Where a reply goes and whose it is.
#[derive(Debug, Clone, Copy)]
pub struct Addressed<'a> {
    /// The exchange it is published to.
    pub exchange: &'a str,
    /// Its aggregate (type, id): one aggregate's messages keep their order.
    pub aggregate: (&'a str, &'a str),
    /// The `x-correlation-id` header.
    pub correlation_id: &'a str,
    /// The `traceparent` header, when there is a trace to continue.
    pub traceparent: Option<&'a str>,
}

impl OutboxMessage {
    /// A protobuf message of `message_type`, routed by `routing_key`, under a
    /// fresh event id (`event_id`, the one the payload carries too), addressed `to`.
    pub fn reply(
        to: &Addressed<'_>,
        event_id: Uuid,
        (routing_key, message_type): (&str, &str),
        payload: Vec<u8>,
    ) -> Self {
        let mut headers = BTreeMap::from([(correlation::HEADER.to_owned(), to.correlation_id.to_owned())]);
        if let Some(traceparent) = to.traceparent {
            headers.insert(tracecontext::HEADER.to_owned(), traceparent.to_owned());
        }
        Self {
            event_id,
            aggregate_type: to.aggregate.0.to_owned(),
            aggregate_id: to.aggregate.1.to_owned(),
            exchange: to.exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_type: message_type.to_owned(),
            content_type: PROTOBUF.to_owned(),
            payload,
            headers,
        }
    }
}

/// Appends a consumer's replies in its transaction and wakes the relays at
/// commit. Cheap to clone.
///
/// Unlike [`OutboxWriter::committed`] (whose caller owns the commit), a
/// consumer's transaction is committed by the inbox: the wake-up is a
/// `NOTIFY` inside it, which Postgres delivers at commit, once per
/// transaction however many replies it holds.
#[derive(Debug, Clone, Default)]
pub struct ReplyWriter {
    writer: OutboxWriter,
    notify_channel: Option<String>,
}

impl ReplyWriter {
    /// A writer that notifies `notify_channel` (the relays' `LISTEN`
    /// channel); None wakes no one (the relays find the rows at their next poll).
    pub fn new(notify_channel: Option<String>) -> Self {
        Self { writer: OutboxWriter::new(), notify_channel }
    }

    /// Appends `message` on `tx`, the caller's open transaction.
    pub async fn append(&self, tx: &mut PgConnection, message: &OutboxMessage) -> Result<(), sqlx::Error> {
        self.append_all(tx, &[message]).await
    }

    /// Appends `messages` on `tx`, in their order, with the wake-up: one
    /// statement (one round trip) however many they are. A consumer handling
    /// a batch appends the batch's replies at once.
    pub async fn append_all(&self, tx: &mut PgConnection, messages: &[&OutboxMessage]) -> Result<(), sqlx::Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let Some(channel) = &self.notify_channel else {
            return self.writer.append_all(tx, messages).await;
        };
        let mut query = QueryBuilder::new(format!("WITH appended AS (INSERT INTO outbox_messages ({COLUMNS}) "));
        push_rows(&mut query, messages, None);
        // A data-modifying CTE runs whether or not the outer query reads it.
        query.push(" ORDER BY m.n) SELECT pg_notify(").push_bind(channel.as_str()).push(", '')");
        query.build().execute(tx).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_its_aggregate_route_and_headers() {
        let to = Addressed {
            exchange: "pulse.events",
            aggregate: ("order", "o-1"),
            correlation_id: "corr-1",
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        };
        let event_id = Uuid::now_v7();
        let message =
            OutboxMessage::reply(&to, event_id, ("payment.processed", "pulse.payments.v1.PaymentProcessed"), vec![1]);
        assert_eq!((message.aggregate_type.as_str(), message.aggregate_id.as_str()), ("order", "o-1"));
        assert_eq!((message.routing_key.as_str(), message.content_type.as_str()), ("payment.processed", PROTOBUF));
        assert_eq!(message.event_id, event_id);
        assert_eq!(message.headers[correlation::HEADER], "corr-1");
        assert!(message.headers.contains_key(tracecontext::HEADER));
        let untraced = OutboxMessage::reply(&Addressed { traceparent: None, ..to }, event_id, ("k", "t"), Vec::new());
        assert!(!untraced.headers.contains_key(tracecontext::HEADER));
    }
}
