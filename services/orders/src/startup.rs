//! Builds the service's parts (database, gRPC API, relay, doorbell) from the
//! configuration and hands them to the kit's run loop ([`platform::run`]).

use std::net::SocketAddr;

use contracts::orders::v1::{SERVICE_NAME, order_service_server::OrderServiceServer};
use inbox::Inbox;
use infra::{lane::Lane, pg::PoolSettings};
use outbox::{OutboxWriter, Relay};
use platform::{grpc, run::Service};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use telemetry::metrics::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, Role},
    grpc::OrdersApi,
    saga::{self, ReplyHandler, SagaMetrics, Store, state::Timing},
    service::Orders,
};

/// Health name of the outbox relay: NOT_SERVING while it cannot reach the
/// broker (the API stays SERVING and keeps taking orders meanwhile).
pub const RELAY_HEALTH_NAME: &str = "pulse.orders.v1.OutboxRelay";

/// Health name that follows the saga reply consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.orders.v1.SagaConsumer";

/// The pool's connections, beside the lane's `ORDERS_DB_MAX_CONNECTIONS`:
/// migrations, the outbox doorbell, the saga's reply consumer and timer
/// sweep, the tests' own queries.
const BACKGROUND_CONNECTIONS: u32 = 8;

pub struct App {
    service: Service,
    pool: PgPool,
}

impl App {
    /// Creates and migrates the database, binds the gRPC and metrics ports.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        tracing::info!(
            database = %infra::redact::redact_url(config.database_url.expose_secret()),
            broker = %infra::redact::redact_urls(config.relay.amqp_url.expose_secret()),
            role = ?config.role,
            "starting orders"
        );
        // The pool serves migrations, the doorbell and tests; requests go
        // through the lane, which gets the configured connections.
        let background = PoolSettings { max_connections: BACKGROUND_CONNECTIONS, min_connections: 1, ..config.pool };
        let pool = crate::db::connect_and_migrate(&config.database_url, &background).await?;
        let options = platform::db::connect_options(&config.database_url)?;
        let writer = OutboxWriter::new();
        let offered: &[&str] = if config.role == Role::Relay { &[] } else { &[SERVICE_NAME] };
        let registry = Registry::new();
        telemetry::metrics::target_info(&registry, &telemetry::resource("orders"));
        let (mut router, health) = grpc::router_with_health_and_reflection(
            offered,
            &[contracts::FILE_DESCRIPTOR_SET],
            &registry,
            config.tls.as_ref(),
        )?;
        let metrics = SagaMetrics::new(&registry);
        let timing = Timing { step_timeout: config.saga.step_timeout, resend_every: config.saga.resend_every };
        let exchange = config.saga.inbox.exchange.clone();
        let store = Store::new(timing, metrics, config.relay.notify_channel.clone(), exchange);
        let mut lane = None;
        if config.role != Role::Relay {
            let opened = Lane::open(pool.connect_options().as_ref().clone(), &config.pool).await?;
            let mut orders = Orders::new(opened.clone(), writer.clone(), config.writers, &store);
            if !config.saga.enabled {
                orders = orders.without_saga();
            }
            let api = OrdersApi::new(orders);
            router =
                router.add_service(OrderServiceServer::new(api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES));
            lane = Some(opened);
        }
        let relay = (config.role != Role::Api).then(|| {
            Relay::new(options.clone(), config.relay.clone(), Some(writer.local_relay())).with_metrics(&registry)
        });

        // The saga's reply consumer and timers run beside the API, never in a relay-only replica.
        let inbox = (config.role != Role::Relay && config.saga.enabled && config.saga.consumer_enabled)
            .then(|| Inbox::new(pool.clone(), ReplyHandler::new(store.clone()), config.saga.inbox.clone()))
            .transpose()?
            .map(|inbox| inbox.with_metrics(&registry));
        let interval = config.health_interval;
        let mut service = Service::bind("orders", router, health, registry, config.grpc_addr, config.metrics_addr)
            .await?
            .grace(config.shutdown_grace)
            .ready_with_database(options, &["", SERVICE_NAME], interval, interval * 2);
        let (addr, metrics_addr) = (service.grpc_addr(), service.metrics_addr());
        tracing::info!(%addr, %metrics_addr, role = ?config.role, "orders listening");
        if let Some(channel) = config.relay.notify_channel.clone() {
            let (pool, interval) = (pool.clone(), config.doorbell_interval);
            service = service.task("outbox doorbell", move |stop| async move {
                let _ = writer.spawn_doorbell(pool, &channel, interval, stop).await;
            });
        }
        if let Some(inbox) = inbox {
            let (sweep_pool, interval) = (pool.clone(), config.saga.timer_interval);
            service = service
                .mirror(CONSUMER_HEALTH_NAME, inbox.connected(), |connected| *connected)
                .task("saga reply consumer", |stop| inbox.run(stop))
                .task("saga timers", move |stop| saga::timers::run(sweep_pool, store, interval, stop));
        }
        if let Some(relay) = relay {
            // The relay stops after the API: orders accepted at the last moment still get relayed.
            service = service
                .mirror(RELAY_HEALTH_NAME, relay.status(), |status| status.healthy())
                .task("outbox relay", |stop| relay.run(stop));
        }
        if let Some(lane) = lane {
            service = service.on_stopped(async move { lane.close().await });
        }
        let closing = pool.clone();
        let service = service.on_stopped(async move { closing.close().await });
        Ok(Self { service, pool })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.service.grpc_addr()
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.service.metrics_addr()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown`: then reports NOT_SERVING, waits the grace
    /// period, lets in-flight calls finish, settles the relay's batch, returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}
