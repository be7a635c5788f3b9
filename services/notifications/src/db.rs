//! The notifications table: one row per consumed OrderCreated event.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use platform::consumer::Schemas;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The inbox's schema, then this service's own migrations. Versions 1 and 3
/// of those (the inbox's tables) now come with the inbox crate: databases
/// that applied them still list them, which must not fail the start.
pub(crate) fn schemas() -> Schemas {
    Schemas { outbox: false, migrator: sqlx::migrate!("../../migrations/notifications"), retired: &[1, 3] }
}

/// Brings the database to the current [`schemas`].
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    platform::consumer::migrate(pool, schemas()).await
}

/// The table of notifications (`db.collection.name` of the statements' spans).
pub(crate) const TABLE: &str = "notifications";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Notification {
    pub(crate) notification_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) message: String,
    pub(crate) correlation_id: String,
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewNotification {
    pub(crate) order_id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) message: String,
    pub(crate) correlation_id: String,
}

/// Inserts inside the caller's transaction, in one statement, and returns the
/// event ids whose notification is new. An event that already made its notification is skipped
/// (the inbox should have caught it first; the unique event id holds even past
/// the inbox's dedup window).
pub(crate) async fn insert(tx: &mut PgConnection, new: &[NewNotification]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let orders: Vec<Uuid> = new.iter().map(|n| n.order_id).collect();
    let events: Vec<Uuid> = new.iter().map(|n| n.event_id).collect();
    let messages: Vec<&str> = new.iter().map(|n| n.message.as_str()).collect();
    let correlations: Vec<&str> = new.iter().map(|n| n.correlation_id.as_str()).collect();
    let inserted = sqlx::query_scalar(
        "INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&events)
    .bind(&messages)
    .bind(&correlations)
    .fetch_all(tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Where a page of one order's notifications starts: after this notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct After {
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) notification_id: Uuid,
}

/// Up to `limit` notifications of one order, oldest first (ties by id, so the
/// order is total and a page boundary never skips or repeats a row), after
/// `after` when given. Served by the `(order_id, created_at)` index.
pub(crate) async fn page_for_order(
    pool: &PgPool,
    order_id: Uuid,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as(
        "SELECT notification_id, order_id, event_id, message, correlation_id, created_at
         FROM notifications
         WHERE order_id = $1 AND ($2::timestamptz IS NULL OR (created_at, notification_id) > ($2, $3))
         ORDER BY created_at, notification_id
         LIMIT $4",
    )
    .bind(order_id)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.notification_id))
    .bind(limit)
    .fetch_all(pool)
    .await
}
