//! The database and the broker going away while events arrive, and shutdown.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn a_database_outage_is_retried_and_loses_nothing(_: PgPoolOptions, db: PgConnectOptions) {
    let direct = database_url(&db);
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&direct)).await;
    let mut config = test_config(&testkit::via(&direct, proxy.addr()), &testkit::amqp_url());
    // Room for a few seconds of outage: 0.25 + 0.5 + 1 + 2 × 8 s of retries.
    config.inbox.retry_delays = [250, 500, 1000, 2000].map(Duration::from_millis).to_vec();
    config.inbox.max_attempts = 12;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;

    proxy.cut();
    let mut orders = Vec::new();
    for i in 0..100 {
        let (event_id, event) = order_created(&format!("corr-outage-{i}"));
        broker.publish(&topology.exchange, event_id, &event).await;
        orders.push(event.order_id);
    }
    // Every event fails about twice while the database is away, each time
    // parked in a slower tier than before.
    let stats = &app.stats;
    eventually(|| async move { stats.snapshot().retried >= 200 }).await;
    assert_eq!(app.stats.snapshot().processed, 0);
    proxy.restore();

    let pool = pool(&db).await;
    let pool_ref = &pool;
    eventually(|| async move { count(pool_ref, "SELECT count(*) FROM notifications").await == 100 }).await;
    for order_id in &orders {
        assert_eq!(app.list(order_id).await.unwrap().len(), 1, "order {order_id}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM processed_events").await, 100);
    let seen = app.stats.snapshot();
    assert_eq!((seen.processed, seen.dead_lettered), (100, 0));
    assert_eq!(broker.ready(&topology.dead_letter).await, 0, "nothing was dead-lettered");
    for (_, retry_queue) in &topology.retries {
        assert_eq!(broker.ready(retry_queue).await, 0, "nothing left waiting in {retry_queue}");
    }
    app.stop().await;
    pool.close().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_lost_broker_connection_recovers_without_a_restart(_: PgPoolOptions, db: PgConnectOptions) {
    let amqp = testkit::amqp_url();
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&amqp)).await;
    let config = test_config(&database_url(&db), &testkit::via(&amqp, proxy.addr()));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let consumer = notifications::CONSUMER_HEALTH_NAME;
    app.wait_health(consumer, ServingStatus::Serving).await;
    let broker = Broker::connect().await;
    let app_ref = &app;
    let listed = |order: String| async move { app_ref.list(&order).await.unwrap().len() == 1 };

    let (id, before) = order_created("corr-before-cut");
    broker.publish(&topology.exchange, id, &before).await;
    eventually(|| listed(before.order_id.clone())).await;

    proxy.cut();
    app.wait_health(consumer, ServingStatus::NotServing).await;
    app.wait_health("", ServingStatus::Serving).await;
    assert_eq!(app.health(platform::grpc::LIVENESS).await, ServingStatus::Serving);
    let (id, during) = order_created("corr-during-cut");
    broker.publish(&topology.exchange, id, &during).await;

    proxy.restore();
    app.wait_health(consumer, ServingStatus::Serving).await;
    let (id, after) = order_created("corr-after-cut");
    broker.publish(&topology.exchange, id, &after).await;
    eventually(|| listed(during.order_id.clone())).await;
    eventually(|| listed(after.order_id.clone())).await;
    assert!(app.stats.snapshot().reconnects >= 1);
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn shutdown_stops_the_consumer_and_exits_cleanly(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    app.wait_health("", ServingStatus::Serving).await;
    let connected = app.connected.clone();
    app.stop().await;
    assert!(!*connected.borrow(), "the consumer reports disconnected");
    let broker = Broker::connect().await;
    let (id, late) = order_created("corr-late");
    broker.publish(&topology.exchange, id, &late).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.ready(&topology.main).await, 1, "nobody consumes after shutdown");
    broker.delete(&topology).await;
}
