use std::collections::BTreeMap;

use sqlx::PgPool;

use super::*;

/// Partition locks in `pg_locks`, by the backend holding them.
async fn locks_by_backend(pool: &PgPool) -> BTreeMap<i32, BTreeSet<i16>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT pid, objid::int8 FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = {PARTITION_CLASS}
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    let mut locks: BTreeMap<i32, BTreeSet<i16>> = BTreeMap::new();
    for (pid, partition) in rows {
        locks.entry(pid).or_default().insert(partition as i16);
    }
    locks
}

async fn backend(ownership: &mut Ownership) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut ownership.conn).await.unwrap()
}

/// Rebalances each relay in turn until none is short (a few rounds at most).
async fn settle(relays: &mut [&mut Ownership]) {
    for _ in 0..4 {
        let mut short = false;
        for relay in relays.iter_mut() {
            short |= relay.rebalance().await.unwrap();
        }
        if !short {
            return;
        }
    }
    panic!("relays did not settle");
}

/// What Postgres holds is exactly what the relays claim from, every
/// partition once.
async fn assert_locks_match(pool: &PgPool, relays: &mut [&mut Ownership]) {
    let locks = locks_by_backend(pool).await;
    let mut all = BTreeSet::new();
    for relay in relays.iter_mut() {
        let pid = backend(relay).await;
        assert_eq!(locks.get(&pid).cloned().unwrap_or_default(), relay.owned, "backend {pid}");
        all.extend(relay.owned.iter().copied());
    }
    assert_eq!(locks.len(), relays.len(), "no other session holds a partition: {locks:?}");
    assert_eq!(all.len(), PARTITIONS as usize, "every partition is owned");
}

/// The fail-over that stranded partitions: a relay that took partitions back
/// after its peer crashed must give them back whole when the peer returns.
#[sqlx::test(migrations = false)]
async fn a_restarted_relay_gets_its_share_and_no_lock_is_left_behind(pool: PgPool) {
    crate::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let options = pool.connect_options().as_ref().clone();
    let mut a = Ownership::connect(&options, LocalRelay::default()).await.unwrap();
    let mut b = Ownership::connect(&options, LocalRelay::default()).await.unwrap();
    settle(&mut [&mut a, &mut b]).await;
    assert_eq!((a.owned(), b.owned()), (32, 32));

    for _ in 0..3 {
        b.close().await;
        // The server ends the session (and drops its locks) just after the close.
        let gone = async || locks_by_backend(&pool).await.len() == 1;
        while !gone().await {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        settle(&mut [&mut a]).await;
        assert_eq!(a.owned(), 64, "the survivor takes every partition");
        b = Ownership::connect(&options, LocalRelay::default()).await.unwrap();
        settle(&mut [&mut a, &mut b]).await;
        assert_eq!((a.owned(), b.owned()), (32, 32));
        assert_locks_match(&pool, &mut [&mut a, &mut b]).await;
    }
}

/// A partition locked twice by a relay's session, or locked but no longer
/// claimed from, is released whole, and a peer takes it.
#[sqlx::test(migrations = false)]
async fn stacked_and_stray_locks_are_repaired(pool: PgPool) {
    crate::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let options = pool.connect_options().as_ref().clone();
    let mut a = Ownership::connect(&options, LocalRelay::default()).await.unwrap();
    settle(&mut [&mut a]).await;
    for partition in [3, 63] {
        for _ in 0..2 {
            sqlx::query("SELECT pg_advisory_lock($1, $2)")
                .bind(PARTITION_CLASS)
                .bind(partition)
                .execute(&mut a.conn)
                .await
                .unwrap();
        }
    }
    // Stray: still locked (three times over), no longer claimed from.
    a.owned.remove(&3);
    assert!(!a.rebalance().await.unwrap());
    assert!(a.owned.contains(&3), "taken again once its stray lock was released whole");

    // 63 is held three times and is among the partitions a gives back.
    let mut b = Ownership::connect(&options, LocalRelay::default()).await.unwrap();
    settle(&mut [&mut a, &mut b]).await;
    assert!(b.owned.contains(&63), "released whole, so the newcomer could take it");
    assert_locks_match(&pool, &mut [&mut a, &mut b]).await;
}
