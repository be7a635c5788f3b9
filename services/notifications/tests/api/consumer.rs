//! From an OrderCreated on the exchange to a notification in ListNotifications.

use contracts::events::v1::{ORDER_CREATED_TYPE, OrderCreated};
use inbox::{Fault, headers};
use prost::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn one_order_created_makes_one_notification(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (event_id, event) = order_created("corr-one-order");
    broker.publish(&topology.exchange, event_id, &event).await;

    let app_ref = &app;
    let order_id = event.order_id.as_str();
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;
    let listed = app.list(order_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    let notification = &listed[0];
    assert_eq!(notification.order_id, event.order_id);
    assert_eq!(notification.event_id, event_id.to_string());
    assert_eq!(notification.message, format!("Order {} for 77.50 EUR has been received", event.order_id));
    assert_eq!(notification.correlation_id, "corr-one-order");
    assert!(Uuid::parse_str(&notification.notification_id).is_ok());
    assert!(notification.created_at.is_some());
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn five_copies_across_two_replicas_make_one_notification(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut first = spawn_app(config.clone()).await;
    let mut second = spawn_app(config).await;
    first.wait_connected(true).await;
    second.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (event_id, event) = order_created("corr-copies");
    for _ in 0..5 {
        broker.publish(&topology.exchange, event_id, &event).await;
    }

    let (a, b) = (&first.stats, &second.stats);
    eventually(|| async move {
        let (a, b) = (a.snapshot(), b.snapshot());
        a.processed + a.duplicates + b.processed + b.duplicates == 5
    })
    .await;
    let (a, b) = (first.stats.snapshot(), second.stats.snapshot());
    assert_eq!((a.processed + b.processed, a.duplicates + b.duplicates), (1, 4));
    assert!(a.processed + a.duplicates > 0 && b.processed + b.duplicates > 0, "both replicas received copies");
    assert_eq!(first.list(&event.order_id).await.unwrap().len(), 1);
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM processed_events").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 1);
    first.stop().await;
    second.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0, "every copy was acknowledged");
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_redelivery_after_commit_without_ack_is_a_duplicate(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let broker = Broker::connect().await;
    broker.declare(&topology).await;
    let (event_id, event) = order_created("corr-crash");
    broker.publish(&topology.exchange, event_id, &event).await;

    // This replica's consumer commits, then drops its connection unacknowledged, as if killed.
    let mut crashing = config.clone();
    crashing.inbox.fault = Fault::CrashAfterCommit;
    let crashed = spawn_app(crashing).await;
    let connected = &crashed.connected;
    eventually(|| async move { connected.has_changed().is_err() }).await;
    crashed.stop().await;
    let (broker_ref, main) = (&broker, topology.main.as_str());
    eventually(|| async move { broker_ref.ready(main).await == 1 }).await;

    let restarted = spawn_app(config).await;
    let stats = &restarted.stats;
    eventually(|| async move { stats.snapshot().duplicates == 1 }).await;
    assert_eq!(restarted.stats.snapshot().processed, 0);
    assert_eq!(restarted.list(&event.order_id).await.unwrap().len(), 1);
    restarted.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0, "the redelivery was acknowledged");
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn malformed_messages_are_dead_lettered_and_valid_ones_around_them_processed(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let ex = topology.exchange.as_str();
    let (before_id, before) = order_created("corr-before");
    let (after_id, after) = order_created("corr-after");
    let (incomplete_id, mut incomplete) = order_created("corr-incomplete");
    incomplete.order_id.clear();
    let fresh = || Uuid::new_v4().to_string();

    broker.publish(ex, before_id, &before).await;
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-garbage"), b"\xff\xff\xff").await;
    let payload = before.encode_to_vec();
    broker
        .publish_raw(ex, properties(Some(&fresh()), Some("pulse.events.v1.OrderShipped"), "corr-unknown"), &payload)
        .await;
    let payload = incomplete.encode_to_vec();
    broker
        .publish_raw(
            ex,
            properties(Some(&incomplete_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-incomplete"),
            &payload,
        )
        .await;
    broker.publish(ex, after_id, &after).await;

    let dead = broker.take_n(&topology.dead_letter, 3).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| (header(m, headers::CORRELATION_ID).unwrap(), header(m, headers::REASON).unwrap()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("corr-garbage".to_owned(), "decode_error".to_owned()),
            ("corr-incomplete".to_owned(), "validation_failed".to_owned()),
            ("corr-unknown".to_owned(), "unknown_type".to_owned()),
        ]
    );
    for message in &dead {
        assert_eq!(headers::attempts_made(message.delivery.properties.headers().as_ref()), 1);
        assert_eq!(header(message, headers::SOURCE_QUEUE).as_deref(), Some(topology.main.as_str()));
        assert!(header(message, headers::DEAD_LETTERED_AT).is_some() && header(message, headers::ERROR).is_some());
    }
    let app_ref = &app;
    let (before_order, after_order) = (before.order_id.as_str(), after.order_id.as_str());
    eventually(|| async move { app_ref.list(after_order).await.unwrap().len() == 1 }).await;
    assert_eq!(app.list(before_order).await.unwrap().len(), 1);
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn an_event_republished_under_another_message_id_makes_one_notification(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (event_id, event) = order_created("corr-republished");
    broker.publish(&topology.exchange, event_id, &event).await;
    // The same OrderCreated under another message id: a manual replay, a shovel.
    let other = Uuid::new_v4();
    broker.publish(&topology.exchange, other, &event).await;

    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("event_id_mismatch"));
    assert_eq!(dead.delivery.properties.message_id().as_ref().map(|m| m.to_string()), Some(other.to_string()));
    let app_ref = &app;
    let order_id = event.order_id.as_str();
    eventually(|| async move { app_ref.list(order_id).await.unwrap().len() == 1 }).await;
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 1);
    let recorded: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM processed_events").fetch_all(&pool).await.unwrap();
    assert_eq!(recorded, [event_id]);
    app.stop().await;
    broker.delete(&topology).await;
}

/// A case of an event the consumer must refuse: its correlation id, the change
/// to a valid event, the reason expected and what `x-error` must name.
type Refused = (&'static str, fn(&mut OrderCreated), &'static str, &'static str);

#[sqlx::test(migrations = false)]
async fn events_create_order_would_refuse_are_dead_lettered_naming_the_field(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.inbox.max_message_bytes = 2048;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let ex = topology.exchange.as_str();

    let cases: [Refused; 7] = [
        ("corr-nan", |e| e.amount = "NaN".into(), "validation_failed", "amount"),
        ("corr-negative", |e| e.amount = "-1".into(), "validation_failed", "amount"),
        ("corr-decimals", |e| e.amount = "1.234".into(), "validation_failed", "amount"),
        ("corr-customer", |e| e.customer_id.clear(), "validation_failed", "customer_id"),
        ("corr-currency", |e| e.currency = "XYZ".into(), "validation_failed", "currency"),
        ("corr-event-id", |e| e.event_id = "not-a-uuid".into(), "validation_failed", "event_id"),
        ("corr-large", |e| e.customer_id = "c".repeat(4096), "too_large", "2048"),
    ];
    let mut refused = Vec::new();
    for (correlation, tweak, _, _) in &cases {
        let (event_id, mut event) = order_created(correlation);
        tweak(&mut event);
        broker.publish(ex, event_id, &event).await;
        refused.push(event.order_id);
    }
    let (event_id, event) = order_created("corr-json");
    let json = properties(Some(&event_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-json")
        .with_content_type("application/json".into());
    broker.publish_raw(ex, json, &event.encode_to_vec()).await;
    refused.push(event.order_id);
    let (valid_id, valid) = order_created("corr-valid");
    broker.publish(ex, valid_id, &valid).await;

    let dead = broker.take_n(&topology.dead_letter, cases.len() as u32 + 1).await;
    let by_correlation = |correlation: &str| {
        let message = dead.iter().find(|m| header(m, headers::CORRELATION_ID).as_deref() == Some(correlation));
        let message = message.unwrap_or_else(|| panic!("{correlation} was not dead-lettered"));
        (header(message, headers::REASON).unwrap(), header(message, headers::ERROR).unwrap())
    };
    for (correlation, _, reason, named) in &cases {
        let (got, error) = by_correlation(correlation);
        assert_eq!(&got, reason, "{correlation}: {error}");
        assert!(error.contains(named), "{correlation}: the error names {named}: {error}");
    }
    let (reason, error) = by_correlation("corr-json");
    assert_eq!(reason, "unsupported_content_type", "{error}");
    let app_ref = &app;
    let valid_order = valid.order_id.as_str();
    eventually(|| async move { app_ref.list(valid_order).await.unwrap().len() == 1 }).await;
    for order_id in &refused {
        assert!(app.list(order_id).await.unwrap().is_empty(), "no notification for {order_id}");
    }
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 1);
    app.stop().await;
    broker.delete(&topology).await;
}

/// An order's outcome after its creation: three notifications in order, the
/// failure's reason in words.
#[sqlx::test(migrations = false)]
async fn outcomes_make_notifications_after_the_order_created_one(_: PgPoolOptions, db: PgConnectOptions) {
    use contracts::{
        Routed,
        events::v1::{OrderCompleted, OrderFailed},
        orders::v1::FailureReason,
    };
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (created_id, created) = order_created("corr-outcomes");
    broker.publish(&topology.exchange, created_id, &created).await;
    let completed = OrderCompleted {
        event_id: Uuid::new_v4().to_string(),
        order_id: created.order_id.clone(),
        customer_id: created.customer_id.clone(),
        amount: created.amount.clone(),
        currency: created.currency.clone(),
        occurred_at: created.occurred_at,
        correlation_id: created.correlation_id.clone(),
    };
    let publish = |message_type: &'static str, key: &'static str, event_id: String, body: Vec<u8>| {
        let broker = &broker;
        let exchange = topology.exchange.clone();
        async move {
            let properties = properties(Some(&event_id), Some(message_type), "corr-outcomes");
            broker.publish_to(&exchange, key, properties, &body).await;
        }
    };
    publish(
        OrderCompleted::MESSAGE_TYPE,
        OrderCompleted::ROUTING_KEY,
        completed.event_id.clone(),
        completed.encode_to_vec(),
    )
    .await;
    let (_, other) = order_created("corr-outcomes");
    let failed = OrderFailed {
        event_id: Uuid::new_v4().to_string(),
        order_id: other.order_id.clone(),
        customer_id: other.customer_id.clone(),
        amount: other.amount.clone(),
        currency: other.currency.clone(),
        occurred_at: other.occurred_at,
        correlation_id: other.correlation_id.clone(),
        reason: FailureReason::OutOfStock as i32,
        detail: "sku A-1: 3 requested, 1 available".into(),
    };
    publish(OrderFailed::MESSAGE_TYPE, OrderFailed::ROUTING_KEY, failed.event_id.clone(), failed.encode_to_vec()).await;

    let app_ref = &app;
    let (order, other_order) = (created.order_id.as_str(), other.order_id.as_str());
    eventually(|| async move {
        app_ref.list(order).await.unwrap().len() == 2 && app_ref.list(other_order).await.unwrap().len() == 1
    })
    .await;
    let listed = app.list(order).await.unwrap();
    let messages: Vec<&str> = listed.iter().map(|n| n.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            format!("Order {order} for 77.50 EUR has been received"),
            format!("Order {order} for 77.50 EUR is complete: paid and its items reserved"),
        ]
    );
    assert_eq!(listed[1].event_id, completed.event_id);
    let failed_notification = &app.list(other_order).await.unwrap()[0];
    assert_eq!(
        failed_notification.message,
        format!(
            "Order {other_order} for 77.50 EUR has failed: an item is out of stock (sku A-1: 3 requested, 1 available)"
        )
    );
    assert_eq!(failed_notification.correlation_id, "corr-outcomes");
    app.stop().await;
    broker.delete(&topology).await;
}
