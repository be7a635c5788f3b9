//! `GET /metrics`: inbox outcome counters that match what was sent, each at 0
//! from the start, the end-to-end lag from the relay's `x-occurred-at`, and
//! gRPC durations.

use contracts::events::v1::ORDER_CREATED_TYPE;
use lapin::types::{AMQPValue, ShortString};
use prost::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn inbox_outcome_counters_match_what_was_sent(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let ex = topology.exchange.as_str();
    // Committed 1.5 s ago, as the relay would stamp it.
    let occurred_at = chrono::Utc::now().timestamp_millis() - 1500;

    let mut events = Vec::new();
    for i in 0..3 {
        let (event_id, event) = order_created(&format!("corr-metrics-{i}"));
        let mut properties = properties(Some(&event_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-metrics");
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(inbox::headers::OCCURRED_AT), AMQPValue::LongLongInt(occurred_at));
        properties = properties.with_headers(headers);
        broker.publish_raw(ex, properties, &event.encode_to_vec()).await;
        events.push((event_id, event));
    }
    // Two more copies of the first event.
    for _ in 0..2 {
        broker.publish(ex, events[0].0, &events[0].1).await;
    }
    // Poison: a payload that does not decode and a type nobody consumes here.
    let fresh = || Uuid::new_v4().to_string();
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-garbage"), b"\xff\xff").await;
    let payload = events[1].1.encode_to_vec();
    broker.publish_raw(ex, properties(Some(&fresh()), Some("pulse.events.v1.OrderShipped"), "c"), &payload).await;
    // Valid protobuf that fails validation: dead-lettered, not poison.
    let (incomplete_id, mut incomplete) = order_created("corr-incomplete");
    incomplete.order_id.clear();
    let payload = incomplete.encode_to_vec();
    broker
        .publish_raw(
            ex,
            properties(Some(&incomplete_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-incomplete"),
            &payload,
        )
        .await;

    let metrics = app.metrics_addr;
    let outcome = |text: &str, outcome: &str| {
        testkit::metric_sample(text, "inbox_messages_total", &[("queue", topology.main.as_str()), ("outcome", outcome)])
            .unwrap_or(0.0)
    };
    let main = topology.main.clone();
    eventually(|| {
        let main = main.clone();
        async move {
            let text = testkit::scrape_metrics(metrics).await;
            testkit::metric_sample(&text, "inbox_messages_total", &[("queue", main.as_str())]).unwrap_or(0.0) >= 8.0
        }
    })
    .await;
    let text = testkit::scrape_metrics(metrics).await;
    assert_eq!(outcome(&text, "processed"), 3.0, "{text}");
    assert_eq!(outcome(&text, "duplicate"), 2.0, "{text}");
    assert_eq!(outcome(&text, "poison"), 2.0, "{text}");
    assert_eq!(outcome(&text, "dead_lettered"), 1.0, "{text}");
    assert_eq!(outcome(&text, "retried"), 0.0, "{text}");
    let stats = app.stats.snapshot();
    assert_eq!((stats.processed, stats.duplicates, stats.dead_lettered), (3, 2, 3), "the stats agree");

    assert_eq!(testkit::metric_sample(&text, "inbox_lag_seconds_count", &[]), Some(3.0), "a lag per processed event");
    assert!(
        testkit::metric_sample(&text, "inbox_lag_seconds_sum", &[]).unwrap() >= 4.5,
        "each lag counts from x-occurred-at"
    );
    assert!(testkit::metric_sample(&text, "inbox_batch_duration_seconds_count", &[]).unwrap() >= 1.0);

    app.list(&events[0].1.order_id).await.unwrap();
    let text = testkit::scrape_metrics(metrics).await;
    let listed = [("rpc_method", "ListNotifications"), ("rpc_grpc_status_code", "0")];
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &listed), Some(1.0), "{text}");
    app.stop().await;
    broker.delete(&topology).await;
}

/// Before any delivery every outcome of the main queue is at 0, so the
/// dead-letter alert's `increase()` sees the first dead letter after a start.
#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_fresh_consumer_counts_every_outcome_from_zero(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let text = testkit::scrape_metrics(app.metrics_addr).await;
    for outcome in ["processed", "duplicate", "retried", "dead_lettered", "poison"] {
        let labels = [("queue", topology.main.as_str()), ("outcome", outcome)];
        assert_eq!(testkit::metric_sample(&text, "inbox_messages_total", &labels), Some(0.0), "{outcome}: {text}");
    }
    let service = [("service_name", "notifications")];
    assert_eq!(testkit::metric_sample(&text, "target_info", &service), Some(1.0), "{text}");
    app.stop().await;
    let broker = Broker::connect().await;
    broker.delete(&topology).await;
}
