//! The notifications table: one row per consumed order event (and the
//! deliveries written with it).

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
    /// The event's routing key (`order.created`), which endpoints subscribe to.
    pub(crate) event_type: &'static str,
    /// The event's fields as JSON: a webhook body's `data`.
    pub(crate) data: String,
    /// The consumer span's context, parent of every delivery attempt.
    pub(crate) traceparent: Option<String>,
}

/// What [`insert`] wrote.
#[derive(Debug, Default)]
pub(crate) struct Inserted {
    /// The events whose notification is new.
    pub(crate) events: HashSet<Uuid>,
}

/// Inserts inside the caller's transaction, in one statement, the new
/// notifications and, for each, a delivery per enabled endpoint subscribed to
/// its event type. An event that already made its notification is skipped
/// (the inbox should have caught it first; the unique event id holds even past
/// the inbox's dedup window), and so makes no delivery. When deliveries were
/// made, the same statement notifies the dispatchers (at commit).
pub(crate) async fn insert(tx: &mut PgConnection, new: &[NewNotification]) -> Result<Inserted, sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let orders: Vec<Uuid> = new.iter().map(|n| n.order_id).collect();
    let events: Vec<Uuid> = new.iter().map(|n| n.event_id).collect();
    let messages: Vec<&str> = new.iter().map(|n| n.message.as_str()).collect();
    let correlations: Vec<&str> = new.iter().map(|n| n.correlation_id.as_str()).collect();
    let types: Vec<&str> = new.iter().map(|n| n.event_type).collect();
    let data: Vec<&str> = new.iter().map(|n| n.data.as_str()).collect();
    let traceparents: Vec<Option<&str>> = new.iter().map(|n| n.traceparent.as_deref()).collect();
    let rows: Vec<Uuid> = sqlx::query_scalar(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
                 AS i (notification_id, order_id, event_id, message, correlation_id, event_type, data, traceparent)
         ), inserted AS (
             INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id)
             SELECT notification_id, order_id, event_id, message, correlation_id FROM input
             ON CONFLICT (event_id) DO NOTHING
             RETURNING notification_id, event_id
         ), delivering AS (
             INSERT INTO deliveries (delivery_id, endpoint_id, notification_id, order_id, event_type, data, message,
                                     traceparent, correlation_id)
             SELECT delivery_uuid_v7(), e.endpoint_id, i.notification_id, i.order_id, i.event_type, i.data::jsonb,
                    i.message, i.traceparent, i.correlation_id
             FROM inserted JOIN input i USING (notification_id)
             JOIN delivery_endpoints e
               ON e.enabled AND (cardinality(e.event_types) = 0 OR i.event_type = ANY (e.event_types))
             RETURNING 1
         ), notified AS (
             SELECT pg_notify($9, '') FROM (SELECT FROM delivering LIMIT 1) AS any_delivery
         )
         SELECT event_id FROM inserted, (SELECT count(*) FROM notified) AS wake",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&events)
    .bind(&messages)
    .bind(&correlations)
    .bind(&types)
    .bind(&data)
    .bind(&traceparents)
    .bind(crate::delivery::db::CHANNEL)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Inserted { events: rows.into_iter().collect() })
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
