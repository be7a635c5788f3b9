//! The credit and payments tables; each query takes the caller's connection
//! or transaction.

use chrono::{DateTime, Utc};
use platform::consumer::Schemas;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The outbox's schema, the inbox's, then this service's own migrations.
pub(crate) fn schemas() -> Schemas {
    Schemas { outbox: true, migrator: sqlx::migrate!("../../migrations/payments"), retired: &[] }
}

/// Brings the database to the current [`schemas`].
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    platform::consumer::migrate(pool, schemas()).await
}

/// A payment's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Captured,
    Declined,
    Refunded,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "CAPTURED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [Self::Captured, Self::Declined, Self::Refunded].into_iter().find(|status| status.as_str() == raw)
    }
}

/// A payment as stored. Customer, currency and amount are None on the mark a
/// refund that came first leaves until the order's ProcessPayment arrives.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PaymentRow {
    pub(crate) payment_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) amount_minor: Option<i64>,
    pub(crate) status: String,
    pub(crate) detail: Option<String>,
    pub(crate) cancelled_by_refund: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl PaymentRow {
    pub(crate) fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }
}

/// What a new payment row holds.
#[derive(Debug, Clone)]
pub(crate) struct NewPayment<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: &'a str,
    pub(crate) currency: &'a str,
    pub(crate) amount_minor: i64,
    pub(crate) status: Status,
    pub(crate) detail: Option<String>,
}

const COLUMNS: &str = "payment_id, order_id, customer_id, currency, amount_minor, status, detail, cancelled_by_refund, created_at, updated_at";

/// The payment of `order_id`, row-locked until the transaction ends when `lock` is set.
pub(crate) async fn payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    lock: bool,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1{lock}"))
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// Inserts a payment unless the order has one (committed, or written by a
/// transaction still open, which is waited for): None then.
pub(crate) async fn insert_payment(
    conn: &mut PgConnection,
    new: &NewPayment<'_>,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO payments (payment_id, order_id, customer_id, currency, amount_minor, status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.order_id)
    .bind(new.customer_id)
    .bind(new.currency)
    .bind(new.amount_minor)
    .bind(new.status.as_str())
    .bind(new.detail.as_deref())
    .fetch_optional(conn)
    .await
}

/// Marks `order_id` cancelled by a refund that arrived before any payment;
/// None when the order already has a payment (or a mark).
pub(crate) async fn insert_cancellation(
    conn: &mut PgConnection,
    order_id: Uuid,
    detail: &str,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO payments (payment_id, order_id, status, detail, cancelled_by_refund)
         VALUES ($1, $2, 'DECLINED', $3, true) ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(detail)
    .fetch_optional(conn)
    .await
}

/// Completes a cancellation mark with what the late ProcessPayment asked.
pub(crate) async fn fill_cancelled(conn: &mut PgConnection, new: &NewPayment<'_>) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET customer_id = $2, currency = $3, amount_minor = $4, updated_at = clock_timestamp()
         WHERE order_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(new.order_id)
    .bind(new.customer_id)
    .bind(new.currency)
    .bind(new.amount_minor)
    .fetch_one(conn)
    .await
}

/// Sets a payment's status.
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: Status,
) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE payments SET status = $2, updated_at = clock_timestamp() WHERE order_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(order_id)
    .bind(status.as_str())
    .fetch_one(conn)
    .await
}

/// A customer's credit in one currency: the limit set (None: the default
/// applies) and the sum of the CAPTURED payments, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit {
    pub(crate) limit_minor: Option<i64>,
    pub(crate) used_minor: i64,
}

/// The limits of locked credit rows, by (customer, currency); None where no limit is set.
pub(crate) type Limits = std::collections::HashMap<(String, String), Option<i64>>;

/// Locks the credit rows of `credits` (customer, currency), creating the
/// missing ones without a limit, until the transaction ends, in one order
/// (customer, then currency) so that two batches queue up instead of
/// deadlocking; two statements however many they are. Returns their limits.
pub(crate) async fn lock_credits(conn: &mut PgConnection, credits: &[(&str, &str)]) -> Result<Limits, sqlx::Error> {
    let mut credits = credits.to_vec();
    credits.sort_unstable();
    credits.dedup();
    if credits.is_empty() {
        return Ok(Limits::new());
    }
    let (customers, currencies): (Vec<&str>, Vec<&str>) = credits.into_iter().unzip();
    sqlx::query(
        "INSERT INTO customer_credit (customer_id, currency) SELECT * FROM unnest($1::text[], $2::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&customers)
    .bind(&currencies)
    .execute(&mut *conn)
    .await?;
    // A statement of its own: it sees the rows a concurrent batch inserted
    // while the INSERT above waited for it.
    let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT customer_id, currency, limit_minor FROM customer_credit \
         WHERE (customer_id, currency) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
         ORDER BY customer_id, currency FOR UPDATE",
    )
    .bind(&customers)
    .bind(&currencies)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(customer, currency, limit)| ((customer, currency), limit)).collect())
}

/// The sum of the customer's CAPTURED payments in `currency`.
pub(crate) async fn used(conn: &mut PgConnection, customer_id: &str, currency: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM payments
         WHERE customer_id = $1 AND currency = $2 AND status = 'CAPTURED'",
    )
    .bind(customer_id)
    .bind(currency)
    .fetch_one(conn)
    .await
}

/// Sets the limit of (customer, currency) and returns the credit.
pub(crate) async fn set_limit(
    conn: &mut PgConnection,
    customer_id: &str,
    currency: &str,
    limit_minor: i64,
) -> Result<Credit, sqlx::Error> {
    sqlx::query(
        "INSERT INTO customer_credit (customer_id, currency, limit_minor) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id, currency)
         DO UPDATE SET limit_minor = EXCLUDED.limit_minor, updated_at = clock_timestamp()",
    )
    .bind(customer_id)
    .bind(currency)
    .bind(limit_minor)
    .execute(&mut *conn)
    .await?;
    Ok(Credit { limit_minor: Some(limit_minor), used_minor: used(conn, customer_id, currency).await? })
}

/// The credit of (customer, currency), whether or not a limit was set.
pub(crate) async fn credit(conn: &mut PgConnection, customer_id: &str, currency: &str) -> Result<Credit, sqlx::Error> {
    let limit_minor: Option<Option<i64>> =
        sqlx::query_scalar("SELECT limit_minor FROM customer_credit WHERE customer_id = $1 AND currency = $2")
            .bind(customer_id)
            .bind(currency)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Credit { limit_minor: limit_minor.flatten(), used_minor: used(conn, customer_id, currency).await? })
}
