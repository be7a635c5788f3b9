//! ListNotifications and health, without events.

use std::time::Duration;

use contracts::notifications::v1::ListNotificationsRequest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
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
        let info = status.get_details_error_info().expect("a google.rpc.ErrorInfo detail");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_FIELD", platform::errors::ERROR_DOMAIN));
        assert_eq!(info.metadata["fields"], "order_id");
        assert!(status.metadata().get("x-correlation-id").is_some());
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_unknown_order_has_an_empty_list(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    assert!(app.list(&Uuid::new_v4().to_string()).await.unwrap().is_empty());
    app.stop().await;
}

#[sqlx::test(migrations = false)]
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

#[sqlx::test(migrations = false)]
async fn a_lost_database_flips_readiness_and_calls_but_not_liveness(_: PgPoolOptions, db: PgConnectOptions) {
    let direct = database_url(&db);
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&direct)).await;
    let mut config = test_config(&testkit::via(&direct, proxy.addr()), &testkit::amqp_url());
    config.consumer_enabled = false;
    // The dispatcher, on connections of its own, loses them too and waits.
    config.delivery.enabled = true;
    let app = spawn_app(config).await;
    app.wait_health("", ServingStatus::Serving).await;

    proxy.cut();
    let status = app.list(&Uuid::new_v4().to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.get_details_error_info().expect("an ErrorInfo").reason, "DATABASE_UNAVAILABLE");
    let retry = status.get_details_retry_info().expect("UNAVAILABLE carries a RetryInfo");
    assert_eq!(retry.retry_delay, Some(platform::errors::RETRY_DELAY));
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

#[sqlx::test(migrations = false)]
async fn a_request_over_the_size_limit_is_refused_and_the_client_keeps_working(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    let mut client = app.client().await;
    let huge = "0".repeat(5 * 1024 * 1024);
    let request = contracts::notifications::v1::ListNotificationsRequest { order_id: huge, ..Default::default() };
    let status = client.list_notifications(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_error_info().expect("an ErrorInfo").reason, "MESSAGE_TOO_LARGE");
    assert!(status.message().contains("the limit is"), "{}", status.message());
    let request = contracts::notifications::v1::ListNotificationsRequest {
        order_id: Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let listed = client.list_notifications(request).await.expect("the next call on the same client succeeds");
    assert!(listed.into_inner().notifications.is_empty());
    drop(client);
    app.stop().await;
}

/// `(page_size, page_token)` for one call on `order_id`.
async fn page(
    app: &TestApp,
    order_id: Uuid,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<Uuid>, String), tonic::Status> {
    let request =
        ListNotificationsRequest { order_id: order_id.to_string(), page_size, page_token: page_token.to_owned() };
    let body = app.client().await.list_notifications(request).await?.into_inner();
    let ids = body.notifications.iter().map(|n| n.notification_id.parse().unwrap()).collect();
    Ok((ids, body.next_page_token))
}

#[sqlx::test(migrations = false)]
async fn list_notifications_pages_in_a_stable_order_and_refuses_foreign_tokens(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    let pool = pool(&db).await;
    let (order_id, other_order) = (Uuid::new_v4(), Uuid::new_v4());
    // Five notifications, three of them in the same microsecond: the id breaks the tie.
    let mut expected = Vec::new();
    for (i, at) in [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02Z",
    ]
    .into_iter()
    .enumerate()
    {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id, created_at)
             VALUES ($1, $2, $3, $4, 'c', $5::timestamptz)",
        )
        .bind(id)
        .bind(order_id)
        .bind(Uuid::new_v4())
        .bind(format!("n{i}"))
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
        expected.push((at, id));
    }
    expected.sort();
    let expected: Vec<Uuid> = expected.into_iter().map(|(_, id)| id).collect();

    let (all, last) = page(&app, order_id, 0, "").await.unwrap();
    assert_eq!((all.as_slice(), last.as_str()), (expected.as_slice(), ""), "the default page holds them all");

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (ids, next) = page(&app, order_id, 2, &token).await.unwrap();
        assert!(ids.len() <= 2);
        seen.extend(ids);
        pages += 1;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!((seen, pages), (expected.clone(), 3), "pages of 2, 2 and 1 in the same order");

    let (_, token) = page(&app, order_id, 2, "").await.unwrap();
    // A page taken again with the same token is the same page.
    let again = page(&app, order_id, 2, &token).await.unwrap().0;
    assert_eq!(again, expected[2..4]);

    for (size, bad_token, field) in [
        (2, "not-a-token".to_owned(), "page_token"),
        (2, token.clone().replace(&order_id.simple().to_string(), &other_order.simple().to_string()), "page_token"),
        (-1, String::new(), "page_size"),
    ] {
        let status = page(&app, order_id, size, &bad_token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad_token:?}");
        let fields: Vec<_> =
            status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
        assert_eq!(fields, [field], "{bad_token:?}");
    }
    let status = page(&app, other_order, 2, &token).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "page_token");
    app.stop().await;
}
