use std::{net::SocketAddr, time::Duration};

use contracts::orders::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use infra::pg::PoolSettings;
use orders::{
    config::{Config, Role, SagaConfig},
    startup::App,
};
use outbox::RelayConfig;
use platform::tls::ServerTls;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig};

pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    /// Where `GET /metrics` answers.
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) client: OrderServiceClient<Channel>,
    pub(crate) pool: PgPool,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// With the relay on, a queue bound to `payment.process`, so the saga's
    /// first command is routable (the relay publishes with `mandatory`)
    /// while no Payments runs.
    _commands: Option<(lapin::Connection, lapin::Consumer)>,
}

#[derive(Default)]
pub(crate) struct Options {
    /// Run the outbox relay in the app.
    pub(crate) relay: bool,
    /// Reach RabbitMQ at this URL (e.g. through a fault proxy).
    pub(crate) amqp_url: Option<String>,
    /// Reach Postgres at this address (e.g. through a fault proxy).
    pub(crate) database_addr: Option<SocketAddr>,
    /// Connections the pool keeps open while idle (1 unless given).
    pub(crate) min_connections: Option<u32>,
    /// CreateOrder writers (the default unless given).
    pub(crate) writers: Option<usize>,
    /// Serve TLS, and reach the app with this client configuration.
    pub(crate) tls: Option<(ServerTls, ClientTlsConfig)>,
    /// Run the saga's reply consumer and timers with these settings (off unless given).
    pub(crate) saga: Option<SagaConfig>,
}

/// The URL of the database `#[sqlx::test]` made for this test.
pub(crate) fn database_url(pool: &PgPool, addr: Option<SocketAddr>) -> String {
    let name = pool.connect_options().get_database().expect("test database has a name").to_owned();
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').expect("database url has a path");
    let url = format!("{server}/{name}");
    match addr {
        Some(addr) => testkit::via(&url, addr),
        None => url,
    }
}

pub(crate) async fn spawn_app(pool: &PgPool, options: Options) -> TestApp {
    telemetry::init_for_tests();
    let amqp = options.amqp_url.unwrap_or_else(testkit::amqp_url);
    let exchange = options.saga.as_ref().map_or(contracts::EVENTS_EXCHANGE.to_owned(), |s| s.inbox.exchange.clone());
    let mut relay = RelayConfig::new(SecretString::from(amqp), "pulse-orders", vec![exchange]);
    relay.poll_interval = Duration::from_millis(200);
    relay.rebalance_interval = Duration::from_millis(200);
    relay.backoff_initial = Duration::from_millis(50);
    relay.backoff_max = Duration::from_millis(500);
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(database_url(pool, options.database_addr)),
        pool: PoolSettings {
            max_connections: 10,
            min_connections: options.min_connections.unwrap_or(1),
            acquire_timeout: Duration::from_secs(2),
        },
        writers: options.writers.unwrap_or(orders::config::DEFAULT_WRITERS),
        role: if options.relay { Role::All } else { Role::Api },
        relay,
        shutdown_grace: Duration::ZERO,
        health_interval: Duration::from_secs(1),
        tls: options.tls.as_ref().map(|(server, _)| server.clone()),
        doorbell_interval: Duration::from_millis(2),
        saga: options.saga.unwrap_or_else(|| {
            let mut saga = SagaConfig::new(SecretString::from(testkit::amqp_url()), &testkit::unique("test.saga-off"));
            saga.consumer_enabled = false;
            saga
        }),
    };
    let commands = match options.relay {
        true => {
            let amqp = testkit::amqp_connection().await;
            let sink = testkit::subscribe(&amqp, contracts::EVENTS_EXCHANGE, "payment.process").await;
            Some((amqp, sink))
        }
        false => None,
    };
    let app = App::build(config).await.expect("app builds");
    let (addr, metrics_addr) = (app.grpc_addr(), app.metrics_addr());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = match options.tls {
        Some((_, client_tls)) => OrderServiceClient::new(tls_channel(addr, client_tls).await.expect("client connects")),
        None => OrderServiceClient::connect(format!("http://{addr}")).await.expect("client connects"),
    };
    TestApp { addr, metrics_addr, client, pool: pool.clone(), shutdown, handle, _commands: commands }
}

impl TestApp {
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("app task").expect("app stops cleanly");
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.pool).await.unwrap()
    }

    /// The `OrderCreated` rows in the outbox (each order also has its `ProcessPayment`).
    pub(crate) async fn events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_messages WHERE routing_key = 'order.created'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub(crate) fn order(customer: &str, amount: &str, currency: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        amount: amount.into(),
        currency: currency.into(),
        request_id: String::new(),
        lines: Vec::new(),
    }
}

/// Sends every request at once; the outcomes in request order.
pub(crate) async fn all_at_once(
    app: &TestApp,
    requests: Vec<CreateOrderRequest>,
) -> Vec<Result<String, tonic::Status>> {
    let calls = requests.into_iter().map(|request| {
        let mut client = app.client.clone();
        tokio::spawn(async move { client.create_order(request).await.map(|r| r.into_inner().order_id) })
    });
    futures::future::join_all(calls).await.into_iter().map(|joined| joined.expect("call task")).collect()
}

/// A request carrying metadata.
pub(crate) fn with_metadata<T>(body: T, pairs: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    for (key, value) in pairs {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    request
}

/// The field names of a status's `google.rpc.BadRequest` detail.
pub(crate) fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A TLS channel to `addr` (named `localhost` for the certificate check).
pub(crate) async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls.domain_name("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// The `google.rpc.ErrorInfo` reason of a status, checked to be in Pulse's domain.
pub(crate) fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, platform::errors::ERROR_DOMAIN, "{status:?}");
    info.reason
}

/// A gRPC channel to `addr`, for the health and reflection clients.
pub(crate) async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("channel connects")
}
