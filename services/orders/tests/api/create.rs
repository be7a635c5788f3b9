use std::collections::HashSet;

use chrono::{DateTime, Utc};

use contracts::{
    events::v1::OrderCreated,
    orders::v1::{CreateOrderRequest, GetOrderRequest, OrderStatus},
};
use prost::Message;
use sqlx::PgPool;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{Options, bad_fields, error_reason, order, spawn_app, with_metadata};

#[sqlx::test(migrations = false)]
async fn create_order_commits_the_order_and_its_event_together(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = with_metadata(
        order("c-1", "77.5", "EUR"),
        &[("x-correlation-id", "corr-happy-1"), ("traceparent", traceparent)],
    );
    let response = app.client.create_order(request).await.unwrap();
    assert_eq!(response.metadata().get("x-correlation-id").unwrap(), "corr-happy-1");
    let body = response.into_inner();
    assert_eq!(body.correlation_id, "corr-happy-1");
    let created = body.order.unwrap();
    assert_eq!(created.order_id, body.order_id);
    assert_eq!(
        (created.customer_id.as_str(), created.amount.as_str(), created.currency.as_str()),
        ("c-1", "77.50", "EUR")
    );
    assert_eq!(created.status, OrderStatus::Created as i32);
    assert!(created.created_at.is_some());

    let (event_id, payload, headers): (Uuid, Vec<u8>, serde_json::Value) = sqlx::query_as(
        "SELECT event_id, payload, headers FROM outbox_messages WHERE aggregate_id = $1 AND routing_key = 'order.created'",
    )
    .bind(&body.order_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(event_id.to_string(), body.event_id);
    let event = OrderCreated::decode(payload.as_slice()).unwrap();
    assert_eq!(event.order_id, body.order_id);
    assert_eq!(event.event_id, body.event_id);
    assert_eq!((event.customer_id.as_str(), event.amount.as_str(), event.currency.as_str()), ("c-1", "77.50", "EUR"));
    assert_eq!(event.correlation_id, "corr-happy-1");
    assert_eq!(event.occurred_at, None, "the relay adds it as it publishes the event");
    assert_eq!(headers["x-correlation-id"], "corr-happy-1");
    let stored_trace = headers["traceparent"].as_str().unwrap();
    assert!(stored_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "trace continued: {stored_trace}");
    assert_ne!(stored_trace, traceparent, "the event gets a span of its own");

    let fetched = app.client.get_order(GetOrderRequest { order_id: body.order_id.clone() }).await.unwrap();
    assert_eq!(fetched.into_inner().order.unwrap(), created);
    app.stop().await;
}

/// The order's times and its messages' occurred_at are one time the
/// database stamped: the order's `created_at` and `updated_at`, and each
/// outbox row's `created_at`, with the field the relay adds it to the payload as.
#[sqlx::test(migrations = false)]
async fn the_database_stamps_the_order_and_its_messages_with_one_time(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let created = app.client.create_order(order("c-stamp", "3", "EUR")).await.unwrap().into_inner();
    type Times = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>, Option<i16>);
    let rows: Vec<Times> = sqlx::query_as(
        "SELECT o.created_at, o.updated_at, m.created_at, m.occurred_at_field FROM orders o \
         JOIN outbox_messages m ON m.aggregate_id = o.order_id::text WHERE o.order_id = $1::uuid",
    )
    .bind(&created.order_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "OrderCreated and ProcessPayment");
    let created_at = rows[0].0;
    for row in rows {
        assert_eq!(row, (created_at, created_at, created_at, Some(orders::db::OCCURRED_AT_FIELD as i16)));
    }
    assert_eq!(created.order.unwrap().created_at, Some(orders::db::timestamp(created_at)));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn missing_or_malformed_correlation_ids_are_replaced(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    for metadata in [vec![], vec![("x-correlation-id", "has spaces in it")], vec![("x-correlation-id", "semi;colon")]] {
        let response = app.client.create_order(with_metadata(order("c-1", "1", "EUR"), &metadata)).await.unwrap();
        let echoed = response.metadata().get("x-correlation-id").unwrap().to_str().unwrap().to_owned();
        let body = response.into_inner();
        assert!(Uuid::parse_str(&body.correlation_id).is_ok(), "{metadata:?} gave {}", body.correlation_id);
        assert_eq!(echoed, body.correlation_id);
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn amounts_keep_their_currency_minor_unit_in_the_order_and_its_event(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    for (amount, currency, stored) in
        [("1000", "JPY", "1000"), ("1.234", "KWD", "1.234"), ("0.0001", "CLF", "0.0001"), ("77.5", "EUR", "77.50")]
    {
        let created = app.client.create_order(order("c-minor", amount, currency)).await.unwrap().into_inner();
        let shown = created.order.expect("order in the response");
        assert_eq!((shown.amount.as_str(), shown.currency.as_str()), (stored, currency));
        let got = app.client.get_order(GetOrderRequest { order_id: created.order_id.clone() }).await.unwrap();
        assert_eq!(got.into_inner().order.unwrap().amount, stored, "{amount} {currency} read back");
        let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox_messages WHERE event_id = $1::uuid")
            .bind(&created.event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(OrderCreated::decode(payload.as_slice()).unwrap().amount, stored, "{amount} {currency} event");
    }
    for (amount, currency) in [("1.00", "JPY"), ("1.234", "EUR"), ("1.2345", "KWD")] {
        let status = app.client.create_order(order("c-minor", amount, currency)).await.unwrap_err();
        assert_eq!((status.code(), bad_fields(&status)), (Code::InvalidArgument, vec!["amount".to_owned()]));
    }
    assert_eq!(app.count("orders").await, 4);
    app.stop().await;
}

/// An order stored with two decimals before amounts followed the minor unit
/// answers a retry that sends the same sum with the currency's decimals.
#[sqlx::test(migrations = false)]
async fn a_retry_matches_an_order_stored_with_more_decimals(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let (order_id, request_id) = (Uuid::now_v7(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, amount, currency, request_id, event_id, correlation_id)
         VALUES ($1, 'c-old', 1000.00, 'JPY', $2, $3, 'corr-old')",
    )
    .bind(order_id)
    .bind(request_id)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let retry = CreateOrderRequest { request_id: request_id.to_string(), ..order("c-old", "1000", "JPY") };
    let answered = app.client.create_order(retry.clone()).await.unwrap().into_inner();
    assert_eq!(answered.order_id, order_id.to_string());
    let other = CreateOrderRequest { amount: "1001".into(), ..retry };
    let status = app.client.create_order(other).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("orders").await, 1);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn invalid_orders_are_rejected_naming_the_field_and_write_nothing(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let long = "x".repeat(129);
    let cases: Vec<(CreateOrderRequest, &str)> = vec![
        (order("", "10", "EUR"), "customer_id"),
        (order(&long, "10", "EUR"), "customer_id"),
        (order("c-1", "0", "EUR"), "amount"),
        (order("c-1", "-1", "EUR"), "amount"),
        (order("c-1", "1.234", "EUR"), "amount"),
        (order("c-1", "abc", "EUR"), "amount"),
        (order("c-1", "NaN", "EUR"), "amount"),
        (order("c-1", "1e309", "EUR"), "amount"),
        (order("c-1", "", "EUR"), "amount"),
        (order("c-1", "10", "eur"), "currency"),
        (order("c-1", "10", "EURO"), "currency"),
        (order("c-1", "10", "XYZ"), "currency"),
        (order("c-1", "10", ""), "currency"),
        (order("c-1", "1.00", "JPY"), "amount"),
        (order("c-1", "1.2345", "KWD"), "amount"),
        (CreateOrderRequest { request_id: "not-a-uuid".into(), ..order("c-1", "10", "EUR") }, "request_id"),
    ];
    for (request, field) in cases {
        let shown = format!("{request:?}");
        let status = app.client.create_order(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}");
        assert_eq!(bad_fields(&status), [field], "{shown}");
        assert!(status.message().contains(field), "{shown}: {}", status.message());
    }
    let status = app.client.create_order(order("", "0", "")).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["customer_id", "amount", "currency"], "every bad field is named");
    assert_eq!(error_reason(&status), "INVALID_FIELD");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["fields"], "customer_id,amount,currency");
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox_messages").await, 0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_retries_with_one_request_id_make_one_order_and_one_event(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let request_id = Uuid::new_v4().to_string();
    let calls = (0..20).map(|_| {
        let mut client = app.client.clone();
        let request = CreateOrderRequest { request_id: request_id.clone(), ..order("c-1", "12.30", "EUR") };
        tokio::spawn(async move { client.create_order(request).await.map(|r| r.into_inner()) })
    });
    let mut order_ids = HashSet::new();
    let mut event_ids = HashSet::new();
    for call in futures::future::join_all(calls).await {
        let body = call.unwrap().expect("every retry succeeds");
        order_ids.insert(body.order_id);
        event_ids.insert(body.event_id);
    }
    assert_eq!(order_ids.len(), 1);
    assert_eq!(event_ids.len(), 1);
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.events().await, 1);

    // The same key for a different order is a client bug, not a retry.
    let mut client = app.client.clone();
    let status = client
        .create_order(CreateOrderRequest { request_id: request_id.clone(), ..order("c-1", "99", "EUR") })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("orders").await, 1);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_failure_after_the_order_insert_leaves_neither_order_nor_event(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    // Inject the failure in the database itself: the outbox insert, which runs
    // after the order insert in the same transaction, now violates a constraint.
    sqlx::query("ALTER TABLE outbox_messages ADD CONSTRAINT injected_failure CHECK (false) NOT VALID")
        .execute(&pool)
        .await
        .unwrap();
    let status = app.client.create_order(order("c-1", "10", "EUR")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "internal error", "no internals leak to the client");
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox_messages").await, 0);

    sqlx::query("ALTER TABLE outbox_messages DROP CONSTRAINT injected_failure").execute(&pool).await.unwrap();
    app.client.create_order(order("c-1", "10", "EUR")).await.expect("works again");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.events().await, 1);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn get_order_answers_not_found_and_invalid_argument(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let status = app.client.get_order(GetOrderRequest { order_id: Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_reason(&status), "NOT_FOUND");
    let status = app.client.get_order(GetOrderRequest { order_id: "42".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["order_id"]);
    assert_eq!(error_reason(&status), "INVALID_FIELD");
    app.stop().await;
}

/// The pool opens its idle connections at start: the first burst of calls
/// does not wait for connections to be set up.
#[sqlx::test(migrations = false)]
async fn the_pool_keeps_its_minimum_of_connections_open_from_the_start(pool: PgPool) {
    let app = spawn_app(&pool, Options { min_connections: Some(8), ..Options::default() }).await;
    // The app's pool plus its health probe's own connection; the test's query runs on one more.
    let open = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(
        testkit::eventually(std::time::Duration::from_secs(5), || async { open().await >= 8 }).await,
        "only {} connections open",
        open().await
    );
    app.stop().await;
}
