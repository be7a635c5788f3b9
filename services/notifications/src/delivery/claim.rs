//! The dispatcher's statements: claiming due deliveries (one replica at a
//! time, under a lease) and giving back claims that were not sent. Outcomes
//! are recorded by [`super::record`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Claimed {
    pub(crate) delivery_id: Uuid,
    pub(crate) endpoint_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) data: serde_json::Value,
    pub(crate) message: String,
    /// This attempt's number.
    pub(crate) attempts: i32,
    pub(crate) traceparent: Option<String>,
    pub(crate) correlation_id: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) kind: String,
    pub(crate) url: Option<String>,
    pub(crate) email_address: Option<String>,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) previous_secret: Option<Vec<u8>>,
    pub(crate) previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl Claimed {
    /// A claimed webhook delivery of `endpoint_id` with nothing else set.
    #[cfg(test)]
    pub(crate) fn of_endpoint(endpoint_id: Uuid) -> Self {
        Self {
            delivery_id: Uuid::now_v7(),
            endpoint_id,
            order_id: Uuid::nil(),
            event_type: String::new(),
            data: serde_json::Value::Null,
            message: String::new(),
            attempts: 1,
            traceparent: None,
            correlation_id: String::new(),
            created_at: chrono::Utc::now(),
            kind: "webhook".into(),
            url: None,
            email_address: None,
            secret: None,
            previous_secret: None,
            previous_secret_expires_at: None,
        }
    }

    /// The webhook body; the same on every attempt.
    pub(crate) fn body(&self) -> String {
        serde_json::json!({
            "type": self.event_type,
            "timestamp": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": self.data,
        })
        .to_string()
    }
}

/// What a claim may take.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// At most this many in all.
    pub(crate) total: i64,
    /// Endpoints with no room at all (full, or their circuit open).
    pub(crate) full: Vec<Uuid>,
    /// Endpoints with some attempts in flight and the room they have left.
    pub(crate) busy: Vec<(Uuid, i32)>,
    /// The room of an endpoint with nothing in flight.
    pub(crate) per_endpoint: i32,
}

/// Claims up to `room.total` due deliveries of enabled endpoints, at most
/// each endpoint's room, skipping rows another replica is claiming (the rows
/// looked at are locked until the statement ends, hence a tight `room.total`). A claim
/// counts an attempt and pushes the row's due time `lease` ahead: if this
/// replica dies mid-attempt, the delivery comes due again then.
pub(crate) async fn claim(pool: &PgPool, room: &Room, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    let (busy_ids, busy_free): (Vec<Uuid>, Vec<i32>) = room.busy.iter().copied().unzip();
    sqlx::query_as(
        "WITH candidates AS (
             SELECT d.delivery_id, d.endpoint_id, d.next_attempt_at
             FROM deliveries d
             WHERE d.status = 'pending' AND d.next_attempt_at <= now()
               AND NOT (d.endpoint_id = ANY ($1::uuid[]))
               AND EXISTS (SELECT 1 FROM delivery_endpoints e WHERE e.endpoint_id = d.endpoint_id AND e.enabled)
             ORDER BY d.next_attempt_at
             LIMIT $2
             FOR UPDATE OF d SKIP LOCKED
         ), chosen AS (
             SELECT r.delivery_id FROM (
                 SELECT c.delivery_id, c.endpoint_id, c.next_attempt_at,
                        row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at) AS rank
                 FROM candidates c
             ) r
             LEFT JOIN unnest($3::uuid[], $4::int[]) AS busy (endpoint_id, free) USING (endpoint_id)
             WHERE r.rank <= coalesce(busy.free, $5)
         )
         UPDATE deliveries d
         SET attempts = d.attempts + 1, next_attempt_at = now() + $6, claimed_until = now() + $6
         FROM chosen, delivery_endpoints e
         WHERE d.delivery_id = chosen.delivery_id AND e.endpoint_id = d.endpoint_id
         RETURNING d.delivery_id, d.endpoint_id, d.order_id, d.event_type, d.data, d.message, d.attempts,
                   d.traceparent, d.correlation_id, d.created_at, e.kind, e.url, e.email_address, e.secret,
                   e.previous_secret, e.previous_secret_expires_at",
    )
    .bind(&room.full)
    .bind(room.total)
    .bind(&busy_ids)
    .bind(&busy_free)
    .bind(room.per_endpoint)
    .bind(lease)
    .fetch_all(pool)
    .await
}

/// When the next delivery an endpoint with room could take comes due.
pub(crate) async fn next_due(pool: &PgPool, full: &[Uuid]) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(d.next_attempt_at) FROM deliveries d
         WHERE d.status = 'pending' AND NOT (d.endpoint_id = ANY ($1::uuid[]))
           AND EXISTS (SELECT 1 FROM delivery_endpoints e WHERE e.endpoint_id = d.endpoint_id AND e.enabled)",
    )
    .bind(full)
    .fetch_one(pool)
    .await
}

/// Gives back claimed deliveries that were not sent (the endpoint's circuit
/// opened, the replica is stopping, or the claim waited too long): the claim's
/// attempt is uncounted and the delivery is due again at `due`, for any replica.
pub(crate) async fn release(pool: &PgPool, deliveries: &[&Claimed], due: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE deliveries d
         SET attempts = d.attempts - 1, next_attempt_at = $3, claimed_until = NULL
         FROM unnest($1::uuid[], $2::int[]) AS v (delivery_id, attempt)
         WHERE d.delivery_id = v.delivery_id AND d.attempts = v.attempt AND d.status = 'pending'",
    )
    .bind(deliveries.iter().map(|d| d.delivery_id).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.attempts).collect::<Vec<_>>())
    .bind(due)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// The gauges' figures: pending deliveries, the oldest one's age in seconds, disabled endpoints.
pub(crate) async fn gauges(pool: &PgPool) -> Result<(i64, f64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'),
                coalesce((SELECT extract(epoch FROM now() - min(created_at))::float8 FROM deliveries WHERE status = 'pending'), 0),
                (SELECT count(*) FROM delivery_endpoints WHERE NOT enabled)",
    )
    .fetch_one(pool)
    .await
}
