//! How fast one replica drains a backlog of OrderCreated events.

use std::time::{Duration, Instant};

use contracts::events::v1::{ORDER_CREATED_ROUTING_KEY, ORDER_CREATED_TYPE};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

/// Run alone: `cargo nextest run -p notifications --release --run-ignored only throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run alone"]
async fn throughput_of_one_replica() {
    const EVENTS: usize = 30_000;
    let database = format!("pulse_notifications_bench_{}", Uuid::new_v4().simple());
    let admin = PgPool::connect(&testkit::database_url()).await.unwrap();
    let mut url = url::Url::parse(&testkit::database_url()).unwrap();
    url.set_path(&format!("/{database}"));
    let mut config = test_config(url.as_str(), &testkit::amqp_url());
    if let Ok(batch) = std::env::var("BENCH_BATCH") {
        config.inbox.batch_size = batch.parse().unwrap();
    }
    if let Ok(prefetch) = std::env::var("BENCH_PREFETCH") {
        config.inbox.prefetch = prefetch.parse().unwrap();
    }
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let broker = Broker::connect().await;
    broker.declare(&topology).await;

    let started = Instant::now();
    let events = (0..EVENTS).map(|i| {
        let (event_id, event) = order_created(&format!("corr-bench-{i}"));
        (
            properties(Some(&event_id.to_string()), Some(ORDER_CREATED_TYPE), &event.correlation_id),
            event.encode_to_vec(),
        )
    });
    broker.publish_backlog(&topology.exchange, ORDER_CREATED_ROUTING_KEY, events).await;
    println!("published {EVENTS} in {:?}", started.elapsed());

    let app = spawn_app(config).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while app.stats.snapshot().processed < EVENTS as u64 {
        assert!(Instant::now() < deadline, "drained only {:?}", app.stats.snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let rate = EVENTS as f64 / elapsed.as_secs_f64();
    println!("notifications consumed {EVENTS} in {elapsed:?}: {rate:.0} events/s");
    app.stop().await;
    broker.delete(&topology).await;
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&admin).await.unwrap();
    assert!(rate > 7000.0, "{rate:.0} events/s");
}
