//! Queries on the orders table; each takes the caller's connection or transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::NewOrder;

/// An order as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    /// `numeric(20,2)` as text: always two decimals.
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub request_id: Option<Uuid>,
    pub event_id: Uuid,
    pub correlation_id: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "order_id, customer_id, amount::text AS amount, currency::text AS currency, status, \
                       request_id, event_id, correlation_id, created_at";

/// Inserts the order, or returns None when its `request_id` is already taken
/// (the earlier order wins; a concurrent twin waits for it to commit first).
pub async fn insert_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    event_id: Uuid,
    order: &NewOrder,
    correlation_id: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO orders (order_id, customer_id, amount, currency, request_id, event_id, correlation_id)
         VALUES ($1, $2, $3::numeric, $4, $5, $6, $7)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(order_id)
    .bind(order.customer_id.as_str())
    .bind(order.amount.to_string())
    .bind(order.currency.code())
    .bind(order.request_id)
    .bind(event_id)
    .bind(correlation_id)
    .fetch_optional(conn)
    .await
}

pub async fn find_by_request_id(conn: &mut PgConnection, request_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE request_id = $1"))
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

pub async fn find(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(conn)
        .await
}
