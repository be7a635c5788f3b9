//! The delivery tests' service (a short retry schedule, private networks
//! allowed), its DeliveryService client, and checks made by others' code.

use std::time::Duration;

use base64::Engine as _;
use contracts::notifications::v1::{
    CreateEndpointRequest, Delivery, DeliveryStatus, EndpointKind, ListDeliveriesRequest,
    delivery_service_client::DeliveryServiceClient,
};
use notifications::{Config, delivery::DeliveryConfig, delivery::secret::SecretKey};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::helpers::*;

/// A key for the tests' webhook secrets.
pub(crate) fn test_key() -> SecretKey {
    SecretKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([42u8; 32])).unwrap()
}

/// Attempts 200 ms and 400 ms apart (3 in all), 1 s timeout, private networks allowed.
pub(crate) fn delivery_config() -> DeliveryConfig {
    DeliveryConfig {
        enabled: true,
        secret_key: Some(test_key()),
        retry_schedule: vec![Duration::from_millis(200), Duration::from_millis(400)],
        allow_private_networks: true,
        timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(500),
        breaker_cooldown: Duration::from_millis(500),
        ..DeliveryConfig::default()
    }
}

/// The service on a fresh database with [`delivery_config`].
pub(crate) fn config(db: &sqlx::postgres::PgConnectOptions) -> Config {
    let mut config = test_config(&database_url(db), &testkit::amqp_url());
    config.delivery = delivery_config();
    config
}

/// A running service, its broker, and its exchange.
pub(crate) struct Setup {
    pub(crate) app: TestApp,
    /// The service's database.
    pub(crate) pool: sqlx::PgPool,
    pub(crate) broker: Broker,
    pub(crate) exchange: String,
    _cleanup: testkit::consumer::Cleanup,
}

pub(crate) async fn start(config: Config, db: &sqlx::postgres::PgConnectOptions) -> Setup {
    let topology = config.inbox.topology();
    let cleanup = testkit::consumer::Cleanup(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    Setup { app, pool: pool(db).await, broker, exchange: topology.exchange.clone(), _cleanup: cleanup }
}

impl Setup {
    pub(crate) async fn client(&self) -> DeliveryServiceClient<Channel> {
        DeliveryServiceClient::connect(format!("http://{}", self.app.addr)).await.expect("connect to the service")
    }

    /// A webhook endpoint for `url`; its id and secret.
    pub(crate) async fn webhook(&self, url: &str, event_types: &[&str]) -> (String, String) {
        let request = CreateEndpointRequest {
            kind: EndpointKind::Webhook as i32,
            url: url.to_owned(),
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            description: "test receiver".into(),
            ..Default::default()
        };
        let created = self.client().await.create_endpoint(request).await.expect("create the endpoint").into_inner();
        (created.endpoint.unwrap().endpoint_id, created.secret)
    }

    pub(crate) async fn email(&self, address: &str) -> String {
        let request = CreateEndpointRequest {
            kind: EndpointKind::Email as i32,
            email_address: address.to_owned(),
            ..Default::default()
        };
        self.client()
            .await
            .create_endpoint(request)
            .await
            .expect("create the endpoint")
            .into_inner()
            .endpoint
            .unwrap()
            .endpoint_id
    }

    /// Publishes a new OrderCreated; its order id and correlation id.
    pub(crate) async fn order(&self) -> (String, String) {
        let correlation = format!("corr-{}", Uuid::new_v4());
        let (event_id, event) = order_created(&correlation);
        self.broker.publish(&self.exchange, event_id, &event).await;
        (event.order_id, correlation)
    }

    pub(crate) async fn deliveries_of_order(&self, order_id: &str) -> Vec<Delivery> {
        let request = ListDeliveriesRequest { order_id: order_id.to_owned(), ..Default::default() };
        self.client().await.list_deliveries(request).await.expect("list deliveries").into_inner().deliveries
    }

    pub(crate) async fn deliveries_of_endpoint(&self, endpoint_id: &str) -> Vec<Delivery> {
        let request = ListDeliveriesRequest { endpoint_id: endpoint_id.to_owned(), ..Default::default() };
        self.client().await.list_deliveries(request).await.expect("list deliveries").into_inner().deliveries
    }

    /// Waits for the order's one delivery to reach `status`.
    pub(crate) async fn settled(&self, order_id: &str, status: DeliveryStatus) -> Delivery {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let deliveries = self.deliveries_of_order(order_id).await;
            if deliveries.len() == 1 && deliveries[0].status == status as i32 {
                return deliveries.into_iter().next().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the delivery of order {order_id} did not become {status:?}: {deliveries:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks a received webhook with the `standardwebhooks` package (PyPI) and
/// `secret`: true when it verifies.
pub(crate) fn verifies(secret: &str, received: &testkit::receiver::Received) -> bool {
    const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, headers = sys.argv[1], json.loads(sys.argv[2])
body = sys.stdin.buffer.read().decode()
try:
    Webhook(secret).verify(body, headers)
    print("valid")
except Exception as err:
    print("invalid:", err)
"#;
    let headers = serde_json::json!({
        "webhook-id": received.header("webhook-id"),
        "webhook-timestamp": received.header("webhook-timestamp"),
        "webhook-signature": received.header("webhook-signature"),
    });
    let mut child = std::process::Command::new(testkit::smtp::python())
        .args(["-c", VERIFY, secret, &headers.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&received.body).unwrap();
    let output = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "python failed: {answer}");
    answer.trim() == "valid"
}

/// The attempts recorded for a delivery: (attempt, status code, error), in order.
pub(crate) async fn attempts(pool: &sqlx::PgPool, delivery_id: &str) -> Vec<(i32, Option<i32>, String)> {
    sqlx::query_as("SELECT attempt, status_code, error FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt")
        .bind(Uuid::parse_str(delivery_id).unwrap())
        .fetch_all(pool)
        .await
        .unwrap()
}
