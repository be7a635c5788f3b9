//! gRPC bootstrap shared by the services: health (`grpc.health.v1`) and server
//! reflection (v1 and v1alpha, for grpcurl 1.8 and later), a database-driven
//! health watcher, serving until the shutdown token fires, and a tower layer
//! recording `rpc.server.duration` per method and status code.

use std::{
    net::SocketAddr,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{
    Layer, Service,
    layer::util::{Identity, Stack},
};

use crate::metrics::{self, HistogramVec, Name, Registry};

/// The services' router: every call passes through [`RpcMetricsLayer`].
pub type GrpcRouter = Router<Stack<RpcMetricsLayer, Identity>>;

/// A tonic router already carrying health and reflection, its calls measured
/// into `registry`. Reflection lists `services` (the ones this server really
/// offers), health and reflection.
pub fn router_with_health_and_reflection(
    services: &[&str],
    registry: &Registry,
) -> anyhow::Result<(GrpcRouter, HealthReporter)> {
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
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .layer(RpcMetricsLayer::new(registry))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, reporter))
}

/// Calls one client connection may have in flight at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`). tonic leaves it unlimited: a client
/// sending faster than the database commits then parks every waiting call,
/// its request and its stream in the server's memory (orders grew from 25 to
/// 37 MiB in a few seconds at 4,500 calls a second over 16 connections). With
/// a limit the client waits for a free stream instead.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Binds `addr` (port 0 picks a free port) and returns the listener with the
/// address it got.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.map_err(|err| anyhow::anyhow!("cannot bind {addr}: {err}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight calls finish.
pub async fn serve(router: GrpcRouter, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
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

/// Records `rpc.server.duration` (seconds, as `rpc_server_duration_seconds`)
/// with `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`.
/// The duration runs until the response headers: the whole call for unary
/// RPCs. The status is the `grpc-status` of a trailers-only response (how
/// tonic answers an error) and OK otherwise, so a stream that fails after its
/// first message counts as OK.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    duration: HistogramVec,
}

impl RpcMetricsLayer {
    pub fn new(registry: &Registry) -> Self {
        let duration = metrics::histogram_vec(
            registry,
            Name { prometheus: "rpc_server_duration_seconds", otel: "rpc.server.duration", unit: "s" },
            "Duration of inbound gRPC calls",
            &["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"],
            metrics::LATENCY_BUCKETS,
        );
        Self { duration }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, duration: self.duration.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    duration: HistogramVec,
}

impl<S, B, R> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let started = Instant::now();
        let duration = self.duration.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                // UNKNOWN: the transport answers for us.
                Err(_) => 2,
            };
            duration
                .with_label_values(&["grpc", &service, &method, &code.to_string()])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// `/pkg.Service/Method` into its service and method; anything else is `unknown`
/// (keeps label values bounded).
fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/pulse.orders.v1.OrderService/CreateOrder"),
            ("pulse.orders.v1.OrderService".to_owned(), "CreateOrder".to_owned())
        );
        assert_eq!(split_path("/favicon.ico"), ("unknown".to_owned(), "unknown".to_owned()));
    }
}
