//! The gRPC port: binding it, serving a router on it until shutdown, and
//! asking a running server's health service (the binaries' `healthcheck`).

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::grpc::GrpcRouter;

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
