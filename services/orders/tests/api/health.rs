use std::time::Duration;

use sqlx::PgPool;
use testkit::FaultProxy;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{Options, error_reason, order, spawn_app};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[sqlx::test(migrations = false)]
async fn readiness_follows_the_database_liveness_does_not_and_calls_answer_unavailable(pool: PgPool) {
    let proxy = FaultProxy::start(testkit::socket_addr_of(&testkit::database_url())).await;
    let mut app = spawn_app(&pool, Options { database_addr: Some(proxy.addr()), ..Options::default() }).await;
    let health = HealthClient::new(crate::helpers::channel(app.addr).await);
    let status_of = |name: &'static str| {
        let mut health = health.clone();
        async move { health.check(HealthCheckRequest { service: name.into() }).await.map(|r| r.into_inner().status) }
    };
    let all_are = |wanted: i32| {
        let status_of = &status_of;
        move || async move {
            status_of("").await.ok() == Some(wanted)
                && status_of("pulse.orders.v1.OrderService").await.ok() == Some(wanted)
        }
    };
    assert!(testkit::eventually(Duration::from_secs(3), all_are(SERVING)).await);
    assert_eq!(status_of(platform::grpc::LIVENESS).await.unwrap(), SERVING);
    let unknown = status_of("pulse.nothing.v1.Nothing").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    assert!(testkit::eventually(Duration::from_secs(5), all_are(NOT_SERVING)).await, "NOT_SERVING within 5 s");
    tracing::info!(after = ?cut_at.elapsed(), "health went NOT_SERVING");
    // Liveness follows the process only: a database outage must restart no pod.
    assert_eq!(status_of(platform::grpc::LIVENESS).await.unwrap(), SERVING);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of("").await.unwrap(), NOT_SERVING);
    assert_eq!(status_of(platform::grpc::LIVENESS).await.unwrap(), SERVING);
    let status = app.client.create_order(order("c-1", "1", "EUR")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_reason(&status), "DATABASE_UNAVAILABLE");
    let retry = tonic_types::StatusExt::get_details_retry_info(&status).expect("UNAVAILABLE says when to retry");
    assert_eq!(retry.retry_delay, Some(platform::errors::RETRY_DELAY));

    proxy.restore();
    assert!(testkit::eventually(Duration::from_secs(5), all_are(SERVING)).await, "SERVING again");
    // Pooled connections cut by the outage fail once each and are replaced.
    let mut client = app.client.clone();
    let recovered = testkit::eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.create_order(order("c-1", "1", "EUR")).await.is_ok() }
    })
    .await;
    assert!(recovered, "orders are taken again without a restart");
    client.create_order(order("c-2", "2", "EUR")).await.unwrap();
    assert_eq!(app.count("orders").await, 2);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn reflection_v1_and_v1alpha_list_the_services(pool: PgPool) {
    use reflection::list_services;
    let app = spawn_app(&pool, Options::default()).await;
    let (v1, v1alpha) = list_services(app.addr).await;
    for services in [v1, v1alpha] {
        for expected in ["pulse.orders.v1.OrderService", "grpc.health.v1.Health"] {
            assert!(services.iter().any(|s| s == expected), "{expected} missing from {services:?}");
        }
        assert!(
            !services.iter().any(|s| s.contains("NotificationService")),
            "only what this server offers is listed: {services:?}"
        );
    }
    app.stop().await;
}

mod reflection {
    use std::net::SocketAddr;

    use tonic_reflection::pb::{v1, v1alpha};

    /// Service names as reflection v1 and v1alpha list them.
    pub(super) async fn list_services(addr: SocketAddr) -> (Vec<String>, Vec<String>) {
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(crate::helpers::channel(addr).await);
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut stream = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let v1_names = match first.message_response.unwrap() {
            v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected v1 answer {other:?}"),
        };

        let mut client =
            v1alpha::server_reflection_client::ServerReflectionClient::new(crate::helpers::channel(addr).await);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut stream = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let v1alpha_names = match first.message_response.unwrap() {
            v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected v1alpha answer {other:?}"),
        };
        (v1_names, v1alpha_names)
    }
}

/// The server caps the calls one connection may have in flight: a client
/// sending faster than orders commit waits for a stream instead of parking
/// every call in the server's memory.
#[sqlx::test(migrations = false)]
async fn a_connection_may_have_a_bounded_number_of_calls_in_flight(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    // The limit arrives with the server's SETTINGS; before that h2 assumes none.
    let advertised = || {
        let client = client.clone();
        async move {
            // Polling for readiness lets the client take in the server's settings.
            let client = client.ready().await.unwrap();
            client.current_max_send_streams() == platform::grpc::MAX_CONCURRENT_STREAMS as usize
        }
    };
    assert!(testkit::eventually(Duration::from_secs(5), advertised).await, "{}", client.current_max_send_streams());
    // Closed, so the server's graceful shutdown does not wait for it.
    drop(client);
    connection.abort();
}
