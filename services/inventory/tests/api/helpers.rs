//! Spawning the service in-process against a fresh database and an isolated
//! exchange and queue set, publishing commands the way Orders will, and
//! reading the replies the relay publishes.

use std::time::Duration;

use contracts::{
    Routed,
    inventory::v1::{
        GetStockRequest, InventoryReleased, InventoryReservationFailed, InventoryReserved, ReleaseInventory,
        ReservationLine, ReserveInventory, SetStockRequest, Stock, inventory_service_client::InventoryServiceClient,
    },
};
use futures::StreamExt;
use inbox::Topology;
use inventory::Config;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use prost::Message;
use sqlx::{PgPool, postgres::PgConnectOptions};
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

pub(crate) use testkit::consumer::{Sweep, header};

pub(crate) use testkit::service::{database_url, pool};

pub(crate) const WAIT: Duration = Duration::from_secs(25);

/// Port 0, an isolated exchange and queue, short retry tiers (200 ms, 400 ms;
/// 3 attempts), a relay that polls every 200 ms.
pub(crate) fn test_config(db: &PgConnectOptions) -> Config {
    let (inbox, relay) = testkit::service::consumer_and_relay("inventory", inventory::config::routing_keys());
    Config {
        server: testkit::service::server_config(&database_url(db), Duration::from_millis(2000)),
        inbox,
        relay,
        admin_token_file: None,
    }
}

/// The service, running in the background: its addresses, consumer stats
/// and connection flag are [`testkit::service::Running`]'s.
pub(crate) struct TestApp(testkit::service::Running);

impl std::ops::Deref for TestApp {
    type Target = testkit::service::Running;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Builds and starts the service, and waits until its consumer is subscribed.
pub(crate) async fn spawn_app(config: Config) -> TestApp {
    let mut app = TestApp(testkit::service::Running::spawn(inventory::build(config)).await);
    assert!(app.0.wait_connected(true, WAIT).await, "the consumer connects");
    app
}

impl TestApp {
    pub(crate) async fn client(&self) -> InventoryServiceClient<GrpcChannel> {
        InventoryServiceClient::connect(format!("http://{}", self.addr)).await.expect("connect to the service")
    }

    pub(crate) async fn set_stock(&self, sku: &str, on_hand: u32) -> Result<Stock, tonic::Status> {
        let request = SetStockRequest { sku: sku.to_owned(), on_hand };
        Ok(self.client().await.set_stock(request).await?.into_inner().stock.expect("a stock"))
    }

    /// `(on_hand, reserved, available)` of `sku`.
    pub(crate) async fn stock(&self, sku: &str) -> (u32, u32, u32) {
        let request = GetStockRequest { sku: sku.to_owned() };
        let stock = self.client().await.get_stock(request).await.unwrap().into_inner().stock.unwrap();
        (stock.on_hand, stock.reserved, stock.available)
    }

    /// Fires the shutdown token and waits for a clean exit.
    pub(crate) async fn stop(self) {
        self.0.stop(WAIT).await;
    }
}

pub(crate) fn line(sku: &str, quantity: u32) -> ReservationLine {
    ReservationLine { sku: sku.to_owned(), quantity }
}

pub(crate) fn reserve(order_id: Uuid, lines: Vec<ReservationLine>, correlation_id: &str) -> ReserveInventory {
    ReserveInventory {
        event_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        lines,
        occurred_at: None,
        correlation_id: correlation_id.to_owned(),
    }
}

pub(crate) fn release(order_id: Uuid, correlation_id: &str) -> ReleaseInventory {
    ReleaseInventory {
        event_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        occurred_at: None,
        correlation_id: correlation_id.to_owned(),
    }
}

/// A reply the relay published, decoded by its routing key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Reserved(InventoryReserved),
    Failed(InventoryReservationFailed),
    Released(InventoryReleased),
}

impl Reply {
    pub(crate) fn order_id(&self) -> &str {
        match self {
            Self::Reserved(r) => &r.order_id,
            Self::Failed(r) => &r.order_id,
            Self::Released(r) => &r.order_id,
        }
    }
}

