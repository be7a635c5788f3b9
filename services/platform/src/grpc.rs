//! gRPC bootstrap shared by the services: health (`grpc.health.v1`) and server
//! reflection (v1 and v1alpha, for grpcurl 1.8 and later), a database-driven
//! health watcher, and serving until the shutdown token fires.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::{ServingStatus, server::HealthReporter};

/// A tonic router already carrying health and reflection. Reflection lists
/// `services` (the ones this server really offers), health and reflection.
pub fn router_with_health_and_reflection(services: &[&str]) -> anyhow::Result<(Router, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(contracts::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    let reflection_v1 = configure().with_service_name("grpc.reflection.v1.ServerReflection").build_v1()?;
    let reflection_v1alpha =
        configure().with_service_name("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, reporter))
}

/// Binds `addr` (port 0 picks a free port) and returns the listener with the
/// address it got.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.map_err(|err| anyhow::anyhow!("cannot bind {addr}: {err}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight calls finish.
pub async fn serve(router: Router, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Small unary responses go out in several writes: without TCP_NODELAY,
    // Nagle's algorithm holds the last one back until the client's ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// Sets every name in `names` to `status`.
pub async fn set_status(reporter: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// Keeps `names` SERVING while the database answers `SELECT 1` on a connection
/// of its own (so a saturated pool cannot fail the probe), NOT_SERVING within
/// `interval + timeout` of losing it, and NOT_SERVING for good once `shutdown` fires.
pub async fn watch_database(
    options: PgConnectOptions,
    reporter: HealthReporter,
    names: Vec<&'static str>,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut conn: Option<PgConnection> = None;
    let mut last: Option<ServingStatus> = None;
    loop {
        let ok = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&options).await?);
            }
            let c = conn.as_mut().expect("connected above");
            sqlx::query("SELECT 1").execute(c).await.map(|_| ())
        })
        .await;
        let status = match ok {
            Ok(Ok(())) => ServingStatus::Serving,
            _ => {
                conn = None;
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            match status {
                ServingStatus::Serving => tracing::info!("database reachable, health SERVING"),
                _ => tracing::warn!("database unreachable, health NOT_SERVING"),
            }
            last = Some(status);
        }
        if !shutdown.is_cancelled() {
            set_status(&reporter, &names, status).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    set_status(&reporter, &names, ServingStatus::NotServing).await;
}

/// The database URL as a secret, for callers that build their own options.
pub fn options_from(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    crate::db::connect_options(url)
}

/// Asks the gRPC health service at `addr` about `service`; true when SERVING.
/// Backs the binaries' `healthcheck` subcommand (distroless images have no shell).
pub async fn probe(addr: SocketAddr, service: &str) -> anyhow::Result<bool> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Status, health_client::HealthClient,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let mut client = HealthClient::new(endpoint.connect().await?);
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(response.into_inner().status == Status::Serving as i32)
}
