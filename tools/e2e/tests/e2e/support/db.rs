//! What the two databases hold: the ground truth behind every "exactly once".

use std::{collections::HashMap, time::Duration};

use sqlx::PgPool;
use uuid::Uuid;

pub(crate) fn uuids(ids: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<Uuid> {
    ids.into_iter().map(|id| Uuid::parse_str(id.as_ref()).expect("ids are UUIDs")).collect()
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// Notifications per order, for the orders in `order_ids` that have any.
pub(crate) async fn notifications_per_order(pool: &PgPool, order_ids: &[Uuid]) -> HashMap<Uuid, i64> {
    sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT order_id, count(*) FROM notifications WHERE order_id = ANY($1) GROUP BY order_id",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await
    .expect("count notifications")
    .into_iter()
    .collect()
}

/// Every order id in the orders database.
pub(crate) async fn all_orders(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT order_id FROM orders").fetch_all(pool).await.expect("read orders")
}

/// Waits (bounded) until every order in `order_ids` has a notification, then
/// asserts each has exactly one and that no order anywhere has two.
pub(crate) async fn assert_one_notification_each(pool: &PgPool, order_ids: &[Uuid], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut counts = notifications_per_order(pool, order_ids).await;
    while counts.len() < order_ids.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = notifications_per_order(pool, order_ids).await;
    }
    let arrived = counts.len() == order_ids.len();
    let missing = order_ids.iter().filter(|id| !counts.contains_key(id)).count();
    assert!(arrived, "{missing} of {} orders have no notification after {within:?}", order_ids.len());
    assert_no_duplicates(pool).await;
    let extra: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(extra.is_empty(), "orders with more than one notification: {extra:?}");
}

/// No order and no event has two notifications.
pub(crate) async fn assert_no_duplicates(pool: &PgPool) {
    let duplicated = count(
        pool,
        "SELECT count(*) FROM (SELECT order_id FROM notifications GROUP BY order_id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(duplicated, 0, "orders with more than one notification");
    let total = count(pool, "SELECT count(*) FROM notifications").await;
    let events = count(pool, "SELECT count(DISTINCT event_id) FROM notifications").await;
    assert_eq!(total, events, "one notification per event");
}

/// Waits (bounded) until the outbox holds no pending event; true when it got there.
pub(crate) async fn outbox_drains(pool: &PgPool, within: Duration) -> bool {
    testkit::eventually(within, || async { count(pool, "SELECT count(*) FROM outbox_messages").await == 0 }).await
}
