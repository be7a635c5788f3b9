//! The statement that writes orders: each order with its lines, its saga and
//! its outbox rows, all of a call's orders in one statement (one round trip,
//! one transaction), stamped with the database's clock.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use outbox::{Appended, OutboxMessage, WithEvents};

use super::{COLUMNS, OCCURRED_AT_FIELD, OrderRow};

/// What CreateOrder writes for one order in one statement: the order, its
/// lines, its `OrderCreated` (under the order's `event_id`) and, with the
/// saga on, its saga row (with the step timer) and its `ProcessPayment`.
/// The statement stamps them all with the database's clock, read once as it
/// starts writing: the order's `created_at` and `updated_at` are not read,
/// and the messages are published with that time as their `occurred_at`.
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

/// A statement whose first CTE, `stamp`, reads the clock once, as the
/// statement starts writing (every row gets the same time), which is also
/// every message's `occurred_at` (the relay adds it to the payload as it
/// publishes it). `hand_over`: see [`insert_orders`].
fn stamped<'args>(hand_over: bool) -> WithEvents<'args> {
    let mut statement = WithEvents::new();
    statement.occurred_at(OCCURRED_AT_FIELD, "SELECT at FROM stamp").handing_over(hand_over);
    statement.caller().push("stamp AS MATERIALIZED (SELECT clock_timestamp() AS at), ");
    statement
}

/// The orders' columns the statements write, `created_at` and `updated_at` last.
const ORDER_INSERT: &str = "INSERT INTO orders (order_id, customer_id, amount, currency, status, request_id, event_id, \
     correlation_id, created_at, updated_at)";

/// The saga row's columns, and the values every saga starts with.
const SAGA_INSERT: &str = "INSERT INTO sagas (order_id, step, payment, stock, has_lines, deadline_at, started_at, \
     updated_at) SELECT o.order_id, 'PAYMENT', 'REQUESTED', 'NOT_REQUESTED'";

/// The `new_order` row once per message of the order, under the message's `event_id`.
const EMITTED: &str = "emitted AS (SELECT o.order_id, o.customer_id, o.amount, o.currency, o.status, o.request_id, \
     m.event_id, o.correlation_id, o.created_at, o.failure_reason, o.failure_detail, o.updated_at FROM new_order o";

/// Writes every order of `orders` with its lines, its saga and its two
/// outbox rows in one statement (so one round trip and one transaction).
/// Returns the orders written and the receipts of their outbox rows (both of
/// an order in the same partition, the order's); an order whose `request_id` is
/// already taken (also by an earlier order of the same call) is left out,
/// and nothing of it is written: the earlier order wins, and a concurrent
/// twin waits for it to commit first. `hand_over`: whether the outbox rows
/// may be handed to a relay in this process ([`outbox::OutboxWriter::hands_over`]).
pub async fn insert_orders(
    conn: &mut PgConnection,
    orders: &[&NewOrderRows],
    hand_over: bool,
) -> Result<Written, sqlx::Error> {
    let written = match orders {
        [one] => insert_one(conn, one, hand_over).await?,
        _ => insert_many(conn, orders, hand_over).await?,
    };
    // Each order comes back once per message: keep the row of its OrderCreated.
    let mut result = Written { orders: Vec::with_capacity(orders.len()), events: Vec::with_capacity(written.len()) };
    for (mut row, appended) in written {
        result.events.push((row.event_id, appended));
        if let Some(draft) = orders.iter().find(|o| o.created.event_id == row.event_id) {
            row.lines = draft.order.lines.clone();
            result.orders.push(row);
        }
    }
    Ok(result)
}

