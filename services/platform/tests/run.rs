//! The run loop on real sockets: health mirroring, and the order it stops in.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use platform::run::Service;
use telemetry::metrics::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const MIRRORED: &str = "pulse.test.v1.Worker";

async fn status(addr: SocketAddr, service: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
    let mut client = HealthClient::new(channel);
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await.ok()?;
    Some(response.into_inner().status)
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..50 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn mirrors_health_and_stops_the_tasks_only_after_the_server() {
    let registry = Registry::new();
    let (router, health) = platform::grpc::router_with_health_and_reflection(&[], &[], &registry, None).unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let (state, receiver) = watch::channel(false);
    // What the task saw when it was told to stop: could a client still reach the server?
    let seen: Arc<Mutex<Option<bool>>> = Arc::default();
    let service = Service::bind("test", router, health, registry, any, any).await.unwrap();
    let addr = service.grpc_addr();
    let recorded = Arc::clone(&seen);
    let service = service.grace(Duration::from_secs(1)).mirror(MIRRORED, receiver, |up| *up).task(
        "worker",
        move |stop| async move {
            stop.cancelled().await;
            let reachable = tokio::net::TcpStream::connect(addr).await.is_ok();
            *recorded.lock().unwrap() = Some(reachable);
        },
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(service.run_until_stopped(shutdown.clone()));

    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert!(eventually(async || status(addr, MIRRORED).await == Some(not_serving)).await);
    assert_eq!(status(addr, platform::grpc::LIVENESS).await, Some(serving));
    state.send(true).unwrap();
    assert!(eventually(async || status(addr, MIRRORED).await == Some(serving)).await);

    shutdown.cancel();
    // During the grace period the server still answers, with the mirrored name NOT_SERVING.
    assert!(eventually(async || status(addr, MIRRORED).await == Some(not_serving)).await);
    assert_eq!(*seen.lock().unwrap(), None, "the task runs on through the grace period");
    running.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(false), "the task stopped after the server closed its port");
}
