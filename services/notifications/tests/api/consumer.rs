//! From an OrderCreated on the exchange to a notification in ListNotifications.

use contracts::events::v1::ORDER_CREATED_TYPE;
use inbox::{Fault, headers};
use prost::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations/notifications")]
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

#[sqlx::test(migrations = "../../migrations/notifications")]
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

#[sqlx::test(migrations = "../../migrations/notifications")]
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

#[sqlx::test(migrations = "../../migrations/notifications")]
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
    let (_, mut incomplete) = order_created("corr-incomplete");
    incomplete.order_id.clear();
    let fresh = || Uuid::new_v4().to_string();

    broker.publish(ex, before_id, &before).await;
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-garbage"), b"\xff\xff\xff").await;
    let payload = before.encode_to_vec();
    broker
        .publish_raw(ex, properties(Some(&fresh()), Some("pulse.events.v1.OrderShipped"), "corr-unknown"), &payload)
        .await;
    let payload = incomplete.encode_to_vec();
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-incomplete"), &payload).await;
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
