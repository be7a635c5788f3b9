//! Queries on the orders table; each takes the caller's connection or transaction.

use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use infra::pg::PoolSettings;
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use outbox::{Appended, OutboxMessage};

/// Creates the database if needed, opens a pool and brings it to the current
/// schema (see [`migrate`]).
pub async fn connect_and_migrate(url: &SecretString, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let pool = platform::db::connect(url, settings).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// The outbox's schema, then this service's own migrations. Version 1 of
/// those (the outbox's tables) now comes with the outbox crate: databases
/// that applied it still list it, which must not stop the start.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // One connection for both: a second would stay open in the pool.
    let mut conn = pool.acquire().await.context("cannot connect to the database")?;
    outbox::schema::apply(&mut conn).await.context("cannot apply the outbox schema")?;
    let mut migrator = sqlx::migrate!("../../migrations/orders");
    migrator.set_ignore_missing(true);
    migrator.run(&mut *conn).await.context("cannot apply migrations")?;
    Ok(())
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

/// The table these queries read and write (`db.collection.name` of their spans).
pub const TABLE: &str = "orders";

/// The orders table's primary key (on `order_id`), as constraint errors name it.
pub const ORDERS_PKEY: &str = "orders_pkey";

/// The status of a freshly created order.
pub const STATUS_CREATED: &str = "CREATED";

const COLUMNS: &str = "order_id, customer_id, amount::text AS amount, currency::text AS currency, status, \
                       request_id, event_id, correlation_id, created_at";

/// [`insert_order_with_event`]'s statement, built once.
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH new_order AS (
             INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id,
                                 correlation_id, created_at)
             VALUES ($1, $2, $3::numeric, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (request_id) DO NOTHING
             RETURNING {COLUMNS}
         ), event AS ({})
         SELECT new_order.*, event.id AS outbox_id, event.partition AS outbox_partition
         FROM new_order CROSS JOIN event",
        outbox::insert_from("new_order", 10)
    )
});

/// [`insert_orders_with_events`]'s statement, built once.
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                                  $7::uuid[], $8::text[], $9::timestamptz[]) WITH ORDINALITY
                 AS t(order_id, customer_id, amount, currency, status, request_id, event_id, correlation_id,
                      created_at, n)
         ), new_order AS (
             INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id,
                                 correlation_id, created_at)
             SELECT order_id, customer_id, amount::numeric, currency, status, request_id, event_id,
                    correlation_id, created_at
             FROM input ORDER BY n
             ON CONFLICT (request_id) DO NOTHING
             RETURNING {COLUMNS}
         ), event AS ({})
         SELECT new_order.*, event.id AS outbox_id, event.partition AS outbox_partition
         FROM new_order JOIN event USING (event_id)",
        outbox::insert_many_from("new_order", 10)
    )
});

/// Inserts the order and its outbox message in one statement (so one round
/// trip and one implicit transaction), or returns None when the order's
/// `request_id` is already taken: then neither is written (the earlier order
/// wins; a concurrent twin waits for it to commit first).
pub async fn insert_order_with_event(
    conn: &mut PgConnection,
    order: &OrderRow,
    event: &OutboxMessage,
) -> Result<Option<(OrderRow, Appended)>, sqlx::Error> {
    let query = sqlx::query_as::<_, InsertedRow>(&INSERT_ONE)
        .bind(order.order_id)
        .bind(&order.customer_id)
        .bind(&order.amount)
        .bind(&order.currency)
        .bind(&order.status)
        .bind(order.request_id)
        .bind(order.event_id)
        .bind(&order.correlation_id)
        .bind(order.created_at);
    let inserted = event.bind(query).fetch_optional(conn).await?;
    Ok(inserted.map(|row| (row.order, Appended { id: row.outbox_id, partition: row.outbox_partition })))
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
    let query = sqlx::query_as::<_, InsertedRow>(&INSERT_MANY)
        .bind(orders.iter().map(|(o, _)| o.order_id).collect::<Vec<_>>())
        .bind(text(|o| &o.customer_id))
        .bind(text(|o| &o.amount))
        .bind(text(|o| &o.currency))
        .bind(text(|o| &o.status))
        .bind(orders.iter().map(|(o, _)| o.request_id).collect::<Vec<_>>())
        .bind(orders.iter().map(|(o, _)| o.event_id).collect::<Vec<_>>())
        .bind(text(|o| &o.correlation_id))
        .bind(orders.iter().map(|(o, _)| o.created_at).collect::<Vec<_>>());
    let events: Vec<&OutboxMessage> = orders.iter().map(|(_, e)| *e).collect();
    let rows = OutboxMessage::bind_many(&events, query).fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.order, Appended { id: row.outbox_id, partition: row.outbox_partition }))
        .collect())
}

#[derive(sqlx::FromRow)]
struct InsertedRow {
    #[sqlx(flatten)]
    order: OrderRow,
    outbox_id: i64,
    outbox_partition: i16,
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
