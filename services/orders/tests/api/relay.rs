use std::time::Duration;

use contracts::events::v1::OrderCreated;
use lapin::types::AMQPValue;
use prost::Message;
use sqlx::PgPool;
use testkit::FaultProxy;

use crate::helpers::{Options, order, spawn_app, with_metadata};

/// Deliveries whose message id is one of `event_ids`, collected for `within`.
async fn deliveries_of(
    consumer: &mut lapin::Consumer,
    event_ids: &[String],
    within: Duration,
) -> Vec<lapin::message::Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    let mut mine = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        for delivery in testkit::receive(consumer, 1, left).await {
            let id = delivery.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
            if event_ids.contains(&id) {
                mine.push(delivery);
            }
        }
    }
    mine
}

fn header(delivery: &lapin::message::Delivery, key: &str) -> String {
    match delivery.properties.headers().as_ref().and_then(|h| h.inner().get(key).cloned()) {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        other => panic!("header {key}: {other:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn the_relay_publishes_order_created_with_every_pinned_property(pool: PgPool) {
    let amqp = testkit::amqp_connection().await;
    let mut consumer = testkit::subscribe(&amqp, "pulse.events", "order.created").await;
    let mut app = spawn_app(&pool, Options { relay: true, ..Options::default() }).await;
    let created = app
        .client
        .create_order(with_metadata(order("c-9", "5.10", "USD"), &[("x-correlation-id", "corr-relay-1")]))
        .await
        .unwrap()
        .into_inner();

    let got = deliveries_of(&mut consumer, std::slice::from_ref(&created.event_id), Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "published exactly once");
    let delivery = &got[0];
    assert_eq!(delivery.exchange.as_str(), "pulse.events");
    assert_eq!(delivery.routing_key.as_str(), "order.created");
    let props = &delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(props.content_type().as_ref().unwrap().as_str(), "application/x-protobuf");
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "pulse.events.v1.OrderCreated");
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "pulse-orders");
    assert!(props.timestamp().is_some());
    assert_eq!(header(delivery, "x-correlation-id"), "corr-relay-1");
    let traceparent = header(delivery, "traceparent");
    assert!(telemetry::tracecontext::TraceParent::parse(&traceparent).is_some(), "{traceparent}");
    assert_eq!(header(delivery, "x-aggregate-id"), created.order_id);

    let event = OrderCreated::decode(delivery.data.as_slice()).unwrap();
    assert_eq!(event.event_id, created.event_id);
    assert_eq!(event.order_id, created.order_id);
    assert_eq!((event.customer_id.as_str(), event.amount.as_str(), event.currency.as_str()), ("c-9", "5.10", "USD"));
    assert_eq!(event.correlation_id, "corr-relay-1");
    // The database's time, as stored with the order, whichever way the relay got the row.
    assert_eq!(event.occurred_at, created.order.as_ref().unwrap().created_at);
    assert!(testkit::eventually(Duration::from_secs(5), || async { app.count("outbox_messages").await == 0 }).await);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn orders_are_taken_while_the_broker_is_cut_and_published_once_when_it_returns(pool: PgPool) {
    let proxy = FaultProxy::start(testkit::socket_addr_of(&testkit::amqp_url())).await;
    let amqp = testkit::amqp_connection().await;
    let mut consumer = testkit::subscribe(&amqp, "pulse.events", "order.created").await;
    let app = spawn_app(
        &pool,
        Options { relay: true, amqp_url: Some(testkit::via(&testkit::amqp_url(), proxy.addr())), ..Options::default() },
    )
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(crate::helpers::channel(app.addr).await);
    let status_of = |name: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service: name.into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    let relay_is = |wanted: i32| {
        let status_of = &status_of;
        move || async move { status_of(orders::startup::RELAY_HEALTH_NAME).await == wanted }
    };
    assert!(testkit::eventually(Duration::from_secs(10), relay_is(SERVING)).await, "relay connected");

    proxy.cut();
    let mut event_ids = Vec::new();
    for i in 0..5 {
        let mut client = app.client.clone();
        let created =
            client.create_order(order(&format!("c-{i}"), "3.00", "EUR")).await.expect("orders are still taken");
        event_ids.push(created.into_inner().event_id);
    }
    assert!(
        testkit::eventually(Duration::from_secs(10), relay_is(NOT_SERVING)).await,
        "the relay's own health shows the outage"
    );
    assert_eq!(status_of("pulse.orders.v1.OrderService").await, SERVING, "the API stays SERVING");
    assert_eq!(status_of("").await, SERVING);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.events().await, 5, "events wait in the outbox");
    assert!(deliveries_of(&mut consumer, &event_ids, Duration::from_millis(300)).await.is_empty());

    proxy.restore();
    let got = deliveries_of(&mut consumer, &event_ids, Duration::from_secs(8)).await;
    let mut ids: Vec<String> = got.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect();
    ids.sort();
    let mut expected = event_ids.clone();
    expected.sort();
    assert_eq!(ids, expected, "each event published exactly once after the outage");
    assert_eq!(app.count("outbox_messages").await, 0);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    app.stop().await;
}
