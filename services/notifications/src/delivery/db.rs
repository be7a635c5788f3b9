//! The delivery tables: endpoints, deliveries and their attempts.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The Postgres channel the dispatchers LISTEN on; notified when deliveries become due.
pub(crate) const CHANNEL: &str = "pulse_deliveries";

/// The event types an endpoint can subscribe to (the consumed routing keys).
pub(crate) const EVENT_TYPES: &[&str] = &["order.created", "order.completed", "order.failed"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Webhook,
    Email,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }

    pub(crate) fn parse(raw: &str) -> Self {
        if raw == "email" { Self::Email } else { Self::Webhook }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Endpoint {
    pub(crate) endpoint_id: Uuid,
    pub(crate) kind: String,
    pub(crate) url: Option<String>,
    pub(crate) email_address: Option<String>,
    pub(crate) event_types: Vec<String>,
    pub(crate) description: String,
    pub(crate) enabled: bool,
    pub(crate) disabled_reason: String,
    pub(crate) created_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str =
    "endpoint_id, kind, url, email_address, event_types, description, enabled, disabled_reason, created_at";

#[derive(Debug, Clone)]
pub(crate) struct NewEndpoint {
    pub(crate) kind: Kind,
    pub(crate) url: Option<String>,
    pub(crate) email_address: Option<String>,
    pub(crate) event_types: Vec<String>,
    pub(crate) description: String,
    pub(crate) sealed_secret: Option<Vec<u8>>,
}

pub(crate) async fn insert_endpoint(pool: &PgPool, new: &NewEndpoint) -> Result<Endpoint, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO delivery_endpoints (endpoint_id, kind, url, email_address, event_types, description, secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.kind.as_str())
    .bind(&new.url)
    .bind(&new.email_address)
    .bind(&new.event_types)
    .bind(&new.description)
    .bind(&new.sealed_secret)
    .fetch_one(pool)
    .await
}

/// Where a page starts: after this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct After {
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

pub(crate) async fn page_endpoints(
    pool: &PgPool,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM delivery_endpoints
         WHERE $1::timestamptz IS NULL OR (created_at, endpoint_id) > ($1, $2)
         ORDER BY created_at, endpoint_id
         LIMIT $3"
    ))
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Enables or disables an endpoint; enabling forgets its failures and wakes the dispatchers.
pub(crate) async fn set_enabled(
    pool: &PgPool,
    endpoint_id: Uuid,
    enabled: bool,
    reason: &str,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let endpoint = sqlx::query_as(&format!(
        "UPDATE delivery_endpoints
         SET enabled = $2, disabled_reason = $3,
             failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END
         WHERE endpoint_id = $1
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(endpoint_id)
    .bind(enabled)
    .bind(if enabled { "" } else { reason })
    .fetch_optional(&mut *tx)
    .await?;
    if enabled && endpoint.is_some() {
        notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(endpoint)
}

/// What a rotation found.
pub(crate) enum Rotated {
    Done(Endpoint, DateTime<Utc>),
    NotWebhook,
    NotFound,
}

/// Makes `sealed` the endpoint's secret; the current one signs on until now + `window`.
pub(crate) async fn rotate_secret(
    pool: &PgPool,
    endpoint_id: Uuid,
    sealed: &[u8],
    window: std::time::Duration,
) -> Result<Rotated, sqlx::Error> {
    let row: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "UPDATE delivery_endpoints
         SET previous_secret = CASE WHEN kind = 'webhook' THEN secret END,
             previous_secret_expires_at = CASE WHEN kind = 'webhook' THEN now() + $3 END,
             secret = CASE WHEN kind = 'webhook' THEN $2 END
         WHERE endpoint_id = $1
         RETURNING kind, previous_secret_expires_at",
    )
    .bind(endpoint_id)
    .bind(sealed)
    .bind(window)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Rotated::NotFound,
        Some((kind, _)) if kind != "webhook" => Rotated::NotWebhook,
        Some((_, expires_at)) => {
            let endpoint = endpoint(pool, endpoint_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            Rotated::Done(endpoint, expires_at.unwrap_or_else(Utc::now))
        }
    })
}

pub(crate) async fn endpoint(pool: &PgPool, endpoint_id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ENDPOINT_COLUMNS} FROM delivery_endpoints WHERE endpoint_id = $1"))
        .bind(endpoint_id)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Delivery {
    pub(crate) delivery_id: Uuid,
    pub(crate) endpoint_id: Uuid,
    pub(crate) notification_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: String,
    pub(crate) last_status_code: i32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) delivered_at: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
}

const DELIVERY_COLUMNS: &str = "delivery_id, endpoint_id, notification_id, order_id, event_type, status, attempts, \
     last_error, last_status_code, next_attempt_at, delivered_at, created_at";

/// Whose deliveries a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Order(Uuid),
    Endpoint(Uuid),
}

pub(crate) async fn page_deliveries(
    pool: &PgPool,
    owner: Owner,
    status: Option<&str>,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let (column, id) = match owner {
        Owner::Order(id) => ("order_id", id),
        Owner::Endpoint(id) => ("endpoint_id", id),
    };
    sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries
         WHERE {column} = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (created_at, delivery_id) > ($3, $4))
         ORDER BY created_at, delivery_id
         LIMIT $5"
    ))
    .bind(id)
    .bind(status)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What a retry found.
pub(crate) enum Retried {
    Done(Delivery),
    NotFailed(String),
    NotFound,
}

/// Makes a FAILED delivery PENDING again, due now.
pub(crate) async fn retry_delivery(pool: &PgPool, delivery_id: Uuid) -> Result<Retried, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let retried: Option<Delivery> = sqlx::query_as(&format!(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), claimed_until = NULL
         WHERE delivery_id = $1 AND status = 'failed'
         RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery_id)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match retried {
        Some(delivery) => {
            notify(&mut tx).await?;
            Retried::Done(delivery)
        }
        None => {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM deliveries WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(&mut *tx)
                .await?;
            status.map_or(Retried::NotFound, Retried::NotFailed)
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Makes every FAILED delivery of an endpoint created at or after `since` PENDING again; None when
/// the endpoint does not exist.
pub(crate) async fn recover_endpoint(
    pool: &PgPool,
    endpoint_id: Uuid,
    since: Option<DateTime<Utc>>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let exists: Option<bool> = sqlx::query_scalar("SELECT true FROM delivery_endpoints WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let retried = sqlx::query(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), claimed_until = NULL
         WHERE endpoint_id = $1 AND status = 'failed' AND ($2::timestamptz IS NULL OR created_at >= $2)",
    )
    .bind(endpoint_id)
    .bind(since)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if retried > 0 {
        notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Some(retried))
}

/// Wakes the dispatchers at commit.
pub(crate) async fn notify(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(tx).await.map(drop)
}
