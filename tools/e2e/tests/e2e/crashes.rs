use std::{
    collections::HashSet,
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use crate::support::{
    System,
    api::{self, Burst},
    db,
};

const BURST: usize = 1_000;
const CONCURRENCY: usize = 16;
/// The signal goes out once this many calls were acknowledged: mid-burst.
const SIGNAL_AFTER: usize = 300;

/// Runs the burst against orders and calls `stop` once `SIGNAL_AFTER` calls
/// were acknowledged; returns what the burst got.
async fn burst_interrupted_by(system: &mut System, stop: impl AsyncFnOnce(&mut System)) -> Burst {
    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(api::burst(system.orders.addr(), BURST, CONCURRENCY, Arc::clone(&acked)));
    api::wait_for_acks(&acked, SIGNAL_AFTER, Duration::from_secs(60)).await;
    stop(system).await;
    let burst = tokio::time::timeout(Duration::from_secs(60), load).await.expect("the burst ends").expect("burst task");
    eprintln!("burst: {} acknowledged, {} failed", burst.acknowledged.len(), burst.failed);
    assert!(burst.acknowledged.len() >= SIGNAL_AFTER, "{burst:?}");
    assert!(
        burst.failed > 0,
        "the signal came mid-burst, so some calls failed: {} acknowledged",
        burst.acknowledged.len()
    );
    burst
}

/// Every acknowledged order is in the orders database, and every order there
/// (acknowledged or not: a call can fail after its commit) ends with exactly
/// one notification once orders runs again.
async fn assert_nothing_lost_nothing_doubled(system: &System, burst: &Burst) {
    let orders_db = system.scratch.orders_pool().await;
    let stored: HashSet<_> = db::all_orders(&orders_db).await.into_iter().collect();
    let acknowledged = db::uuids(burst.acknowledged.iter().map(|(order_id, _)| order_id));
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged orders missing from the database: {lost:?}");
    let notifications_db = system.scratch.notifications_pool().await;
    let all: Vec<_> = stored.into_iter().collect();
    db::assert_one_notification_each(&notifications_db, &all, Duration::from_secs(60)).await;
    let drained = db::outbox_drains(&orders_db, Duration::from_secs(10)).await;
    assert!(drained, "the outbox drains");
}

/// SIGKILL in the middle of 1,000 CreateOrder calls (16 at a time): after a
/// restart, every acknowledged order has exactly one notification.
#[tokio::test(flavor = "multi_thread")]
async fn serial_orders_killed_mid_burst_loses_no_acknowledged_order_and_doubles_none() {
    let mut system = System::start().await;
    let burst = burst_interrupted_by(&mut system, async |system: &mut System| {
        let status = system.orders.kill().await;
        assert!(!status.success(), "killed: {status}");
    })
    .await;
    system.orders.start().await;
    assert_nothing_lost_nothing_doubled(&system, &burst).await;
}

/// SIGTERM in the middle of the same load: orders finishes what it took and
/// exits 0; after a restart no acknowledged order is without its notification.
#[tokio::test(flavor = "multi_thread")]
async fn serial_sigterm_during_load_exits_0_and_loses_no_acknowledged_order() {
    let mut system = System::start().await;
    let burst = burst_interrupted_by(&mut system, async |system: &mut System| {
        let status = system.orders.terminate().await;
        assert_eq!(status.code(), Some(0), "orders exits 0 on SIGTERM");
    })
    .await;
    system.orders.start().await;
    assert_nothing_lost_nothing_doubled(&system, &burst).await;
}
