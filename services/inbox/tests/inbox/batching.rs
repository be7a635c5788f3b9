//! Batches linger for the rest of a burst only under heavy load.

use std::time::Duration;

use inbox::InboxConfig;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{amqp::Broker, support::*};

/// Runs a consumer with `config`, sends two events 100 ms apart and returns
/// how many transactions wrote their effects (distinct `xmin`s).
async fn transactions_for_two_events(pool: &PgPool, broker: &Broker, config: InboxConfig) -> i64 {
    sqlx::query("TRUNCATE things").execute(pool).await.unwrap();
    let topology = config.topology();
    let mut running = start(pool, Recorder::default(), config);
    running.wait_connected(true).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("first")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("second")).await;
    let stats = running.stats.clone();
    let stats = &stats;
    eventually(|| async move { stats.snapshot().processed == 2 }).await;
    running.stop().await;
    assert_eq!(count(pool, "SELECT count(*) FROM things").await, 2);
    count(pool, "SELECT count(DISTINCT xmin::text) FROM things").await
}

#[sqlx::test(migrations = false)]
async fn under_heavy_load_a_batch_waits_for_the_rest_of_a_burst(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let lingering =
        |from_rate: f64| InboxConfig { linger: Duration::from_secs(1), linger_from_rate: from_rate, ..config.clone() };

    // Heavy load from the first delivery on: the first event waits for the second.
    assert_eq!(transactions_for_two_events(&pool, &broker, lingering(0.0)).await, 1);
    // Light load (two events are far below 1,500 a second): each goes at once.
    assert_eq!(transactions_for_two_events(&pool, &broker, lingering(1_500.0)).await, 2);
    // No linger at all.
    assert_eq!(
        transactions_for_two_events(&pool, &broker, InboxConfig { linger: Duration::ZERO, ..lingering(0.0) }).await,
        2
    );
    assert_eq!(broker.ready(&topology.main).await, 0);
    broker.delete(&topology).await;
}
