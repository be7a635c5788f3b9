use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use sqlx::PgPool;
use tokio::time::Instant;

use crate::support::{
    api, db,
    process::{Service, Spec},
    scratch::Scratch,
};

const RELAYS: usize = 3;
/// Orders a second, for `STREAM`; one relay is SIGKILLed and restarted every `TURN`.
const RATE: u64 = 20;
const STREAM: Duration = Duration::from_secs(40);
const TURN: Duration = Duration::from_secs(4);

/// Partition locks by holding backend, and the relays present (presence locks).
async fn ownership(pool: &PgPool) -> (BTreeMap<i32, BTreeSet<i64>>, i64) {
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT pid, classid::int8, objid::int8 FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .expect("read pg_locks");
    let mut partitions: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    let mut present = 0;
    for (pid, class, key) in rows {
        match class {
            // "PULS": partition locks; the next class: presence locks.
            0x5055_4c53 => {
                partitions.entry(pid).or_default().insert(key);
            }
            0x5055_4c54 => present += 1,
            _ => {}
        }
    }
    (partitions, present)
}

/// Three relay processes beside an API-only orders process, under a steady
/// stream of orders; each relay in turn is SIGKILLed and started again. Every
/// acknowledged order has exactly one notification, nothing stays in the
/// outbox, and afterwards the three running relays hold every partition
/// between them, each once, about a third each: no partition is left to a
/// relay that no longer publishes from it.
#[tokio::test(flavor = "multi_thread")]
async fn relays_killed_in_turn_under_load_leave_no_event_behind() {
    let scratch = Scratch::new().await;
    let notifications = Spec::notifications(&scratch).start().await;
    let api_only = Spec::orders(&scratch).env("ORDERS_ROLE", "api").start().await;
    let relay = Spec::orders(&scratch).env("ORDERS_ROLE", "relay").env("OUTBOX_REBALANCE_INTERVAL_MS", "300");
    let mut relays: Vec<Service> = Vec::new();
    for _ in 0..RELAYS {
        relays.push(relay.clone().start().await);
    }

    let addr = api_only.addr();
    let load = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE));
        let until = Instant::now() + STREAM;
        while Instant::now() < until {
            tick.tick().await;
            let created = api::create_order(addr, &format!("failover-{}", acknowledged.len())).await;
            acknowledged.push(created.order_id);
        }
        acknowledged
    });
    let mut kills = 0;
    while !load.is_finished() {
        tokio::time::sleep(TURN).await;
        let victim = &mut relays[kills % RELAYS];
        let status = victim.kill().await;
        assert!(!status.success(), "killed: {status}");
        victim.start().await;
        kills += 1;
    }
    let acknowledged = load.await.expect("load task");
    eprintln!("{} orders, {kills} relays killed and restarted", acknowledged.len());
    assert!(kills >= RELAYS, "each relay was killed at least once");

    let orders_db = scratch.orders_pool().await;
    let notifications_db = scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids(&acknowledged), Duration::from_secs(60)).await;
    assert!(db::outbox_drains(&orders_db, Duration::from_secs(10)).await, "the outbox drains");

    let settled = testkit::eventually(Duration::from_secs(15), || async {
        let (partitions, present) = ownership(&orders_db).await;
        let held: BTreeSet<i64> = partitions.values().flatten().copied().collect();
        let counted: usize = partitions.values().map(BTreeSet::len).sum();
        present == RELAYS as i64
            && partitions.len() == RELAYS
            && held.len() == 64
            && counted == 64
            && partitions.values().all(|owned| owned.len() <= 22)
    })
    .await;
    let (partitions, present) = ownership(&orders_db).await;
    let shares: Vec<usize> = partitions.values().map(BTreeSet::len).collect();
    assert!(settled, "{present} relays present; partition locks per backend: {shares:?}");
    drop(notifications);
}
