//! Queries on the orders table; each takes the caller's connection or transaction.

use anyhow::Context;
use chrono::{DateTime, Utc};
use infra::pg::PoolSettings;
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

mod insert;

pub use insert::{NewOrderRows, SagaStart, Written, insert_orders};

/// Creates the database if needed, opens a pool and brings it to the current
/// schema (see [`migrate`]).
pub async fn connect_and_migrate(url: &SecretString, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let pool = platform::db::connect(url, settings).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// The outbox's and the inbox's schemas, then this service's own migrations. Version 1 of
/// those (the outbox's tables) now comes with the outbox crate: databases
/// that applied it still list it, which must not fail the start.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // One connection for both: a second would stay open in the pool.
    let mut conn = pool.acquire().await.context("cannot connect to the database")?;
    outbox::schema::apply(&mut conn).await.context("cannot apply the outbox schema")?;
    inbox::schema::apply(&mut conn).await.context("cannot apply the inbox schema")?;
    platform::db::migrate_tolerating(&mut conn, sqlx::migrate!("../../migrations/orders"), &[1]).await
}

/// An order as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    /// `numeric` as text, with the decimals it was stored with: the currency's minor unit.
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub request_id: Option<Uuid>,
    pub event_id: Uuid,
    pub correlation_id: String,
    pub created_at: DateTime<Utc>,
    /// Set when the status is FAILED: `PAYMENT_DECLINED`, `OUT_OF_STOCK` or `TIMED_OUT`.
    pub failure_reason: Option<String>,
    pub failure_detail: Option<String>,
    /// When the status last changed (`created_at` until then).
    pub updated_at: DateTime<Utc>,
    /// The order's lines, read by a query of their own.
    #[sqlx(skip)]
    pub lines: Vec<OrderLine>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
}

/// The field of `occurred_at` in `OrderCreated` and in `ProcessPayment`,
/// which the relay adds to their payloads ([`outbox::WithEvents::occurred_at`]).
pub const OCCURRED_AT_FIELD: u32 = 6;

/// A stored time as protobuf carries it: the API's `created_at` and the
/// event's `occurred_at` (here, below both, so neither imports the other).
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// The table these queries read and write (`db.collection.name` of their spans).
pub const TABLE: &str = "orders";

/// The orders table's primary key (on `order_id`), as constraint errors name it.
pub const ORDERS_PKEY: &str = "orders_pkey";

/// The status of a freshly created order.
pub const STATUS_CREATED: &str = "CREATED";

pub(crate) const COLUMNS: &str = "order_id, customer_id, amount::text AS amount, currency::text AS currency, status, \
                       request_id, event_id, correlation_id, created_at, failure_reason, failure_detail, \
                       COALESCE(updated_at, created_at) AS updated_at";

/// The order created with `request_id`, with its lines.
pub async fn find_by_request_id(conn: &mut PgConnection, request_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    let found: Option<OrderRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE request_id = $1"))
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await?;
    with_lines(conn, found).await
}

/// The order `order_id`, with its lines.
pub async fn find(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    let found: Option<OrderRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await?;
    with_lines(conn, found).await
}

/// `order` with its lines read, in line order.
pub async fn with_lines(conn: &mut PgConnection, order: Option<OrderRow>) -> Result<Option<OrderRow>, sqlx::Error> {
    let Some(mut order) = order else { return Ok(None) };
    order.lines = lines_of(conn, &[order.order_id]).await?.pop().map(|(_, lines)| lines).unwrap_or_default();
    Ok(Some(order))
}

/// The lines of each of `order_ids` that has some, in line order.
pub async fn lines_of(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<Vec<(Uuid, Vec<OrderLine>)>, sqlx::Error> {
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT order_id, sku, quantity FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    let mut lines: Vec<(Uuid, Vec<OrderLine>)> = Vec::new();
    for (order_id, sku, quantity) in rows {
        let line = OrderLine { sku, quantity: quantity as u32 };
        match lines.last_mut() {
            Some((last, of_order)) if *last == order_id => of_order.push(line),
            _ => lines.push((order_id, vec![line])),
        }
    }
    Ok(lines)
}

/// The orders among `order_ids` that are stored.
pub async fn find_many(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = ANY($1)"))
        .bind(order_ids)
        .fetch_all(conn)
        .await
}
