//! The edges of CreateOrder: identifiers that show nothing, a request over the
//! message size limit and metadata over the header limits are refused on that
//! call alone, write nothing, and leave the connection serving other calls.

use std::time::Duration;

use contracts::orders::v1::order_service_client::OrderServiceClient;
use sqlx::PgPool;
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_client::HealthClient};

use crate::helpers::{Options, bad_fields, channel, order, spawn_app};

#[sqlx::test(migrations = false)]
async fn customer_ids_without_a_visible_character_are_refused_and_write_nothing(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    for invisible in [
        "\u{200B}",
        "\u{200B}\u{200B}\u{200B}",
        "\u{FEFF}",
        "\u{2060}\u{200D}\u{200C}",
        "\u{3164}",
        "\u{2800}",
        "\u{00A0}\u{3000}",
        "\u{202E}\u{2066}",
        "\u{E0041}\u{E0042}",
        "\u{FE0F}",
        " \u{200B} ",
        "\u{200B}c-1",
        "c-1\u{200B}",
    ] {
        let status = app.client.create_order(order(invisible, "10", "EUR")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{invisible:?}");
        assert_eq!(bad_fields(&status), ["customer_id"], "{invisible:?}");
        assert!(status.message().contains("customer_id"), "{invisible:?}: {}", status.message());
    }
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox_messages").await, 0);
    // Visible characters of any script are customer ids, joiners inside them too.
    for visible in ["客户-1", "e\u{301}", "👩\u{200D}💻"] {
        let created = app.client.create_order(order(visible, "10", "EUR")).await.unwrap().into_inner();
        assert_eq!(created.order.unwrap().customer_id, visible);
    }
    assert_eq!(app.count("orders").await, 3);
    app.stop().await;
}

/// A server-streaming call held open on `channel`: it fails at once if the
/// connection under it closes.
async fn open_watch(channel: &Channel) -> Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("health watch opens")
        .into_inner();
    watch.message().await.expect("first health status").expect("a status");
    watch
}

/// Fails the test if the watch has ended or failed: the connection it rides on is gone.
async fn assert_still_open(watch: &mut Streaming<HealthCheckResponse>, after: &str) {
    match tokio::time::timeout(Duration::from_millis(300), watch.message()).await {
        Err(_) | Ok(Ok(Some(_))) => {}
        Ok(other) => panic!("the connection closed after {after}: {other:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn a_request_over_the_size_limit_is_refused_and_the_connection_keeps_working(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let channel = channel(app.addr).await;
    let mut client = OrderServiceClient::new(channel.clone());
    let mut watch = open_watch(&channel).await;

    let huge = "c".repeat(5 * 1024 * 1024);
    let status = client.create_order(order(&huge, "10", "EUR")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(crate::helpers::error_reason(&status), "MESSAGE_TOO_LARGE");
    assert!(
        status.message().contains(&format!("the limit is {} bytes", platform::grpc::MAX_MESSAGE_BYTES)),
        "{}",
        status.message()
    );
    assert_still_open(&mut watch, "a 5 MiB request").await;
    // Just under the limit the message is decoded, and refused for its content.
    let large = "c".repeat(platform::grpc::MAX_MESSAGE_BYTES - 64);
    let status = client.create_order(order(&large, "10", "EUR")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox_messages").await, 0);

    client.create_order(order("c-1", "10", "EUR")).await.expect("the next call on the same channel succeeds");
    assert_still_open(&mut watch, "the next call").await;
    assert_eq!(app.count("orders").await, 1);
    drop((watch, client, channel));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn oversized_metadata_fails_its_own_call_and_no_other(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let channel = channel(app.addr).await;
    let client = OrderServiceClient::new(channel.clone());
    let mut watch = open_watch(&channel).await;

    // Over Pulse's metadata limit (a gRPC status says so), then over what
    // HTTP/2 takes for one call's headers (refused by h2 on that stream alone).
    let sizes = [platform::grpc::MAX_METADATA_BYTES + 1024, 128 * 1024, 300 * 1024];
    let mut created = 0;
    for size in sizes {
        let mut request = tonic::Request::new(order("c-1", "10", "EUR"));
        request.metadata_mut().insert("x-padding", "p".repeat(size).parse().unwrap());
        // Calls in flight on the same connection meanwhile.
        let others: Vec<_> = (0..16)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { client.create_order(order("c-2", "1", "EUR")).await })
            })
            .collect();
        let status = client.clone().create_order(request).await.unwrap_err();
        if size < platform::grpc::HTTP2_MAX_HEADER_LIST_BYTES as usize {
            assert_eq!(status.code(), Code::ResourceExhausted, "{size} bytes: {status:?}");
            assert!(status.message().contains("request metadata is"), "{size} bytes: {}", status.message());
            assert_eq!(crate::helpers::error_reason(&status), "METADATA_TOO_LARGE");
        } else {
            // h2 answers HTTP 431 before the call reaches the service; tonic maps it to UNKNOWN.
            assert_eq!(status.code(), Code::Unknown, "{size} bytes: {status:?}");
            assert!(status.message().contains("431"), "{size} bytes: {}", status.message());
        }
        for other in futures::future::join_all(others).await {
            other.unwrap().unwrap_or_else(|status| panic!("a call beside {size} bytes of metadata failed: {status:?}"));
            created += 1;
        }
        assert_still_open(&mut watch, &format!("{size} bytes of metadata")).await;
        client.clone().create_order(order("c-3", "1", "EUR")).await.expect("the next call succeeds");
        created += 1;
    }
    let padded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = 'c-1'").fetch_one(&pool).await.unwrap();
    assert_eq!(padded, 0, "no refused call wrote an order");
    assert_eq!(app.count("orders").await, created);
    assert_eq!(app.events().await, created);
    drop((watch, client, channel));
    app.stop().await;
}
