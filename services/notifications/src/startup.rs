//! Wiring: database, consumer, gRPC server and health, metrics (scraped and
//! pushed), and the order they stop in.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use contracts::notifications::v1::{SERVICE_NAME, notification_service_server::NotificationServiceServer};
use inbox::{
    Inbox, InboxStats,
    admin::{self, DeadLetterConsole},
};
use platform::grpc::{GrpcRouter, set_status};
use sqlx::{PgPool, postgres::PgConnectOptions};
use telemetry::metrics::{OtlpExport, Registry};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::{Config, read_admin_token},
    grpc::NotificationApi,
    handler::OrderCreatedHandler,
};

/// Health name that follows the consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.notifications.v1.Consumer";

/// A built service: database migrated, port bound, nothing running yet.
pub struct App {
    grpc_addr: SocketAddr,
    listener: TcpListener,
    router: GrpcRouter,
    registry: Registry,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    metrics_export: Option<OtlpExport>,
    reporter: HealthReporter,
    pool: PgPool,
    db_options: PgConnectOptions,
    health_interval: Duration,
    inbox: Option<Inbox<OrderCreatedHandler>>,
    consumer_connected: watch::Receiver<bool>,
    stats: Arc<InboxStats>,
}

/// Creates the database if needed, applies migrations, binds the gRPC port
/// and prepares the consumer. Metrics are pushed over OTLP as the standard
/// `OTEL_*` variables say (see [`OtlpExport::from_env`];
/// [`App::with_metrics_export`] overrides them).
pub async fn build(config: Config) -> anyhow::Result<App> {
    let metrics_export = OtlpExport::from_env("notifications", env!("CARGO_PKG_VERSION"))?;
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
    let (inbox, consumer_connected, stats) = if config.consumer_enabled {
        let inbox = Inbox::new(pool.clone(), OrderCreatedHandler, config.inbox.clone())?.with_metrics(&registry);
        let (connected, stats) = (inbox.connected(), inbox.stats());
        (Some(inbox), connected, stats)
    } else {
        (None, watch::channel(false).1, Arc::default())
    };
    let admin_token = config.admin_token_file.as_deref().map(read_admin_token).transpose()?;
    if admin_token.is_none() {
        tracing::warn!("no NOTIFICATIONS_ADMIN_TOKEN_FILE: the dead-letter console refuses every call");
    }
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
            DeadLetterConsole::<OrderCreatedHandler>::new(pool.clone(), &config.inbox).into_service(admin_token),
        );
    let (listener, grpc_addr) = platform::grpc::bind(config.grpc_addr).await?;
    let (metrics_listener, metrics_addr) = telemetry::metrics::bind(config.metrics_addr).await?;
    // NOT_SERVING until the watchers have seen the database and the broker.
    set_status(&reporter, &["", SERVICE_NAME, CONSUMER_HEALTH_NAME], ServingStatus::NotServing).await;
    // SERVING until the process exits, through database and broker outages and shutdown alike.
    reporter.set_service_status(platform::grpc::LIVENESS, ServingStatus::Serving).await;
    Ok(App {
        grpc_addr,
        listener,
        router,
        registry,
        metrics_listener,
        metrics_addr,
        metrics_export,
        reporter,
        pool,
        db_options,
        health_interval: config.health_interval,
        inbox,
        consumer_connected,
        stats,
    })
}

impl App {
    /// The bound address (the real port when the configuration said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Pushes the metrics as `export` says (None: not at all) instead of as the environment says.
    pub fn with_metrics_export(mut self, export: Option<OtlpExport>) -> Self {
        self.metrics_export = export;
        self
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
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
    /// consumer stopped after its batch in hand, in-flight calls finished.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let health_stop = CancellationToken::new();
        let db_watch = tokio::spawn(platform::grpc::watch_database(
            self.db_options,
            self.reporter.clone(),
            vec!["", SERVICE_NAME],
            self.health_interval,
            Duration::from_secs(2),
            health_stop.clone(),
        ));
        let consumer_watch =
            tokio::spawn(watch_consumer(self.consumer_connected, self.reporter.clone(), health_stop.clone()));
        let consumer_stop = CancellationToken::new();
        let consumer = self.inbox.map(|inbox| tokio::spawn(inbox.run(consumer_stop.clone())));
        // Pushed once more after the consumer and the server have stopped, so the last values are sent.
        let export_stop = CancellationToken::new();
        let exporting = self.metrics_export.map(|export| {
            tokio::spawn(telemetry::metrics::otlp::push(self.registry.clone(), export, export_stop.clone()))
        });
        let server_stop = CancellationToken::new();
        let mut server = tokio::spawn(platform::grpc::serve(self.router, self.listener, server_stop.clone()));
        let metrics =
            tokio::spawn(telemetry::metrics::serve(self.metrics_listener, self.registry, server_stop.clone()));
        tracing::info!(addr = %self.grpc_addr, metrics = %self.metrics_addr, "notifications serving");

        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = &mut server => Some(ended),
        };
        let all = ["", SERVICE_NAME, CONSUMER_HEALTH_NAME];
        health_stop.cancel();
        set_status(&self.reporter, &all, ServingStatus::NotServing).await;
        consumer_stop.cancel();
        if let Some(consumer) = consumer {
            consumer.await?;
        }
        // A watcher caught mid-update could have written SERVING after us.
        let _ = tokio::join!(db_watch, consumer_watch);
        set_status(&self.reporter, &all, ServingStatus::NotServing).await;
        server_stop.cancel();
        let served = match early {
            Some(ended) => ended,
            None => server.await,
        };
        export_stop.cancel();
        self.pool.close().await;
        if let Some(exporting) = exporting {
            exporting.await?;
        }
        served??;
        metrics.await??;
        tracing::info!("notifications stopped");
        Ok(())
    }
}

/// Mirrors the consumer's connection state onto [`CONSUMER_HEALTH_NAME`].
async fn watch_consumer(mut connected: watch::Receiver<bool>, reporter: HealthReporter, stop: CancellationToken) {
    loop {
        let status = if *connected.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status(CONSUMER_HEALTH_NAME, status).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = connected.changed() => if changed.is_err() {
                // The consumer is gone (disabled or stopped): stays NOT_SERVING.
                reporter.set_service_status(CONSUMER_HEALTH_NAME, ServingStatus::NotServing).await;
                stop.cancelled().await;
                return;
            },
        }
    }
}