/// One order, its values bound one by one: Postgres executes this form in
/// about three quarters of the time the arrays of [`insert_many`] take for one
/// order, and most calls carry one order when the service is not busy.
async fn insert_one(
    conn: &mut PgConnection,
    new: &NewOrderRows,
    hand_over: bool,
) -> Result<Vec<(OrderRow, Appended)>, sqlx::Error> {
    let order = &new.order;
    let mut statement = stamped(hand_over);
    let query = statement.caller();
    query.push(format_args!("new_order AS ({ORDER_INSERT} SELECT "));
    query.push_bind(order.order_id).push(", ");
    query.push_bind(&order.customer_id).push(", ");
    query.push_bind(&order.amount).push("::numeric, ");
    query.push_bind(&order.currency).push(", ");
    query.push_bind(&order.status).push(", ");
    query.push_bind(order.request_id).push(", ");
    query.push_bind(order.event_id).push(", ");
    query.push_bind(&order.correlation_id);
    query
        .push(format_args!(", stamp.at, stamp.at FROM stamp ON CONFLICT (request_id) DO NOTHING RETURNING {COLUMNS})"));
    if !order.lines.is_empty() {
        query.push(
            ", new_lines AS (INSERT INTO order_lines (order_id, line_no, sku, quantity) \
             SELECT o.order_id, l.line_no, l.sku, l.quantity FROM new_order o CROSS JOIN unnest(",
        );
        query.push_bind((0..order.lines.len()).map(|n| n as i16).collect::<Vec<_>>()).push("::int2[], ");
        query.push_bind(order.lines.iter().map(|l| l.sku.as_str()).collect::<Vec<_>>()).push("::text[], ");
        query.push_bind(order.lines.iter().map(|l| i64::from(l.quantity)).collect::<Vec<_>>()).push("::int8[]");
        query.push(") AS l(line_no, sku, quantity))");
    }
    let Some(saga) = &new.saga else {
        return statement.event("new_order", &new.created).fetch_all(conn).await;
    };
    query.push(format_args!(", new_saga AS ({SAGA_INSERT}, "));
    query.push_bind(!order.lines.is_empty()).push(", o.created_at + ");
    query.push_bind(saga.step_timeout.as_micros() as i64);
    query.push(" * interval '1 microsecond', o.created_at, o.created_at FROM new_order o), ");
    query.push(format_args!("{EMITTED} CROSS JOIN LATERAL (VALUES (o.event_id), ("));
    query.push_bind(saga.process_payment.event_id).push("::uuid)) AS m(event_id))");
    statement.events("emitted", &[&new.created, &saga.process_payment]).fetch_all(conn).await
}

/// Any number of orders, each column bound as an array. The lines' and the
/// saga's parts are left out of a statement none of whose orders has them:
/// Postgres plans and runs every part of a statement, rows or none.
async fn insert_many(
    conn: &mut PgConnection,
    orders: &[&NewOrderRows],
    hand_over: bool,
) -> Result<Vec<(OrderRow, Appended)>, sqlx::Error> {
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
    let saga = orders.iter().any(|o| o.saga.is_some());
    let mut statement = stamped(hand_over);
    let query = statement.caller();
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
         new_order AS ({ORDER_INSERT} SELECT order_id, customer_id, amount::numeric, currency, status, request_id, event_id, correlation_id, \
         stamp.at, stamp.at FROM input CROSS JOIN stamp ORDER BY n \
         ON CONFLICT (request_id) DO NOTHING RETURNING {COLUMNS})"
    ));
    if !lines.is_empty() {
        query.push(
            ", new_lines AS (INSERT INTO order_lines (order_id, line_no, sku, quantity) \
             SELECT l.order_id, l.line_no, l.sku, l.quantity FROM unnest(",
        );
        query.push_bind(lines.iter().map(|l| l.0).collect::<Vec<_>>()).push("::uuid[], ");
        query.push_bind(lines.iter().map(|l| l.1).collect::<Vec<_>>()).push("::int2[], ");
        query.push_bind(lines.iter().map(|l| l.2).collect::<Vec<_>>()).push("::text[], ");
        query.push_bind(lines.iter().map(|l| l.3).collect::<Vec<_>>()).push("::int8[]");
        query.push(") AS l(order_id, line_no, sku, quantity) WHERE l.order_id IN (SELECT order_id FROM new_order))");
    }
    if !saga {
        let events: Vec<&OutboxMessage> = orders.iter().map(|o| &o.created).collect();
        return statement.events("new_order", &events).fetch_all(conn).await;
    }
    query.push(format_args!(
        ", new_saga AS ({SAGA_INSERT}, i.has_lines, o.created_at + i.timeout_us * interval '1 microsecond', \
         o.created_at, o.created_at FROM input i JOIN new_order o USING (order_id) WHERE i.command_id IS NOT NULL), \
         {EMITTED} JOIN input i USING (order_id) \
         CROSS JOIN LATERAL (VALUES (o.event_id), (i.command_id)) AS m(event_id) WHERE m.event_id IS NOT NULL)"
    ));
    let events: Vec<&OutboxMessage> = orders
        .iter()
        .flat_map(|o| std::iter::once(&o.created).chain(o.saga.as_ref().map(|s| &s.process_payment)))
        .collect();
    statement.events("emitted", &events).fetch_all(conn).await
}

/// What [`insert_orders`] wrote: the orders (each with the `event_id` of its
/// `OrderCreated`), and every outbox row of the statement, by message `event_id`.
#[derive(Debug, Default)]
pub struct Written {
    pub orders: Vec<OrderRow>,
    pub events: Vec<(Uuid, Appended)>,
}
