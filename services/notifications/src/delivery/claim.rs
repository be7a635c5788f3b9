//! The dispatcher's statements: claiming due deliveries (one replica at a
//! time, under a lease) and recording each attempt's outcome.

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
/// each endpoint's room, skipping rows another replica is claiming. A claim
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
             ORDER BY r.next_attempt_at
             LIMIT $6
         )
         UPDATE deliveries d
         SET attempts = d.attempts + 1, next_attempt_at = now() + $7, claimed_until = now() + $7
         FROM chosen, delivery_endpoints e
         WHERE d.delivery_id = chosen.delivery_id AND e.endpoint_id = d.endpoint_id
         RETURNING d.delivery_id, d.endpoint_id, d.order_id, d.event_type, d.data, d.message, d.attempts,
                   d.traceparent, d.correlation_id, d.created_at, e.kind, e.url, e.email_address, e.secret,
                   e.previous_secret, e.previous_secret_expires_at",
    )
    .bind(&room.full)
    .bind(room.total.saturating_mul(4).max(64))
    .bind(&busy_ids)
    .bind(&busy_free)
    .bind(room.per_endpoint)
    .bind(room.total)
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

/// One attempt's result, as it is recorded.
#[derive(Debug, Clone)]
pub(crate) struct Attempted {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) duration: Duration,
    pub(crate) status_code: Option<u16>,
    pub(crate) error: String,
    /// `delivered`, `pending` (retried at `next_attempt_at`) or `failed`.
    pub(crate) status: &'static str,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    /// Whether the attempt counts as a failure of the endpoint.
    pub(crate) endpoint_failed: bool,
}

/// An endpoint just disabled for failing too long.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Disabled {
    pub(crate) endpoint_id: Uuid,
    pub(crate) kind: String,
    pub(crate) url: Option<String>,
    pub(crate) email_address: Option<String>,
    pub(crate) failing_since: DateTime<Utc>,
}

/// Records the attempt and the delivery's new state (unless another replica
/// has claimed it since, its lease having run out) and the endpoint's health;
/// an endpoint failing continuously for `disable_after` is disabled, with a
/// notification saying so. Returns whether the delivery row was updated and the endpoint disabled, if it was.
pub(crate) async fn record(
    pool: &PgPool,
    delivery: &Claimed,
    attempted: &Attempted,
    disable_after: Duration,
) -> Result<(bool, Option<Disabled>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (delivery_id, attempt) DO NOTHING",
    )
    .bind(delivery.delivery_id)
    .bind(delivery.attempts)
    .bind(attempted.started_at)
    .bind(attempted.duration.as_millis().min(i32::MAX as u128) as i32)
    .bind(attempted.status_code.map(i32::from))
    .bind(&attempted.error)
    .execute(&mut *tx)
    .await?;
    let updated = sqlx::query(
        "UPDATE deliveries
         SET status = $3, next_attempt_at = coalesce($4, next_attempt_at), claimed_until = NULL,
             last_error = $5, last_status_code = $6,
             delivered_at = CASE WHEN $3 = 'delivered' THEN clock_timestamp() END
         WHERE delivery_id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(delivery.delivery_id)
    .bind(delivery.attempts)
    .bind(attempted.status)
    .bind(attempted.next_attempt_at)
    .bind(&attempted.error)
    .bind(attempted.status_code.map_or(0, i32::from))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let disabled = if attempted.endpoint_failed {
        sqlx::query(
            "UPDATE delivery_endpoints SET failing_since = $2 WHERE endpoint_id = $1 AND failing_since IS NULL",
        )
        .bind(delivery.endpoint_id)
        .bind(attempted.started_at)
        .execute(&mut *tx)
        .await?;
        let disabled: Option<Disabled> = sqlx::query_as(
            "UPDATE delivery_endpoints
             SET enabled = false,
                 disabled_reason = 'disabled after its deliveries failed continuously since '
                     || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             WHERE endpoint_id = $1 AND enabled AND failing_since <= now() - $2
             RETURNING endpoint_id, kind, url, email_address, failing_since",
        )
        .bind(delivery.endpoint_id)
        .bind(disable_after)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(disabled) = &disabled {
            let target = disabled.url.as_deref().or(disabled.email_address.as_deref()).unwrap_or_default();
            let message = format!(
                "Delivery endpoint {} ({} {target}) was disabled: its deliveries failed continuously since {}",
                disabled.endpoint_id,
                disabled.kind,
                disabled.failing_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            sqlx::query(
                "INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(Uuid::nil())
            .bind(Uuid::new_v4())
            .bind(message)
            .bind(delivery.correlation_id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        disabled
    } else {
        if attempted.status == "delivered" {
            sqlx::query("UPDATE delivery_endpoints SET failing_since = NULL WHERE endpoint_id = $1 AND failing_since IS NOT NULL")
                .bind(delivery.endpoint_id)
                .execute(&mut *tx)
                .await?;
        }
        None
    };
    tx.commit().await?;
    Ok((updated, disabled))
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
