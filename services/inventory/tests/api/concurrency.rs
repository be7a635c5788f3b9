//! Reservations racing for the same stock never hold more than is on hand.

use contracts::inventory::v1::ReserveInventory;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn twenty_reservations_at_once_against_five_reserve_exactly_five(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&db);
    // One command per transaction, on three replicas: the reservations race for the stock row.
    config.inbox.batch_size = 1;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let replicas = [spawn_app(config.clone()).await, spawn_app(config.clone()).await, spawn_app(config).await];
    replicas[0].set_stock("HOT-1", 5).await.unwrap();
    let commands: Vec<ReserveInventory> =
        (0..20).map(|i| reserve(Uuid::new_v4(), vec![line("HOT-1", 1)], &format!("corr-race-{i}"))).collect();
    futures::future::join_all(commands.iter().map(|command| broker.reserve(command))).await;

    let mut replies = Vec::new();
    for _ in 0..20 {
        replies.push(broker.reply().await.reply);
    }
    let reserved = replies.iter().filter(|r| matches!(r, Reply::Reserved(_))).count();
    let failed = replies.iter().filter(|r| matches!(r, Reply::Failed(_))).count();
    assert_eq!((reserved, failed), (5, 15));
    let mut orders: Vec<&str> = replies.iter().map(Reply::order_id).collect();
    orders.sort_unstable();
    orders.dedup();
    assert_eq!(orders.len(), 20, "one reply per order");
    assert_eq!(replicas[0].stock("HOT-1").await, (5, 5, 0));
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM reservations WHERE status = 'RESERVED'").await, 5);
    for replica in replicas {
        replica.stop().await;
    }
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn batches_on_three_replicas_take_skus_in_either_order_without_overselling(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let replicas = [spawn_app(config.clone()).await, spawn_app(config.clone()).await, spawn_app(config).await];
    replicas[0].set_stock("SKU-A", 10).await.unwrap();
    replicas[0].set_stock("SKU-B", 10).await.unwrap();
    let commands: Vec<ReserveInventory> = (0..30)
        .map(|i| {
            let lines = if i % 2 == 0 {
                vec![line("SKU-A", 1), line("SKU-B", 1)]
            } else {
                vec![line("SKU-B", 1), line("SKU-A", 1)]
            };
            reserve(Uuid::new_v4(), lines, &format!("corr-order-{i}"))
        })
        .collect();
    futures::future::join_all(commands.iter().map(|command| broker.reserve(command))).await;

    let mut reserved = 0;
    for _ in 0..30 {
        reserved += usize::from(matches!(broker.reply().await.reply, Reply::Reserved(_)));
    }
    assert_eq!(reserved, 10);
    assert_eq!(replicas[0].stock("SKU-A").await, (10, 10, 0));
    assert_eq!(replicas[0].stock("SKU-B").await, (10, 10, 0));
    assert_eq!(broker.ready(&topology.dead_letter).await, 0, "nothing was dead-lettered");
    for replica in replicas {
        replica.stop().await;
    }
    broker.delete(&topology).await;
}
