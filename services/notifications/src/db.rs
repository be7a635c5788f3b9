//! The notifications table: one row per consumed order event (and the
//! deliveries written with it).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use platform::consumer::Schemas;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::delivery::Claimed;

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
    /// The deliveries claimed for this replica's dispatcher, by event id.
    pub(crate) claimed: HashMap<Uuid, Vec<Claimed>>,
}

/// Inserts inside the caller's transaction, in one statement, the new
/// notifications and, for each, a delivery per enabled endpoint subscribed to
/// its event type. An event that already made its notification is skipped
/// (the inbox should have caught it first; the unique event id holds even past
/// the inbox's dedup window), and so makes no delivery. With `claim` (a lease
/// and the endpoints to leave out), the deliveries of the other endpoints are
/// written claimed for this replica's dispatcher and returned; when unclaimed
/// deliveries were made, the same statement notifies the dispatchers (at commit).
pub(crate) async fn insert(
    tx: &mut PgConnection,
    new: &[NewNotification],
    claim: Option<&(Duration, Vec<Uuid>)>,
) -> Result<Inserted, sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let orders: Vec<Uuid> = new.iter().map(|n| n.order_id).collect();
    let events: Vec<Uuid> = new.iter().map(|n| n.event_id).collect();
    let messages: Vec<&str> = new.iter().map(|n| n.message.as_str()).collect();
    let correlations: Vec<&str> = new.iter().map(|n| n.correlation_id.as_str()).collect();
    let types: Vec<&str> = new.iter().map(|n| n.event_type).collect();
    let data: Vec<&str> = new.iter().map(|n| n.data.as_str()).collect();
    let traceparents: Vec<Option<&str>> = new.iter().map(|n| n.traceparent.as_deref()).collect();
    let rows = sqlx::query(
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
                                     traceparent, correlation_id, attempts, next_attempt_at, claimed_until)
             SELECT delivery_uuid_v7(), e.endpoint_id, i.notification_id, i.order_id, i.event_type, i.data::jsonb,
                    i.message, i.traceparent, i.correlation_id, CASE WHEN c.claim THEN 1 ELSE 0 END,
                    CASE WHEN c.claim THEN now() + $10 ELSE clock_timestamp() END,
                    CASE WHEN c.claim THEN now() + $10 END
             FROM inserted JOIN input i USING (notification_id)
             JOIN delivery_endpoints e
               ON e.enabled AND (cardinality(e.event_types) = 0 OR i.event_type = ANY (e.event_types))
             CROSS JOIN LATERAL (
                 SELECT $10::interval IS NOT NULL AND NOT (e.endpoint_id = ANY ($11::uuid[])) AS claim
             ) c
             RETURNING delivery_id, endpoint_id, notification_id, order_id, event_type, data, message, attempts,
                       traceparent, correlation_id, created_at, claimed_until IS NOT NULL AS claimed
         ), notified AS (
             SELECT pg_notify($9, '') FROM (SELECT FROM delivering WHERE NOT claimed LIMIT 1) AS any_delivery
         )
         SELECT n.event_id, d.delivery_id, d.endpoint_id, d.order_id, d.event_type, d.data, d.message, d.attempts,
                d.traceparent, d.correlation_id, d.created_at, e.kind, e.url, e.email_address, e.secret,
                e.previous_secret, e.previous_secret_expires_at
         FROM inserted n
         LEFT JOIN delivering d ON d.notification_id = n.notification_id AND d.claimed
         LEFT JOIN delivery_endpoints e ON e.endpoint_id = d.endpoint_id,
         (SELECT count(*) FROM notified) AS wake",
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
    .bind(claim.map(|(lease, _)| *lease))
    .bind(claim.map_or(&[][..], |(_, refused)| refused.as_slice()))
    .fetch_all(&mut *tx)
    .await?;
    let mut inserted = Inserted::default();
    for row in rows {
        let event_id: Uuid = row.try_get("event_id")?;
        inserted.events.insert(event_id);
        if row.try_get::<Option<Uuid>, _>("delivery_id")?.is_some() {
            inserted.claimed.entry(event_id).or_default().push(Claimed::from_row(&row)?);
        }
    }
    Ok(inserted)
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
