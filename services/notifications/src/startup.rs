//! Wiring: the service's parts (database, gRPC API and dead-letter console,
//! consumer) built from the configuration and handed to the kit's run loop
//! ([`platform::run`]), which serves them and stops them in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use contracts::notifications::v1::{SERVICE_NAME, notification_service_server::NotificationServiceServer};
use inbox::{
    Inbox, InboxStats,
    admin::{self, DeadLetterConsole},
};
use platform::{grpc::set_status, run::Service};
use telemetry::metrics::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    config::{Config, read_admin_token},
    grpc::NotificationApi,
    handler::OrderEventsHandler,
};

/// Health name that follows the consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.notifications.v1.Consumer";

/// A built service: database migrated, port bound, nothing running yet.
pub struct App {
    service: Service,
    consumer_connected: watch::Receiver<bool>,
    stats: Arc<InboxStats>,
}

/// Creates the database if needed, applies migrations, binds the gRPC port
/// and the metrics port, and prepares the consumer.
pub async fn build(config: Config) -> anyhow::Result<App> {
    tracing::info!(
        database = %infra::redact::redact_urls(secrecy::ExposeSecret::expose_secret(&config.database_url)),
        broker = %infra::redact::redact_url(secrecy::ExposeSecret::expose_secret(&config.inbox.amqp_url)),
        queue = %config.inbox.queue,
        consumer = config.consumer_enabled,
        "starting notifications"
    );
    let pool = crate::db::connect_and_migrate(&config.database_url, &config.pool).await?;
    let db_options = platform::db::connect_options(&config.database_url)?;
    let registry = Registry::new();
    telemetry::metrics::target_info(&registry, &telemetry::resource("notifications"));
    let (inbox, consumer_connected, stats) = if config.consumer_enabled {
        let inbox = Inbox::new(pool.clone(), OrderEventsHandler, config.inbox.clone())?.with_metrics(&registry);
        let (connected, stats) = (inbox.connected(), inbox.stats());
        (Some(inbox), connected, stats)
    } else {
        (None, watch::channel(false).1, Arc::default())
    };
    let admin_token = config.admin_token_file.as_deref().map(read_admin_token).transpose()?;
    if admin_token.is_none() && config.admin_client_names.is_empty() {
        tracing::warn!("no NOTIFICATIONS_ADMIN_TOKEN_FILE: the dead-letter console refuses every call");
    }
    if !config.admin_client_names.is_empty() && !config.tls.as_ref().is_some_and(platform::tls::ServerTls::is_mutual) {
        tracing::warn!(
            "NOTIFICATIONS_ADMIN_CLIENT_NAMES is set without mutual TLS (NOTIFICATIONS_TLS_CLIENT_CA_FILE): no client certificate is verified, so none is accepted"
        );
    }
    let admin_auth = admin::BearerAuth::new(admin_token).with_client_names(config.admin_client_names.clone());
    let (router, reporter) = platform::grpc::router_with_health_and_reflection(
        &[SERVICE_NAME, admin::v1::SERVICE_NAME],
        &[contracts::FILE_DESCRIPTOR_SET, admin::FILE_DESCRIPTOR_SET],
        &registry,
        config.tls.as_ref(),
    )?;
    let router = router
        .add_service(
            NotificationServiceServer::new(NotificationApi::new(pool.clone()))
                .max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(
            DeadLetterConsole::<OrderEventsHandler>::new(pool.clone(), &config.inbox).into_service_with(admin_auth),
        );
    // NOT_SERVING until the watchers have seen the database and the broker.
    set_status(&reporter, &["", SERVICE_NAME, CONSUMER_HEALTH_NAME], ServingStatus::NotServing).await;

    let mut service = Service::bind("notifications", router, reporter, registry, config.grpc_addr, config.metrics_addr)
        .await?
        .ready_with_database(db_options, &["", SERVICE_NAME], config.health_interval, Duration::from_secs(2))
        .mirror(CONSUMER_HEALTH_NAME, consumer_connected.clone(), |connected| *connected);
    if let Some(inbox) = inbox {
        service = service.task("inbox consumer", |stop| inbox.run(stop));
    }
    let service = service.on_stopped(async move { pool.close().await });
    Ok(App { service, consumer_connected, stats })
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

    /// True while the consumer is connected to the broker and subscribed.
    pub fn consumer_connected(&self) -> watch::Receiver<bool> {
        self.consumer_connected.clone()
    }

    /// What the consumer has done so far.
    pub fn consumer_stats(&self) -> Arc<InboxStats> {
        Arc::clone(&self.stats)
    }

    /// Serves and consumes until `shutdown` fires, then: health NOT_SERVING,
    /// in-flight calls finished, consumer stopped after its batch in hand.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}
