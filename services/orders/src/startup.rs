//! Builds the service (database, gRPC server, relay, metrics endpoint and
//! OTLP metrics push) and runs it until the shutdown token fires.

use std::net::SocketAddr;

use contracts::orders::v1::{SERVICE_NAME, order_service_server::OrderServiceServer};
use infra::{lane::Lane, pg::PoolSettings};
use outbox::{OutboxWriter, Relay};
use platform::grpc::{self, GrpcRouter, set_status};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use telemetry::metrics::{OtlpExport, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::{Config, Role},
    grpc::OrdersApi,
    service::Orders,
};

/// Health name of the outbox relay: NOT_SERVING while it cannot reach the
/// broker (the API stays SERVING and keeps taking orders meanwhile).
pub const RELAY_HEALTH_NAME: &str = "pulse.orders.v1.OutboxRelay";

/// The pool's connections, beside the lane's `ORDERS_DB_MAX_CONNECTIONS`:
/// migrations, the outbox doorbell, the tests' own queries.
const BACKGROUND_CONNECTIONS: u32 = 4;

pub struct App {
    config: Config,
    addr: SocketAddr,
    listener: TcpListener,
    router: GrpcRouter,
    health: HealthReporter,
    pool: PgPool,
    /// Connections for the RPCs (none in the relay role).
    lane: Option<Lane>,
    writer: OutboxWriter,
    registry: Registry,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    metrics_export: Option<OtlpExport>,
}

impl App {
    /// Creates and migrates the database, binds the gRPC port. Metrics are
    /// pushed over OTLP as the standard `OTEL_*` variables say (see
    /// [`OtlpExport::from_env`]; [`Self::with_metrics_export`] overrides them).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics_export = OtlpExport::from_env("orders", env!("CARGO_PKG_VERSION"))?;
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
        let writer = OutboxWriter::new();
        let offered: &[&str] = if config.role == Role::Relay { &[] } else { &[SERVICE_NAME] };
        let registry = Registry::new();
        let (mut router, health) = grpc::router_with_health_and_reflection(
            offered,
            &[contracts::FILE_DESCRIPTOR_SET],
            &registry,
            config.tls.as_ref(),
        )?;
        // SERVING until the process exits, through database outages and shutdown alike.
        health.set_service_status(grpc::LIVENESS, ServingStatus::Serving).await;
        let mut lane = None;
        if config.role != Role::Relay {
            let opened = Lane::open(pool.connect_options().as_ref().clone(), &config.pool).await?;
            let api = OrdersApi::new(Orders::new(opened.clone(), writer.clone(), config.writers));
            router =
                router.add_service(OrderServiceServer::new(api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES));
            lane = Some(opened);
        }
        let (listener, addr) = grpc::bind(config.grpc_addr).await?;
        let (metrics_listener, metrics_addr) = telemetry::metrics::bind(config.metrics_addr).await?;
        tracing::info!(%addr, %metrics_addr, role = ?config.role, "orders listening");
        Ok(Self {
            config,
            addr,
            listener,
            router,
            health,
            pool,
            lane,
            writer,
            registry,
            metrics_listener,
            metrics_addr,
            metrics_export,
        })
    }

    /// Pushes the metrics as `export` says (None: not at all) instead of as the environment says.
    pub fn with_metrics_export(mut self, export: Option<OtlpExport>) -> Self {
        self.metrics_export = export;
        self
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown`: then reports NOT_SERVING, waits the grace
    /// period, lets in-flight calls finish, settles the relay's batch, returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            router,
            health,
            pool,
            lane,
            writer,
            registry,
            metrics_listener,
            metrics_export,
            ..
        } = self;
        let options = platform::db::connect_options(&config.database_url)?;
        let background = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        let api_names = vec!["", SERVICE_NAME];
        tasks.spawn(grpc::watch_database(
            options.clone(),
            health.clone(),
            api_names.clone(),
            config.health_interval,
            config.health_interval * 2,
            shutdown.clone(),
        ));
        if let Some(channel) = config.relay.notify_channel.as_deref() {
            writer.spawn_doorbell(pool.clone(), channel, config.doorbell_interval, background.clone());
        }

        if config.role != Role::Api {
            let relay = Relay::new(options, config.relay.clone(), Some(writer.local_relay())).with_metrics(&registry);
            let mut status = relay.status();
            let reporter = health.clone();
            let stopped = background.clone();
            tasks.spawn(async move {
                loop {
                    let serving = if status.borrow_and_update().healthy() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    reporter.set_service_status(RELAY_HEALTH_NAME, serving).await;
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        changed = status.changed() => if changed.is_err() { break },
                    }
                }
            });
            // The relay stops after the API: orders accepted at the last moment still get relayed.
            tasks.spawn(relay.run(background.clone()));
        }

        // Pushed once more after everything else has stopped, so the last values are sent.
        let export_until = CancellationToken::new();
        let exporting = metrics_export
            .map(|export| tokio::spawn(telemetry::metrics::otlp::push(registry.clone(), export, export_until.clone())));
        let serve_until = CancellationToken::new();
        // Scraped until the very end, so the last values of a stopping relay are visible.
        let metrics = tokio::spawn(telemetry::metrics::serve(metrics_listener, registry, serve_until.clone()));
        let serving = tokio::spawn(grpc::serve(router, listener, serve_until.clone()));
        shutdown.cancelled().await;
        set_status(&health, &api_names, ServingStatus::NotServing).await;
        set_status(&health, &[RELAY_HEALTH_NAME], ServingStatus::NotServing).await;
        tokio::time::sleep(config.shutdown_grace).await;
        serve_until.cancel();
        let served = serving.await;
        background.cancel();
        while tasks.join_next().await.is_some() {}
        export_until.cancel();
        if let Some(lane) = lane {
            lane.close().await;
        }
        pool.close().await;
        if let Some(exporting) = exporting {
            exporting.await?;
        }
        tracing::info!("orders stopped");
        served??;
        metrics.await??;
        Ok(())
    }
}
