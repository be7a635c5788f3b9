//! Talking to the real broker from tests: publishing like the outbox does,
//! looking into queues, and cleaning up.

use inbox::Topology;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    message::BasicGetMessage,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use prost::Message;
use uuid::Uuid;

use crate::support::{ROUTING_KEY, TYPE, Thing, eventually};

/// A confirm-mode channel on the real broker for tests to publish and inspect with.
pub(crate) struct Broker {
    _connection: Connection,
    pub(crate) channel: Channel,
}

impl Broker {
    pub(crate) async fn connect() -> Self {
        let connection = testkit::amqp_connection().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Self { _connection: connection, channel }
    }

    /// Declares the topology so messages published before the consumer starts are kept.
    pub(crate) async fn declare(&self, topology: &Topology) {
        topology.declare(&self.channel).await.unwrap();
    }

    pub(crate) async fn publish_raw(&self, exchange: &str, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(ROUTING_KEY),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                properties,
            )
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack(None), "broker takes and routes the message");
    }

    /// Publishes `thing` as event `id` the way the outbox does.
    pub(crate) async fn publish(&self, exchange: &str, id: Uuid, thing: &Thing) {
        self.publish_raw(exchange, properties(Some(&id.to_string()), Some(TYPE)), &thing.encode_to_vec()).await;
    }

    pub(crate) async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Takes one message off `queue`, acknowledging it.
    pub(crate) async fn take(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }).await.unwrap()
    }

    /// Waits until `queue` holds `n` ready messages, then takes them all.
    pub(crate) async fn take_n(&self, queue: &str, n: u32) -> Vec<BasicGetMessage> {
        eventually(|| async { self.ready(queue).await >= n }).await;
        let mut taken = Vec::new();
        while let Some(message) = self.take(queue).await {
            taken.push(message);
        }
        assert_eq!(taken.len(), n as usize, "exactly {n} messages in {queue}");
        taken
    }

    /// Removes everything the test declared.
    pub(crate) async fn delete(&self, topology: &Topology) {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let queues = topology
            .retries
            .iter()
            .map(|(_, q)| q.clone())
            .chain([topology.main.clone(), topology.dead_letter.clone()]);
        for queue in queues {
            let _ = self.channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()).await;
        }
        let _ = self
            .channel
            .exchange_delete(ShortString::from(topology.exchange.as_str()), ExchangeDeleteOptions::default())
            .await;
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

/// Deletes a test's exchange and queues if the test panics before doing so itself.
pub(crate) struct Sweep(pub(crate) Topology);

impl Drop for Sweep {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let topology = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { Broker::connect().await.delete(&topology).await });
        })
        .join();
    }
}

pub(crate) fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    inbox::headers::text(message.delivery.properties.headers().as_ref(), name)
}

pub(crate) fn attempt_header(message: &BasicGetMessage) -> u32 {
    inbox::headers::attempts_made(message.delivery.properties.headers().as_ref())
}

/// The broker's address, for a fault proxy to stand in front of.
pub(crate) async fn broker_addr() -> std::net::SocketAddr {
    let url = testkit::amqp_url();
    let rest = url.split_once("://").expect("url has a scheme").1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, after)| after).split('/').next().unwrap().to_owned();
    let mut addrs = tokio::net::lookup_host(host_port).await.expect("broker host resolves");
    addrs.find(std::net::SocketAddr::is_ipv4).expect("an IPv4 address for the broker")
}
