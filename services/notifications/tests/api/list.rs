//! ListNotifications and health, without events.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_malformed_order_id_is_an_invalid_argument_naming_the_field(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    for bad in ["", "42", "not-a-uuid"] {
        let status = app.list(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        let details = status.get_details_bad_request().expect("a google.rpc.BadRequest detail");
        assert_eq!(details.field_violations.len(), 1);
        assert_eq!(details.field_violations[0].field, "order_id");
        assert!(status.metadata().get("x-correlation-id").is_some());
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn an_unknown_order_has_an_empty_list(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    assert!(app.list(&Uuid::new_v4().to_string()).await.unwrap().is_empty());
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn health_follows_the_database_and_the_consumer(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    app.wait_health("", ServingStatus::Serving).await;
    app.wait_health("pulse.notifications.v1.NotificationService", ServingStatus::Serving).await;
    app.wait_health(notifications::CONSUMER_HEALTH_NAME, ServingStatus::Serving).await;
    app.stop().await;
    Broker::connect().await.delete(&topology).await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_lost_database_flips_readiness_and_calls_but_not_liveness(_: PgPoolOptions, db: PgConnectOptions) {
    let direct = database_url(&db);
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&direct)).await;
    let mut config = test_config(&testkit::via(&direct, proxy.addr()), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    app.wait_health("", ServingStatus::Serving).await;

    proxy.cut();
    let status = app.list(&Uuid::new_v4().to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    app.wait_health("", ServingStatus::NotServing).await;
    app.wait_health("pulse.notifications.v1.NotificationService", ServingStatus::NotServing).await;
    // Readiness went down a probe interval ago: liveness, asked now and again
    // a few intervals later, still says the process is alive.
    assert_eq!(app.health(platform::grpc::LIVENESS).await, ServingStatus::Serving);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(app.health("").await, ServingStatus::NotServing);
    assert_eq!(app.health(platform::grpc::LIVENESS).await, ServingStatus::Serving);

    proxy.restore();
    app.wait_health("", ServingStatus::Serving).await;
    assert!(app.list(&Uuid::new_v4().to_string()).await.unwrap().is_empty());
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_request_over_the_size_limit_is_refused_and_the_client_keeps_working(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    let mut client = app.client().await;
    let huge = "0".repeat(5 * 1024 * 1024);
    let request = contracts::notifications::v1::ListNotificationsRequest { order_id: huge };
    let status = client.list_notifications(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("the limit is"), "{}", status.message());
    let request = contracts::notifications::v1::ListNotificationsRequest { order_id: Uuid::new_v4().to_string() };
    let listed = client.list_notifications(request).await.expect("the next call on the same client succeeds");
    assert!(listed.into_inner().notifications.is_empty());
    drop(client);
    app.stop().await;
}
