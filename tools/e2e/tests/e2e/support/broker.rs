//! The test's vhost as a publisher or an operator sees it: publish by hand,
//! count and take what a queue holds.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::scratch::Scratch;

/// The exchange and routing key every OrderCreated travels on (pinned).
pub(crate) const EXCHANGE: &str = "pulse.events";
pub(crate) const ROUTING_KEY: &str = "order.created";
/// The notifications consumer's queues with the default prefix `pulse`: see
/// `notifications::queue_name` and `inbox::Topology` (`<main>.dlq`).
pub(crate) const MAIN_QUEUE: &str = "pulse.notifications.order-created";
pub(crate) const DEAD_LETTER_QUEUE: &str = "pulse.notifications.order-created.dlq";

/// A confirm-mode channel on the test's vhost.
pub(crate) struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    pub(crate) async fn connect(scratch: &Scratch) -> Self {
        let connection = scratch.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        Self { _connection: connection, channel }
    }

    /// Publishes to `pulse.events` / `order.created` (mandatory) and waits for the broker's ack.
    pub(crate) async fn publish(&self, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(EXCHANGE),
                ShortString::from(ROUTING_KEY),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                properties,
            )
            .await
            .expect("publish");
        assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None), "the broker routed the message");
    }

    /// Messages ready in `queue` (not counting those a consumer holds).
    pub(crate) async fn ready(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(ShortString::from(queue), passive, FieldTable::default())
            .await
            .unwrap_or_else(|err| panic!("queue {queue}: {err}"))
            .message_count()
    }

    /// Takes (and acks) every message ready in `queue`.
    pub(crate) async fn take_all(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut taken = Vec::new();
        while let Some(message) =
            self.channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }).await.expect("get")
        {
            taken.push(message);
        }
        taken
    }
}

/// A text header of a delivery, if present.
pub(crate) fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Message properties as the pinned contract has them (persistent, protobuf),
/// with the given message id, type and correlation header.
pub(crate) fn properties(message_id: &str, kind: &str, correlation_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-correlation-id"), AMQPValue::LongString(correlation_id.as_bytes().into()));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/x-protobuf"))
        .with_message_id(ShortString::from(message_id))
        .with_type(ShortString::from(kind))
        .with_app_id(ShortString::from("pulse-e2e"))
        .with_headers(headers)
}
