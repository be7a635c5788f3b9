//! Wiring: the service's parts (database, gRPC API and dead-letter console,
//! command consumer, outbox relay) built from the configuration and handed to
//! the kit's run loop ([`platform::run`]), which serves them and stops them in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use contracts::payments::v1::{SERVICE_NAME, payment_service_server::PaymentServiceServer};
use inbox::{
    Inbox, InboxStats,
    admin::{self, DeadLetterConsole},
};
use outbox::Relay;
use platform::{grpc::set_status, run::Service};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use telemetry::metrics::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{config::Config, grpc::PaymentApi, handler::CommandHandler};

/// Health name that follows the command consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.payments.v1.Consumer";

/// Health name of the outbox relay: NOT_SERVING while it cannot reach the broker.
pub const RELAY_HEALTH_NAME: &str = "pulse.payments.v1.OutboxRelay";

/// A built service: database migrated, ports bound, nothing running yet.
pub struct App {
    service: Service,
    pool: PgPool,
    consumer_connected: watch::Receiver<bool>,
    stats: Arc<InboxStats>,
}

/// Creates the database if needed, applies the migrations, binds the gRPC
/// and metrics ports, and prepares the consumer and the relay.
pub async fn build(config: Config) -> anyhow::Result<App> {
    tracing::info!(
        database = %infra::redact::redact_urls(config.database_url.expose_secret()),
        broker = %infra::redact::redact_url(config.inbox.amqp_url.expose_secret()),
        queue = %config.inbox.queue,
        "starting payments"
    );
    let pool = crate::db::connect_and_migrate(&config.database_url, &config.pool).await?;
    let db_options = platform::db::connect_options(&config.database_url)?;
    let registry = Registry::new();
    telemetry::metrics::target_info(&registry, &telemetry::resource("payments"));

    let handler = CommandHandler::new(
        config.inbox.exchange.clone(),
        config.default_credit,
        config.relay.notify_channel.clone(),
        &registry,
    );
    let inbox = Inbox::new(pool.clone(), handler, config.inbox.clone())?.with_metrics(&registry);
    let (consumer_connected, stats) = (inbox.connected(), inbox.stats());
    let relay = Relay::new(db_options.clone(), config.relay.clone(), None).with_metrics(&registry);

    if config.admin_token.is_none() && config.admin_client_names.is_empty() {
        tracing::warn!("no PAYMENTS_ADMIN_TOKEN_FILE: the dead-letter console refuses every call");
    }
    let admin_auth =
        admin::BearerAuth::new(config.admin_token.clone()).with_client_names(config.admin_client_names.clone());
    let (router, reporter) = platform::grpc::router_with_health_and_reflection(
        &[SERVICE_NAME, admin::v1::SERVICE_NAME],
        &[contracts::FILE_DESCRIPTOR_SET, admin::FILE_DESCRIPTOR_SET],
        &registry,
        config.tls.as_ref(),
    )?;
    let router = router
        .add_service(
            PaymentServiceServer::new(PaymentApi::new(pool.clone(), config.default_credit))
                .max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(
            DeadLetterConsole::<CommandHandler>::new(pool.clone(), &config.inbox).into_service_with(admin_auth),
        );
    // NOT_SERVING until the watchers have seen the database and the broker.
    set_status(&reporter, &["", SERVICE_NAME, CONSUMER_HEALTH_NAME, RELAY_HEALTH_NAME], ServingStatus::NotServing)
        .await;

    let service = Service::bind("payments", router, reporter, registry, config.grpc_addr, config.metrics_addr)
        .await?
        .ready_with_database(db_options, &["", SERVICE_NAME], config.health_interval, Duration::from_secs(2))
        .mirror(CONSUMER_HEALTH_NAME, consumer_connected.clone(), |connected| *connected)
        .mirror(RELAY_HEALTH_NAME, relay.status(), |status| status.healthy())
        .task("inbox consumer", |stop| inbox.run(stop))
        // A reply committed as the relay stops stays in the outbox, relayed at the next start.
        .task("outbox relay", |stop| relay.run(stop));
    tracing::info!(addr = %service.grpc_addr(), metrics_addr = %service.metrics_addr(), "payments listening");
    let closing = pool.clone();
    let service = service.on_stopped(async move { closing.close().await });
    Ok(App { service, pool, consumer_connected, stats })
}

impl App {
    /// The bound address (the real port when the configuration said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.service.grpc_addr()
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.service.metrics_addr()
    }

    /// The service's pool (for tests' own queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// True while the consumer is connected to the broker and subscribed.
    pub fn consumer_connected(&self) -> watch::Receiver<bool> {
        self.consumer_connected.clone()
    }

    /// What the consumer has done so far.
    pub fn consumer_stats(&self) -> Arc<InboxStats> {
        Arc::clone(&self.stats)
    }

    /// Serves, consumes and relays until `shutdown` fires, then: health
    /// NOT_SERVING, in-flight calls finished, the consumer's batch in hand
    /// committed, the relay's batches settled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}
