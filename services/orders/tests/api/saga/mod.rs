//! The order saga end to end: the app in-process with its relay, reply
//! consumer and timers; the test plays Payments and Inventory, reading the
//! commands from a queue of its own and publishing replies, all on an
//! exchange of the test's own (`ORDERS_EXCHANGE`), so no other test's
//! services see them.

mod flows;
mod timeouts;

use std::time::Duration;

use contracts::{
    Routed,
    orders::v1::{CreateOrderRequest, GetOrderRequest, Order, OrderLine},
};
use futures::StreamExt;
use inbox::Topology;
use lapin::{
    ExchangeKind,
    message::Delivery,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use orders::config::SagaConfig;
use secrecy::SecretString;
use sqlx::PgPool;
use testkit::consumer::{Broker, Sweep, relay_properties};
use uuid::Uuid;

use crate::helpers::{Options, TestApp, order, spawn_app};

/// The commands and outcomes the saga sends, which the test watches.
const WATCHED: &[&str] =
    &["payment.process", "payment.refund", "inventory.reserve", "inventory.release", "order.completed", "order.failed"];

/// The app, a queue of what it sends and a channel to reply on.
pub(crate) struct Saga {
    pub(crate) app: TestApp,
    pub(crate) topology: Topology,
    pub(crate) broker: Broker,
    _sweep: Sweep,
    sent: lapin::Consumer,
    /// Deliveries about other orders than the one waited for, kept for later.
    stash: Vec<Delivery>,
    /// The message ids already handed out: the relay publishes at least
    /// once, and a copy of one (two relays around a hand-over) is skipped, as
    /// a consumer's inbox would.
    seen: std::collections::HashSet<String>,
    _amqp: lapin::Connection,
}

/// Timers of a test: a long step timeout unless the test is about timeouts.
/// The exchange and queues are the test's own.
pub(crate) fn timers(step_timeout_ms: u64, resend_ms: u64) -> SagaConfig {
    let mut saga = SagaConfig::new(SecretString::from(testkit::amqp_url()), &testkit::unique("test.saga"));
    saga.inbox.exchange = testkit::unique("test.saga.events");
    saga.step_timeout = Duration::from_millis(step_timeout_ms);
    saga.resend_every = Duration::from_millis(resend_ms);
    saga.timer_interval = Duration::from_millis(50);
    saga.inbox.retry_delays = vec![Duration::from_millis(100)];
    saga.inbox.max_attempts = 2;
    saga
}

impl Saga {
    pub(crate) async fn start(pool: &PgPool, saga: SagaConfig) -> Self {
        let topology = saga.inbox.topology();
        let amqp = testkit::amqp_connection().await;
        let sent = watch(&amqp, &topology.exchange).await;
        let app = spawn_app(pool, Options { relay: true, saga: Some(saga), ..Options::default() }).await;
        let broker = Broker::connect(Duration::from_secs(10)).await;
        // Replies published before the consumer subscribed still reach its queue.
        broker.declare(&topology).await;
        let _sweep = Sweep(topology.clone());
        Self { app, topology, broker, _sweep, sent, stash: Vec::new(), seen: Default::default(), _amqp: amqp }
    }

    pub(crate) async fn create(&mut self, lines: &[(&str, u32)]) -> Order {
        let request = CreateOrderRequest {
            lines: lines.iter().map(|(sku, quantity)| OrderLine { sku: (*sku).into(), quantity: *quantity }).collect(),
            ..order("c-saga", "25.00", "EUR")
        };
        self.app.client.create_order(request).await.unwrap().into_inner().order.unwrap()
    }

    pub(crate) async fn get(&mut self, order_id: &str) -> Order {
        let request = GetOrderRequest { order_id: order_id.into() };
        self.app.client.get_order(request).await.unwrap().into_inner().order.unwrap()
    }

    /// The next message about `order_id` the saga sent, within `within`.
    pub(crate) async fn next_sent(&mut self, order_id: &str, within: Duration) -> Option<Delivery> {
        let about = |delivery: &Delivery| {
            inbox::headers::text(delivery.properties.headers().as_ref(), "x-aggregate-id").as_deref() == Some(order_id)
        };
        let id = |delivery: &Delivery| delivery.properties.message_id().as_ref().map(|id| id.to_string());
        while let Some(at) = self.stash.iter().position(about) {
            let delivery = self.stash.remove(at);
            if self.seen.insert(id(&delivery).unwrap_or_default()) {
                return Some(delivery);
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let delivery = match tokio::time::timeout_at(deadline, self.sent.next()).await {
                Ok(Some(Ok(delivery))) => delivery,
                Ok(Some(Err(err))) => panic!("consumer failed: {err}"),
                Ok(None) | Err(_) => return None,
            };
            if !about(&delivery) {
                self.stash.push(delivery);
            } else if self.seen.insert(id(&delivery).unwrap_or_default()) {
                return Some(delivery);
            }
        }
    }

    /// The routing keys of what the saga sent about `order_id`, waiting for `n` (10 s at most).
    pub(crate) async fn sent_keys(&mut self, order_id: &str, n: usize) -> Vec<String> {
        let mut keys = Vec::new();
        while keys.len() < n {
            let Some(delivery) = self.next_sent(order_id, Duration::from_secs(10)).await else { break };
            keys.push(delivery.routing_key.to_string());
        }
        keys
    }

    /// Publishes a reply as a participant's relay would, under `event_id`.
    pub(crate) async fn reply<M: Routed>(&self, event_id: Uuid, reply: &M) {
        let properties = relay_properties(Some(&event_id.to_string()), Some(M::MESSAGE_TYPE), "corr-saga");
        self.broker.publish_to(&self.topology.exchange, M::ROUTING_KEY, properties, &reply.encode_to_vec()).await;
    }

    pub(crate) async fn stop(self) {
        self.app.stop().await;
        self.broker.delete(&self.topology).await;
    }
}

/// An exclusive queue bound to every key of [`WATCHED`] on `exchange` (declared here first).
async fn watch(amqp: &lapin::Connection, exchange: &str) -> lapin::Consumer {
    let channel = amqp.create_channel().await.unwrap();
    let exchange = ShortString::from(exchange);
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.clone(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare(ShortString::from(""), exclusive, FieldTable::default()).await.unwrap();
    for key in WATCHED {
        let (name, key) = (queue.name().clone(), ShortString::from(*key));
        channel
            .queue_bind(name, exchange.clone(), key, QueueBindOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    channel.basic_consume(queue.name().clone(), ShortString::from(""), no_ack, FieldTable::default()).await.unwrap()
}

/// Decodes a delivery's body as `M`, checking its AMQP type.
pub(crate) fn decoded<M: Routed>(delivery: &Delivery) -> M {
    assert_eq!(delivery.properties.kind().as_ref().map(|k| k.as_str()), Some(M::MESSAGE_TYPE));
    assert_eq!(delivery.properties.content_type().as_ref().map(|c| c.as_str()), Some("application/x-protobuf"));
    M::decode(delivery.data.as_slice()).unwrap()
}
