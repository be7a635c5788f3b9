//! Spawning the service in-process against a fresh database and an isolated
//! exchange and queue set, publishing events the way Orders does, and waiting
//! with deadlines.

use std::{future::Future, time::Duration};

use contracts::{
    events::v1::{ORDER_CREATED_ROUTING_KEY, ORDER_CREATED_TYPE, OrderCreated},
    notifications::v1::{
        ListNotificationsRequest, Notification, notification_service_client::NotificationServiceClient,
    },
};
use lapin::BasicProperties;
use notifications::Config;
use prost::Message;
use secrecy::SecretString;
use sqlx::PgPool;
use tonic::transport::Channel as GrpcChannel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use uuid::Uuid;

pub(crate) use testkit::service::{database_url, pool};

pub(crate) const WAIT: Duration = Duration::from_secs(25);

/// Port 0, an isolated exchange and queue, short retry tiers (200 ms, 400 ms;
/// 3 attempts), no delivery dispatcher.
pub(crate) fn test_config(database_url: &str, amqp_url: &str) -> Config {
    let mut inbox = testkit::consumer::short_retry_config(amqp_url, "notifications", ORDER_CREATED_ROUTING_KEY);
    inbox.routing_keys = notifications::routing_keys();
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(database_url.to_owned()),
        pool: testkit::service::pool_settings(Duration::from_millis(1000)),
        consumer_enabled: true,
        inbox,
        health_interval: Duration::from_millis(200),
        tls: None,
        admin_token_file: None,
        admin_client_names: Vec::new(),
        // The delivery tests turn the dispatcher on (tests/api/delivery).
        delivery: notifications::delivery::DeliveryConfig { enabled: false, ..Default::default() },
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

pub(crate) async fn spawn_app(config: Config) -> TestApp {
    TestApp(testkit::service::Running::spawn(notifications::build(config)).await)
}

impl TestApp {
    pub(crate) async fn client(&self) -> NotificationServiceClient<GrpcChannel> {
        NotificationServiceClient::connect(format!("http://{}", self.addr)).await.expect("connect to the service")
    }

    pub(crate) async fn list(&self, order_id: &str) -> Result<Vec<Notification>, tonic::Status> {
        let request = ListNotificationsRequest { order_id: order_id.to_owned(), ..Default::default() };
        Ok(self.client().await.list_notifications(request).await?.into_inner().notifications)
    }

    pub(crate) async fn health(&self, service: &str) -> ServingStatus {
        let channel = GrpcChannel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        let response = HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await;
        ServingStatus::try_from(response.expect("health answers").into_inner().status).unwrap()
    }

    pub(crate) async fn wait_health(&self, service: &str, want: ServingStatus) {
        eventually(|| async move { self.health(service).await == want }).await;
    }

    pub(crate) async fn wait_connected(&mut self, up: bool) {
        // A service that already stopped counts as well.
        let _ = self.0.wait_connected(up, WAIT).await;
    }

    /// Fires the shutdown token and waits for a clean exit.
    pub(crate) async fn stop(self) {
        self.0.stop(WAIT).await;
    }
}

pub(crate) fn order_created(correlation_id: &str) -> (Uuid, OrderCreated) {
    let event_id = Uuid::new_v4();
    let event = OrderCreated {
        event_id: event_id.to_string(),
        order_id: Uuid::new_v4().to_string(),
        customer_id: "customer-1".into(),
        amount: "77.50".into(),
        currency: "EUR".into(),
        occurred_at: Some(prost_types_now()),
        correlation_id: correlation_id.to_owned(),
    };
    (event_id, event)
}

fn prost_types_now() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }
}

pub(crate) use testkit::consumer::relay_properties as properties;

/// The shared test broker, publishing with `order.created`.
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
        self.0.publish_to(exchange, ORDER_CREATED_ROUTING_KEY, properties, body).await;
    }

    pub(crate) async fn publish(&self, exchange: &str, event_id: Uuid, event: &OrderCreated) {
        let properties = properties(Some(&event_id.to_string()), Some(ORDER_CREATED_TYPE), &event.correlation_id);
        self.publish_raw(exchange, properties, &event.encode_to_vec()).await;
    }
}

pub(crate) use testkit::consumer::{Sweep, header};

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls `check` every 50 ms until it holds; fails the test after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(testkit::eventually(WAIT, check).await, "condition not met within {WAIT:?}");
}
