//! Queries on the orders table; each takes the caller's connection or transaction.

use std::time::Duration;

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

/// What CreateOrder writes for one order in one statement: the order, its
/// lines, its `OrderCreated` (under the order's `event_id`) and, with the
/// saga on, its saga row (with the step timer) and its `ProcessPayment`.
/// The statement stamps them all with the database's clock, read once as it
/// starts writing: the order's `created_at` and `updated_at` are not read,
/// and the messages are written with that time appended as their `occurred_at`.
#[derive(Debug, Clone)]
pub struct NewOrderRows {
    pub order: OrderRow,
    pub created: OutboxMessage,
    /// None when the saga is off (`SAGA_ENABLED=false`).
    pub saga: Option<SagaStart>,
}

/// The saga's first step, written with its order.
#[derive(Debug, Clone)]
pub struct SagaStart {
    pub process_payment: OutboxMessage,
    /// How long after the order the payment step times out.
    pub step_timeout: Duration,
}

/// The field of `occurred_at` in `OrderCreated` and in `ProcessPayment`,
/// which the statement writing an order appends to their payloads.
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

/// Writes every order of `orders` with its lines, its saga and its two
/// outbox rows in one statement (so one round trip and one transaction).
/// Returns the orders written and the receipts of their outbox rows (both of
/// an order in the same partition, the order's); an order whose `request_id` is
/// already taken (also by an earlier order of the same call) is left out,
/// and nothing of it is written: the earlier order wins, and a concurrent
/// twin waits for it to commit first.
pub async fn insert_orders(conn: &mut PgConnection, orders: &[&NewOrderRows]) -> Result<Written, sqlx::Error> {
    let text = |f: fn(&OrderRow) -> &str| orders.iter().map(|o| f(&o.order)).collect::<Vec<_>>();
    let lines: Vec<(Uuid, i16, &str, i64)> = orders
        .iter()
        .flat_map(|o| {
            o.order
                .lines
                .iter()
                .enumerate()
                .map(|(n, line)| (o.order.order_id, n as i16, line.sku.as_str(), i64::from(line.quantity)))
        })
        .collect();
    let mut statement = WithEvents::new();
    statement.payload_suffix("SELECT occurred_at FROM stamp");
    let query = statement.caller();
    // The clock read once, as the statement starts writing: every row has the same time.
    query.push(format_args!(
        "stamp AS MATERIALIZED (SELECT at, protobuf_timestamp_field({OCCURRED_AT_FIELD}, at) AS occurred_at \
         FROM (SELECT clock_timestamp() AS at) AS clock), "
    ));
    query.push("input AS (SELECT * FROM unnest(");
    query.push_bind(orders.iter().map(|o| o.order.order_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(text(|o| &o.customer_id)).push("::text[], ");
    query.push_bind(text(|o| &o.amount)).push("::text[], ");
    query.push_bind(text(|o| &o.currency)).push("::text[], ");
    query.push_bind(text(|o| &o.status)).push("::text[], ");
    query.push_bind(orders.iter().map(|o| o.order.request_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(orders.iter().map(|o| o.order.event_id).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(text(|o| &o.correlation_id)).push("::text[], ");
    let commands: Vec<Option<Uuid>> =
        orders.iter().map(|o| o.saga.as_ref().map(|s| s.process_payment.event_id)).collect();
    query.push_bind(commands).push("::uuid[], ");
    let timeouts = orders.iter().map(|o| o.saga.as_ref().map(|s| s.step_timeout.as_micros() as i64));
    query.push_bind(timeouts.collect::<Vec<_>>()).push("::int8[], ");
    query.push_bind(orders.iter().map(|o| !o.order.lines.is_empty()).collect::<Vec<_>>()).push("::bool[]");
    query.push(format_args!(
        ") WITH ORDINALITY AS t(order_id, customer_id, amount, currency, status, request_id, event_id, \
         correlation_id, command_id, timeout_us, has_lines, n)), \
         new_order AS (INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id, \
         correlation_id, created_at, updated_at) \
         SELECT order_id, customer_id, amount::numeric, currency, status, request_id, event_id, correlation_id, \
         stamp.at, stamp.at FROM input CROSS JOIN stamp ORDER BY n \
         ON CONFLICT (request_id) DO NOTHING RETURNING {COLUMNS}), \
         new_lines AS (INSERT INTO order_lines (order_id, line_no, sku, quantity) \
         SELECT l.order_id, l.line_no, l.sku, l.quantity FROM unnest("
    ));
    query.push_bind(lines.iter().map(|l| l.0).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(lines.iter().map(|l| l.1).collect::<Vec<_>>()).push("::int2[], ");
    query.push_bind(lines.iter().map(|l| l.2).collect::<Vec<_>>()).push("::text[], ");
    query.push_bind(lines.iter().map(|l| l.3).collect::<Vec<_>>()).push("::int8[]");
    query.push(
        ") AS l(order_id, line_no, sku, quantity) WHERE l.order_id IN (SELECT order_id FROM new_order)), \
         new_saga AS (INSERT INTO sagas (order_id, step, payment, stock, has_lines, deadline_at, started_at, \
         updated_at) SELECT i.order_id, 'PAYMENT', 'REQUESTED', 'NOT_REQUESTED', i.has_lines, \
         o.created_at + i.timeout_us * interval '1 microsecond', o.created_at, o.created_at \
         FROM input i JOIN new_order o USING (order_id) WHERE i.command_id IS NOT NULL), \
         emitted AS (SELECT o.order_id, o.customer_id, o.amount, o.currency, o.status, o.request_id, m.event_id, \
         o.correlation_id, o.created_at, o.failure_reason, o.failure_detail, o.updated_at \
         FROM new_order o JOIN input i USING (order_id) \
         CROSS JOIN LATERAL (VALUES (o.event_id), (i.command_id)) AS m(event_id) WHERE m.event_id IS NOT NULL)",
    );
    let events: Vec<&OutboxMessage> = orders
        .iter()
        .flat_map(|o| std::iter::once(&o.created).chain(o.saga.as_ref().map(|s| &s.process_payment)))
        .collect();
    let written: Vec<(OrderRow, Appended)> = statement.events("emitted", &events).fetch_all(conn).await?;
    // Each order comes back once per message: keep the row of its OrderCreated.
    let mut result =
        Written { orders: Vec::with_capacity(orders.len()), events: Vec::with_capacity(written.len()), at: None };
    for (mut row, appended) in written {
        result.at = Some(row.created_at);
        result.events.push((row.event_id, appended));
        if let Some(draft) = orders.iter().find(|o| o.created.event_id == row.event_id) {
            row.lines = draft.order.lines.clone();
            result.orders.push(row);
        }
    }
    Ok(result)
}

/// What [`insert_orders`] wrote: the orders (each with the `event_id` of its
/// `OrderCreated`), and every outbox row of the statement, by message
/// `event_id`, and the time the database stamped on all of them (None when it
/// wrote nothing): the orders' `created_at` and the messages' `occurred_at`.
#[derive(Debug, Default)]
pub struct Written {
    pub orders: Vec<OrderRow>,
    pub events: Vec<(Uuid, Appended)>,
    pub at: Option<DateTime<Utc>>,
}

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
