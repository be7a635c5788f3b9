//! Losing the broker or the database connection, shutting down, and throughput.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{amqp::*, support::*};

#[sqlx::test(migrations = false)]
async fn reconnects_by_itself_after_losing_the_broker(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&testkit::amqp_url())).await;
    let config = config_for(&testkit::via(&testkit::amqp_url(), proxy.addr()));
    let (config, topology, broker, _sweep) = setup(&pool, config).await;
    let mut running = start(&pool, Recorder::default(), config);
    running.wait_connected(true).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("before")).await;
    let stats = running.stats.clone();
    let stats = &stats;
    eventually(|| async move { stats.snapshot().processed == 1 }).await;

    proxy.cut();
    running.wait_connected(false).await;
    // Published straight to the broker while the consumer is cut off: it waits in the queue.
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("during")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running.stats.snapshot().processed, 1);

    proxy.restore();
    running.wait_connected(true).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("after")).await;
    eventually(|| async move { stats.snapshot().processed == 3 }).await;
    assert!(running.stats.snapshot().reconnects >= 1);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(&pool).await.unwrap();
    assert_eq!(names, ["after", "before", "during"]);
    running.stop().await;
    broker.delete(&topology).await;
}

/// The backends that committed last in this test's database: the consumer's
/// batch connection is the only one that runs transactions.
async fn committing_backends(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'COMMIT' ORDER BY pid",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn batches_keep_one_connection_and_replace_it_when_it_dies(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let mut running = start(&pool, Recorder::default(), config);
    running.wait_connected(true).await;
    let stats = running.stats.clone();
    let stats = &stats;
    for n in 1..=3 {
        broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("kept")).await;
        eventually(|| async move { stats.snapshot().processed == n }).await;
    }
    let kept = committing_backends(&pool).await;
    assert_eq!(kept.len(), 1, "three batches, one connection: {kept:?}");

    // The backend dies between batches, as in a database restart or a failover.
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(kept[0]).fetch_one(&pool).await.unwrap();
    assert!(terminated);
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("after")).await;
    // Its first attempt meets the dead connection and goes to a retry tier; the
    // next one runs on a new connection.
    eventually(|| async move { stats.snapshot().processed == 4 }).await;
    let seen = running.stats.snapshot();
    assert_eq!((seen.retried, seen.dead_lettered), (1, 0));
    assert_eq!(count(&pool, "SELECT count(*) FROM things WHERE name = 'after'").await, 1);
    let replaced = committing_backends(&pool).await;
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced, kept, "the dead connection was replaced");
    running.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn shutdown_finishes_the_batch_in_hand_and_takes_no_more(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    for name in ["slow-1", "slow-2", "slow-3"] {
        broker
            .publish(
                &topology.exchange,
                Uuid::new_v4(),
                &Thing { name: name.into(), fail: "slow".into(), ..Thing::default() },
            )
            .await;
    }
    let recorder = Recorder::default();
    let running = start(&pool, recorder.clone(), config);
    let attempts = &recorder.attempts;
    eventually(|| async move { !attempts.lock().unwrap().is_empty() }).await;
    let mut connected = running.connected.clone();
    running.stop().await;
    assert!(!*connected.borrow_and_update(), "reports disconnected once stopped");
    let started = recorder.attempts.lock().unwrap().len() as i64;
    let done = count(&pool, "SELECT count(*) FROM things").await;
    assert_eq!(done, started, "every message whose handling had started was finished and committed");
    // The broker takes back the deliveries not yet handled (asynchronously, for a quorum queue).
    let (broker_ref, main) = (&broker, topology.main.as_str());
    eventually(|| async move { done + i64::from(broker_ref.ready(main).await) == 3 }).await;
    let left = broker.ready(&topology.main).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("late")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.ready(&topology.main).await, left + 1, "nothing consumes after shutdown");
    broker.delete(&topology).await;
}

/// Run with `cargo nextest run -p inbox --run-ignored only throughput --release`.
/// Publishes a backlog, then measures how fast one consumer drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run alone"]
async fn throughput() {
    const EVENTS: usize = 30_000;
    let database = format!("pulse_inbox_bench_{}", Uuid::new_v4().simple());
    let admin = PgPool::connect(&testkit::database_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.unwrap();
    let url = testkit::database_url();
    let url = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
    let pool = PgPool::connect(&url).await.unwrap();
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let mut config = config();
    config.prefetch = std::env::var("BENCH_PREFETCH").map_or(512, |v| v.parse().unwrap());
    config.batch_size = std::env::var("BENCH_BATCH").map_or(200, |v| v.parse().unwrap());
    let (config, topology, broker, _sweep) = setup(&pool, config).await;
    broker.declare(&topology).await;
    let started = Instant::now();
    let events = (0..EVENTS).map(|i| {
        let id = Uuid::new_v4();
        let body = prost::Message::encode_to_vec(&Thing::named(&format!("e{i}")).as_event(id));
        (properties(Some(&id.to_string()), Some(TYPE)), body)
    });
    broker.publish_backlog(&topology.exchange, ROUTING_KEY, events).await;
    println!("published {EVENTS} in {:?}", started.elapsed());

    let started = Instant::now();
    let running = start(&pool, Recorder::default(), config);
    let stats = &running.stats;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.snapshot().processed < EVENTS as u64 {
        assert!(Instant::now() < deadline, "drained only {:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let rate = EVENTS as f64 / elapsed.as_secs_f64();
    println!("consumed {EVENTS} in {elapsed:?}: {rate:.0} events/s");
    running.stop().await;
    broker.delete(&topology).await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&admin).await.unwrap();
    assert!(rate > 7000.0, "{rate:.0} events/s");
}
