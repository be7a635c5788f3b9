//! Queries on the orders table; each takes the caller's connection or transaction.

use anyhow::Context;
use chrono::{DateTime, Utc};
use infra::pg::PoolSettings;
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use outbox::{Appended, OutboxMessage, WithEvents};

/// Creates the database if needed, opens a pool and brings it to the current
/// schema (see [`migrate`]).
pub async fn connect_and_migrate(url: &SecretString, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let pool = platform::db::connect(url, settings).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// The outbox's schema, then this service's own migrations. Version 1 of
/// those (the outbox's tables) now comes with the outbox crate: databases
/// that applied it still list it, which must not fail the start.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // One connection for both: a second would stay open in the pool.
    let mut conn = pool.acquire().await.context("cannot connect to the database")?;
    outbox::schema::apply(&mut conn).await.context("cannot apply the outbox schema")?;
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
}

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

const COLUMNS: &str = "order_id, customer_id, amount::text AS amount, currency::text AS currency, status, \
                       request_id, event_id, correlation_id, created_at";

/// Inserts the order and its outbox message in one statement (so one round
/// trip and one implicit transaction), or returns None when the order's
/// `request_id` is already taken: then neither is written (the earlier order
/// wins; a concurrent twin waits for it to commit first).
pub async fn insert_order_with_event(
    conn: &mut PgConnection,
    order: &OrderRow,
    event: &OutboxMessage,
) -> Result<Option<(OrderRow, Appended)>, sqlx::Error> {
    let mut statement = WithEvents::new();
    let query = statement.caller();
    query.push(
        "new_order AS (INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id, \
         correlation_id, created_at) VALUES (",
    );
    let mut values = query.separated(", ");
    values.push_bind(order.order_id);
    values.push_bind(order.customer_id.as_str());
    values.push_bind(order.amount.as_str());
    values.push_unseparated("::numeric");
    values.push_bind(order.currency.as_str());
    values.push_bind(order.status.as_str());
    values.push_bind(order.request_id);
    values.push_bind(order.event_id);
    values.push_bind(order.correlation_id.as_str());
    values.push_bind(order.created_at);
    query.push(format_args!(") ON CONFLICT (request_id) DO NOTHING RETURNING {COLUMNS})"));
    statement.event("new_order", event).fetch_optional(conn).await
}

/// [`insert_order_with_event`] for several orders in one statement (one
/// transaction, one commit): every order with its own event. Returns the
/// orders written, each with its outbox row; an order whose `request_id` is
/// already taken (also by an earlier order of the same call) is left out,
/// and so is its event.
pub async fn insert_orders_with_events(
    conn: &mut PgConnection,
    orders: &[(&OrderRow, &OutboxMessage)],
) -> Result<Vec<(OrderRow, Appended)>, sqlx::Error> {
    let text = |f: fn(&OrderRow) -> &str| orders.iter().map(|(o, _)| f(o)).collect::<Vec<_>>();
    let mut statement = WithEvents::new();
    let query = statement.caller();
    query.push("input AS (SELECT * FROM unnest(");
    query.push_bind(orders.iter().map(|(o, _)| o.order_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(text(|o| &o.customer_id)).push("::text[], ");
    query.push_bind(text(|o| &o.amount)).push("::text[], ");
    query.push_bind(text(|o| &o.currency)).push("::text[], ");
    query.push_bind(text(|o| &o.status)).push("::text[], ");
    query.push_bind(orders.iter().map(|(o, _)| o.request_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(orders.iter().map(|(o, _)| o.event_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(text(|o| &o.correlation_id)).push("::text[], ");
    query.push_bind(orders.iter().map(|(o, _)| o.created_at).collect::<Vec<_>>()).push("::timestamptz[]");
    query.push(format_args!(
        ") WITH ORDINALITY AS t(order_id, customer_id, amount, currency, status, request_id, event_id, \
         correlation_id, created_at, n)), \
         new_order AS (INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id, \
         correlation_id, created_at) \
         SELECT order_id, customer_id, amount::numeric, currency, status, request_id, event_id, correlation_id, \
         created_at FROM input ORDER BY n \
         ON CONFLICT (request_id) DO NOTHING RETURNING {COLUMNS})"
    ));
    let events: Vec<&OutboxMessage> = orders.iter().map(|(_, e)| *e).collect();
    statement.events("new_order", &events).fetch_all(conn).await
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

/// The orders among `order_ids` that are stored.
pub async fn find_many(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = ANY($1)"))
        .bind(order_ids)
        .fetch_all(conn)
        .await
}
