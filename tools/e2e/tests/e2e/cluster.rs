//! Pulse on a three-node RabbitMQ cluster (build-support/scripts/rabbitmq-cluster.sh)
//! with two replicas of each service, under a steady stream of orders while a
//! broker node, a replica of each service and the main queue's leader go.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use lapin::{
    ExchangeKind,
    options::{BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::PgPool;
use tokio::{sync::Semaphore, time::Instant};
use uuid::Uuid;

use crate::support::{
    api,
    broker::{self, DEAD_LETTER_QUEUE, EXCHANGE, MAIN_QUEUE, ROUTING_KEY},
    cluster::Cluster,
    db,
    process::{Service, Spec},
    scratch::Scratch,
};

const ORDERS: usize = 5_000;
/// Orders a second: 5,000 take about 2 minutes, long enough for every fault
/// to land while orders still arrive, each broker command being a few seconds.
const RATE: u64 = 40;
/// A copy of every OrderCreated, read at the end for the order the broker held.
const AUDIT_QUEUE: &str = "pulse.e2e.audit";

/// CreateOrder on one replica, else on the other (the same request id, so an
/// order written by a call whose answer was lost is not written twice).
async fn create(replicas: [SocketAddr; 2], i: usize) -> Option<String> {
    let request_id = Uuid::new_v4().to_string();
    let mut refused = None;
    for attempt in 0..6 {
        let mut request = api::order_request(&format!("cluster-{}", i % 500));
        request.request_id.clone_from(&request_id);
        match api::orders(replicas[(i + attempt) % 2]).create_order(request).await {
            Ok(created) => return Some(created.into_inner().order_id),
            Err(status) => refused = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("order {i} not acknowledged: {refused:?}");
    None
}

/// Milliseconds since the epoch of each order's creation, or of its first notification.
async fn times(pool: &PgPool, sql: &str) -> HashMap<Uuid, f64> {
    sqlx::query_as::<_, (Uuid, f64)>(sql).fetch_all(pool).await.expect("read times").into_iter().collect()
}

fn node_number(node: &str) -> u8 {
    node.strip_prefix("pulse-").and_then(|rest| rest.split('@').next()).and_then(|n| n.parse().ok()).unwrap_or(2)
}

/// Two `orders` replicas (API and relay) and two `notifications` replicas on
/// the cluster, 5,000 orders at a steady rate; meanwhile the node leading
/// the main queue is SIGKILLed and started again, one replica of each
/// service is SIGKILLed and started again, and the main queue's leader is
/// moved. Every order has exactly one notification, the outbox is empty, the
/// dead-letter queue is empty, and the broker held each aggregate's events in
/// outbox order.
#[tokio::test(flavor = "multi_thread")]
async fn serial_cluster_survives_a_node_replicas_and_a_leader_move_under_load() {
    let cluster = Cluster::up().await;
    let scratch = Scratch::new().await;

    // The audit queue first, so it sees every event.
    let audit = lapin::Connection::connect(cluster.urls.split(',').next().expect("a URL"), Default::default())
        .await
        .expect("connect to node 1");
    let channel = audit.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            ShortString::from(EXCHANGE),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    let mut quorum = FieldTable::default();
    quorum.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(ShortString::from(AUDIT_QUEUE), QueueDeclareOptions::durable(), quorum)
        .await
        .expect("declare the audit queue");
    channel
        .queue_bind(
            ShortString::from(AUDIT_QUEUE),
            ShortString::from(EXCHANGE),
            ShortString::from(ROUTING_KEY),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the audit queue");
    drop(channel);
    let _ = audit.close(200, "bye".into()).await;

    let notifications_spec = Spec::notifications(&scratch).env("AMQP_URL", &cluster.urls);
    let orders_spec = Spec::orders(&scratch).env("AMQP_URL", &cluster.urls);
    let mut notifications: Vec<Service> = Vec::new();
    for _ in 0..2 {
        notifications.push(notifications_spec.clone().start().await);
    }
    let mut orders: Vec<Service> = Vec::new();
    for _ in 0..2 {
        orders.push(orders_spec.clone().start().await);
    }
    let replicas = [orders[0].addr(), orders[1].addr()];
    let leader = cluster.leader(MAIN_QUEUE).await;

    let started = Instant::now();
    let load = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(32));
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        let mut calls = Vec::with_capacity(ORDERS);
        for i in 0..ORDERS {
            tick.tick().await;
            let slot = Arc::clone(&slots).acquire_owned().await.expect("semaphore");
            calls.push(tokio::spawn(async move {
                let created = create(replicas, i).await;
                drop(slot);
                created
            }));
        }
        let mut acknowledged = Vec::with_capacity(ORDERS);
        for call in calls {
            acknowledged.extend(call.await.expect("order task"));
        }
        acknowledged
    });

    let stream = Duration::from_secs(ORDERS as u64 / RATE);
    let at = |fraction: f64| started + stream.mul_f64(fraction);
    // A broker node stopped hard and started again: the one leading the main queue.
    tokio::time::sleep_until(at(0.1)).await;
    let node = node_number(&leader);
    cluster.kill(node).await;
    eprintln!("{:?}: node {leader} killed", started.elapsed());
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.start(node).await;
    eprintln!("{:?}: node {leader} started again", started.elapsed());
    // One replica of each service SIGKILLed and started again.
    tokio::time::sleep_until(at(0.35)).await;
    assert!(!orders[0].kill().await.success(), "orders killed");
    assert!(!notifications[0].kill().await.success(), "notifications killed");
    eprintln!("{:?}: one replica of each service killed", started.elapsed());
    orders[0].start().await;
    notifications[0].start().await;
    // The main queue's leader moved to another node.
    tokio::time::sleep_until(at(0.6)).await;
    assert!(!load.is_finished(), "orders still arrive when the leader moves");
    let moved = cluster.move_leader(MAIN_QUEUE).await;
    eprintln!("{:?}: leader of {MAIN_QUEUE} moved to {moved}", started.elapsed());

    let acknowledged = load.await.expect("load task");
    eprintln!("{:?}: {} of {ORDERS} orders acknowledged", started.elapsed(), acknowledged.len());
    assert!(acknowledged.len() >= ORDERS * 99 / 100, "{} of {ORDERS} orders acknowledged", acknowledged.len());

    let orders_db = scratch.orders_pool().await;
    let notifications_db = scratch.notifications_pool().await;
    // Every order written (acknowledged or not) has exactly one notification.
    let written = db::all_orders(&orders_db).await;
    assert!(db::uuids(&acknowledged).iter().all(|id| written.contains(id)), "every acknowledged order is stored");
    db::assert_one_notification_each(&notifications_db, &written, Duration::from_secs(90)).await;
    assert!(db::outbox_drains(&orders_db, Duration::from_secs(10)).await, "the outbox drains");

    let observer = lapin::Connection::connect(cluster.urls.split(',').nth(2).expect("3 URLs"), Default::default())
        .await
        .expect("connect to node 3");
    let channel = observer.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let dead = channel
        .queue_declare(ShortString::from(DEAD_LETTER_QUEUE), passive, FieldTable::default())
        .await
        .expect("the dead-letter queue exists")
        .message_count();
    assert_eq!(dead, 0, "the dead-letter queue is empty");

    // The order the broker held: per aggregate, outbox sequence numbers never go back.
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    let mut out_of_order = Vec::new();
    let mut audited = 0usize;
    while let Some(message) = channel
        .basic_get(ShortString::from(AUDIT_QUEUE), BasicGetOptions { no_ack: true })
        .await
        .expect("get from the audit queue")
    {
        audited += 1;
        let aggregate = broker::header(&message.properties, "x-aggregate-id").expect("x-aggregate-id");
        let seq = match message.properties.headers().as_ref().and_then(|h| h.inner().get("x-outbox-seq").cloned()) {
            Some(AMQPValue::LongLongInt(seq)) => seq,
            other => panic!("x-outbox-seq: {other:?}"),
        };
        let previous = last_seq.insert(aggregate.clone(), seq);
        if previous.is_some_and(|p| p > seq) {
            out_of_order.push((aggregate, previous, seq));
        }
    }
    let _ = observer.close(200, "bye".into()).await;
    assert!(audited >= written.len(), "{audited} events at the broker for {} orders", written.len());
    assert_eq!(last_seq.len(), written.len(), "one aggregate per order at the broker");
    assert!(out_of_order.is_empty(), "events out of outbox order: {out_of_order:?}");

    let created = times(&orders_db, "SELECT order_id, extract(epoch FROM created_at)::float8 * 1000 FROM orders").await;
    let notified = times(
        &notifications_db,
        "SELECT order_id, extract(epoch FROM min(created_at))::float8 * 1000 FROM notifications GROUP BY order_id",
    )
    .await;
    let longest = created.iter().filter_map(|(id, at)| notified.get(id).map(|n| n - at)).fold(0.0f64, f64::max);
    eprintln!(
        "{} orders, {audited} events at the broker, longest order-to-notification delay {longest:.0} ms",
        written.len()
    );
    drop(orders);
    drop(notifications);
}
