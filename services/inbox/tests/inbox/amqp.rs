//! Talking to the real broker from tests: publishing like the outbox does,
//! looking into queues, and cleaning up.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use prost::Message;
use uuid::Uuid;

use crate::support::{ROUTING_KEY, TYPE, Thing, WAIT};

/// The shared test broker, publishing with this suite's routing key.
pub(crate) struct Broker(testkit::consumer::Broker);

impl std::ops::Deref for Broker {
    type Target = testkit::consumer::Broker;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Broker {
    pub(crate) async fn connect() -> Self {
        Self(testkit::consumer::Broker::connect(WAIT).await)
    }

    pub(crate) async fn publish_raw(&self, exchange: &str, properties: BasicProperties, body: &[u8]) {
        self.0.publish_to(exchange, ROUTING_KEY, properties, body).await;
    }

    /// Publishes `thing` as event `id` the way the outbox does.
    pub(crate) async fn publish(&self, exchange: &str, id: Uuid, thing: &Thing) {
        self.publish_raw(exchange, properties(Some(&id.to_string()), Some(TYPE)), &thing.encode_to_vec()).await;
    }
}

pub(crate) fn properties(id: Option<&str>, kind: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-correlation-id"), AMQPValue::LongString(LongString::from("corr-test")));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/x-protobuf"))
        .with_headers(headers);
    if let Some(id) = id {
        properties = properties.with_message_id(ShortString::from(id));
    }
    if let Some(kind) = kind {
        properties = properties.with_type(ShortString::from(kind));
    }
    properties
}

pub(crate) use testkit::consumer::{attempt_header, header};
