//! Talking to the real broker from tests: publishing like the outbox does,
//! looking into queues, and cleaning up.

use lapin::BasicProperties;
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

    /// Publishes `thing` as event `id` the way the outbox does: the id in the
    /// payload and in `message_id`.
    pub(crate) async fn publish(&self, exchange: &str, id: Uuid, thing: &Thing) {
        self.publish_as(exchange, id, id, thing).await;
    }

    /// Publishes `thing` as event `event_id` under AMQP `message_id`, which may differ.
    pub(crate) async fn publish_as(&self, exchange: &str, message_id: Uuid, event_id: Uuid, thing: &Thing) {
        let body = thing.as_event(event_id).encode_to_vec();
        self.publish_raw(exchange, properties(Some(&message_id.to_string()), Some(TYPE)), &body).await;
    }
}

/// A message as the outbox relay publishes it, `message_id` and `type` optional.
pub(crate) fn properties(id: Option<&str>, kind: Option<&str>) -> BasicProperties {
    testkit::consumer::relay_properties(id, kind, "corr-test")
}

pub(crate) use testkit::consumer::{attempt_header, header};
