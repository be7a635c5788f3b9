//! Helpers for tests of consumers built on the `inbox` crate: a confirm-mode
//! channel to publish with and look into queues, clean-up of a test's
//! topology (also when the test panics), and an inbox configuration with
//! short retry tiers.

use std::time::Duration;

use inbox::{InboxConfig, Topology};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    message::BasicGetMessage,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::SecretString;

/// An isolated exchange and queue named after `name`, with short retry tiers
/// (200 ms, 400 ms; 3 attempts) and a one-hour dedup window.
pub fn short_retry_config(amqp_url: &str, name: &str, routing_key: &str) -> InboxConfig {
    let mut config = InboxConfig::new(
        SecretString::from(amqp_url.to_owned()),
        crate::unique(&format!("test.{name}.events")),
        crate::unique(&format!("test.{name}")),
        vec![routing_key.to_owned()],
    );
    config.retry_delays = vec![Duration::from_millis(200), Duration::from_millis(400)];
    config.max_attempts = 3;
    config.dedup_window = Duration::from_secs(3600);
    config.backoff_max = Duration::from_millis(500);
    config.connection_name = format!("{name}-test");
    config
}

/// A confirm-mode channel on the real broker for tests to publish and inspect with.
pub struct Broker {
    connection: Connection,
    pub channel: Channel,
    /// How long [`Broker::take_n`] waits for messages before failing the test.
    wait: Duration,
}

impl Broker {
    pub async fn connect(wait: Duration) -> Self {
        let connection = crate::amqp_connection().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Self { connection, channel, wait }
    }

    /// Declares the topology so messages published before the consumer starts are kept.
    pub async fn declare(&self, topology: &Topology) {
        topology.declare(&self.connection).await.unwrap();
    }

    /// Publishes with `mandatory` set and fails the test unless the broker routes and confirms it.
    pub async fn publish_to(&self, exchange: &str, routing_key: &str, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                properties,
            )
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack(None), "the broker routes the message");
    }

    /// Publishes a backlog fast, for throughput runs: 1,000 messages at a time
    /// with their confirms in flight together (not `mandatory`).
    pub async fn publish_backlog(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: impl IntoIterator<Item = (BasicProperties, Vec<u8>)>,
    ) {
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let mut confirms = Vec::with_capacity(1_000);
            for (properties, body) in messages.by_ref().take(1_000) {
                let confirm = self
                    .channel
                    .basic_publish(
                        ShortString::from(exchange),
                        ShortString::from(routing_key),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .unwrap();
                confirms.push(confirm);
            }
            for confirm in futures::future::join_all(confirms).await {
                confirm.unwrap();
            }
        }
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(ShortString::from(queue), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Takes one message off `queue`, acknowledging it.
    pub async fn take(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }).await.unwrap()
    }

    /// Waits until `queue` holds `n` ready messages, then takes them all.
    pub async fn take_n(&self, queue: &str, n: u32) -> Vec<BasicGetMessage> {
        let arrived = crate::eventually(self.wait, || async { self.ready(queue).await >= n }).await;
        assert!(arrived, "{n} messages did not reach {queue} within {:?}", self.wait);
        let mut taken = Vec::new();
        while let Some(message) = self.take(queue).await {
            taken.push(message);
        }
        assert_eq!(taken.len(), n as usize, "exactly {n} messages in {queue}");
        taken
    }

    /// Removes every queue and the exchange of `topology`.
    pub async fn delete(&self, topology: &Topology) {
        self.delete_queues(topology).await;
        let exchange = ShortString::from(topology.exchange.as_str());
        let _ = self.channel.exchange_delete(exchange, ExchangeDeleteOptions::default()).await;
    }

    /// Removes every queue of `topology`, leaving its exchange (for a shared
    /// one such as `pulse.events`).
    pub async fn delete_queues(&self, topology: &Topology) {
        for queue in topology.queues() {
            let _ = self.channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()).await;
        }
    }
}

/// Properties as the Orders relay sets them; `message_id` and `type` may be
/// left out to make malformed messages.
pub fn relay_properties(message_id: Option<&str>, kind: Option<&str>, correlation_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-correlation-id"), AMQPValue::LongString(LongString::from(correlation_id)));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/x-protobuf"))
        .with_app_id(ShortString::from("orders"))
        .with_headers(headers);
    if let Some(id) = message_id {
        properties = properties.with_message_id(ShortString::from(id));
    }
    if let Some(kind) = kind {
        properties = properties.with_type(ShortString::from(kind));
    }
    properties
}

/// Deletes a test's exchange and queues if the test panics before doing so itself.
pub struct Sweep(pub Topology);

impl Drop for Sweep {
    fn drop(&mut self) {
        if std::thread::panicking() {
            delete_now(&self.0);
        }
    }
}

/// Deletes a test's exchange and queues when dropped, however the test ends:
/// for a test whose queues need not outlive it. Every quorum queue left
/// behind holds a few of the broker's file descriptors; a few hundred leaked
/// ones exhaust a broker started with the usual limit of 1,024, which then
/// stops accepting connections.
pub struct Cleanup(pub Topology);

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_now(&self.0);
    }
}

/// Deletes `topology` from a thread of its own (a `Drop` cannot await).
fn delete_now(topology: &Topology) {
    let topology = topology.clone();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async { Broker::connect(Duration::ZERO).await.delete(&topology).await });
    })
    .join();
}

/// A text header of a message taken off a queue.
pub fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    inbox::headers::text(message.delivery.properties.headers().as_ref(), name)
}

/// The `x-attempt` count of a message taken off a queue.
pub fn attempt_header(message: &BasicGetMessage) -> u32 {
    inbox::headers::attempts_made(message.delivery.properties.headers().as_ref())
}