/// A delivered reply: what it says, its AMQP `type` and `message_id`, its `x-correlation-id` header.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) reply: Reply,
    pub(crate) message_type: String,
    pub(crate) message_id: String,
    pub(crate) correlation_header: Option<String>,
}

/// The test's broker: publishes commands to the test exchange and listens on
/// a queue of its own bound to the three reply keys.
pub(crate) struct Broker {
    inner: testkit::consumer::Broker,
    exchange: String,
    replies: lapin::Consumer,
    _connection: lapin::Connection,
}

impl std::ops::Deref for Broker {
    type Target = testkit::consumer::Broker;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Broker {
    /// Declares `topology` (so commands published before the consumer are kept) and the replies queue.
    pub(crate) async fn connect(topology: &Topology) -> Self {
        let inner = testkit::consumer::Broker::connect(WAIT).await;
        inner.declare(topology).await;
        let connection = testkit::amqp_connection().await;
        let channel = connection.create_channel().await.unwrap();
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare(ShortString::from(""), exclusive, FieldTable::default()).await.unwrap();
        let keys =
            [InventoryReserved::ROUTING_KEY, InventoryReservationFailed::ROUTING_KEY, InventoryReleased::ROUTING_KEY];
        for key in keys {
            let (exchange, key) = (ShortString::from(topology.exchange.as_str()), ShortString::from(key));
            channel
                .queue_bind(queue.name().clone(), exchange, key, QueueBindOptions::default(), FieldTable::default())
                .await
                .unwrap();
        }
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let replies = channel
            .basic_consume(queue.name().clone(), ShortString::from(""), no_ack, FieldTable::default())
            .await
            .unwrap();
        Self { inner, exchange: topology.exchange.clone(), replies, _connection: connection }
    }

    /// Publishes a command as the orchestrator's relay would.
    pub(crate) async fn send<M: Routed>(&self, event_id: &str, correlation_id: &str, command: &M) {
        let properties = testkit::consumer::relay_properties(Some(event_id), Some(M::MESSAGE_TYPE), correlation_id);
        self.inner.publish_to(&self.exchange, M::ROUTING_KEY, properties, &command.encode_to_vec()).await;
    }

    pub(crate) async fn reserve(&self, command: &ReserveInventory) {
        self.send(&command.event_id, &command.correlation_id, command).await;
    }

    pub(crate) async fn release(&self, command: &ReleaseInventory) {
        self.send(&command.event_id, &command.correlation_id, command).await;
    }

    /// The next reply, failing the test after `within`.
    pub(crate) async fn next_reply(&mut self, within: Duration) -> Option<Delivered> {
        let delivery = match tokio::time::timeout(within, self.replies.next()).await {
            Ok(Some(delivery)) => delivery.expect("a delivery"),
            Ok(None) | Err(_) => return None,
        };
        let properties = &delivery.properties;
        let text = |value: Option<&ShortString>| value.map(|v| v.as_str().to_owned()).unwrap_or_default();
        let body = delivery.data.as_slice();
        let reply = match delivery.routing_key.as_str() {
            "inventory.reserved" => Reply::Reserved(InventoryReserved::decode(body).unwrap()),
            "inventory.reservation_failed" => Reply::Failed(InventoryReservationFailed::decode(body).unwrap()),
            "inventory.released" => Reply::Released(InventoryReleased::decode(body).unwrap()),
            other => panic!("unexpected routing key {other}"),
        };
        Some(Delivered {
            reply,
            message_type: text(properties.kind().as_ref()),
            message_id: text(properties.message_id().as_ref()),
            correlation_header: inbox::headers::text(properties.headers().as_ref(), "x-correlation-id"),
        })
    }

    /// The next reply, which must come within [`WAIT`].
    pub(crate) async fn reply(&mut self) -> Delivered {
        self.next_reply(WAIT).await.expect("a reply within the wait")
    }

    /// Fails the test if another reply arrives within `quiet`.
    pub(crate) async fn no_more_replies(&mut self, quiet: Duration) {
        if let Some(extra) = self.next_reply(quiet).await {
            panic!("an unexpected reply: {extra:?}");
        }
    }
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}
