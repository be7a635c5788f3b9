//! Group commit for CreateOrder: calls that arrive together share a transaction.
//!
//! Each CreateOrder is one statement and one commit, and at a few thousand
//! calls a second the commits are most of what the database spends on them:
//! a WAL flush, a round trip and a backend wake-up each. So calls go to a few
//! writers; a free writer takes every call waiting (up to [`MAX_GROUP`]) and
//! inserts all of their orders and events in one statement. Every order is
//! still written together with its own event, and every caller is answered
//! only after the commit. Under light load a writer is free when a call
//! arrives and the call is written alone, at once; the groups grow only when
//! calls arrive faster than the writers commit, which is when they pay.

use std::sync::Arc;

use outbox::{Appended, OutboxMessage};
use platform::{
    lane::{Lane, LaneConnection},
    telemetry::DbTarget,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{Instrument, Span};

use crate::db::{self, OrderRow};

/// The most calls one statement writes.
pub const MAX_GROUP: usize = 64;

/// What a write gives back: the stored order and its outbox row, or None when
/// the order's `request_id` was already taken (nothing was written for it).
pub(crate) type Inserted = Option<(OrderRow, Appended)>;

/// Hands orders to the writers. Cheap to clone; the writers stop once every
/// clone is gone and the calls queued are written.
#[derive(Clone)]
pub(crate) struct GroupWriter {
    queue: mpsc::UnboundedSender<Call>,
}

struct Call {
    order: OrderRow,
    event: OutboxMessage,
    /// The caller's span, parent of the statement's span.
    span: Span,
    reply: oneshot::Sender<Result<Inserted, sqlx::Error>>,
}

impl GroupWriter {
    /// Starts `writers` writers on connections from `lane`.
    pub(crate) fn spawn(lane: Lane, writers: usize, db: DbTarget) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(calls));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(lane.clone(), Arc::clone(&calls), db.clone()));
        }
        Self { queue }
    }

    /// Writes `order` with `event`, alone or with other calls' orders, and
    /// returns once that transaction has committed (or failed).
    pub(crate) async fn insert(&self, order: OrderRow, event: OutboxMessage) -> Result<Inserted, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Call { order, event, span: Span::current(), reply }).map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

/// One writer: takes every call waiting, writes them, answers them, again.
async fn write(lane: Lane, calls: Arc<Mutex<mpsc::UnboundedReceiver<Call>>>, db: DbTarget) {
    loop {
        let mut group = {
            let mut calls = calls.lock().await;
            let Some(first) = calls.recv().await else { return };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match calls.try_recv() {
                    Ok(call) => group.push(call),
                    Err(_) => break,
                }
            }
            group
        };
        // A caller that gave up before its order was written gets no order.
        group.retain(|call| !call.reply.is_closed());
        if !group.is_empty() {
            write_group(&lane, group, &db).await;
        }
    }
}

async fn write_group(lane: &Lane, group: Vec<Call>, db: &DbTarget) {
    let mut conn = match lane.acquire().await {
        Ok(conn) => conn,
        Err(err) => return fail_all(group, &err),
    };
    if let [call] = group.as_slice() {
        let inserted = write_alone(conn, call, db).await;
        let call = group.into_iter().next().expect("one call");
        let _ = call.reply.send(inserted);
        return;
    }
    let spans: Vec<Span> = group.iter().map(|call| statement_span(db, call, group.len())).collect();
    let pairs: Vec<(&OrderRow, &OutboxMessage)> = group.iter().map(|call| (&call.order, &call.event)).collect();
    let written = db::insert_orders_with_events(&mut conn, &pairs).await;
    conn.settle(&written);
    drop(spans);
    match written {
        Ok(rows) => {
            let mut rows: std::collections::HashMap<uuid::Uuid, (OrderRow, Appended)> =
                rows.into_iter().map(|(row, appended)| (row.order_id, (row, appended))).collect();
            for call in group {
                let _ = call.reply.send(Ok(rows.remove(&call.order.order_id)));
            }
        }
        Err(err) if platform::db::is_unavailable(&err) => fail_all(group, &err),
        // Something in one order failed the statement and so all of them:
        // each is written alone, so the failure stays with its own call.
        Err(err) => {
            tracing::warn!(error = %err, orders = group.len(), "grouped insert failed; writing its orders one by one");
            for call in group {
                let alone = match lane.acquire().await {
                    Ok(conn) => write_alone(conn, &call, db).await,
                    Err(err) => Err(err),
                };
                let _ = call.reply.send(alone);
            }
        }
    }
}

/// Writes one call's order and event on `conn` with the single-order statement.
async fn write_alone(mut conn: LaneConnection, call: &Call, db: &DbTarget) -> Result<Inserted, sqlx::Error> {
    let inserted =
        db::insert_order_with_event(&mut conn, &call.order, &call.event).instrument(statement_span(db, call, 1)).await;
    conn.settle(&inserted);
    inserted
}

/// The client span of the INSERT that writes `call` among `group_size`
/// orders, in the call's span; only while spans are exported.
fn statement_span(db: &DbTarget, call: &Call, group_size: usize) -> Span {
    if platform::telemetry::otel_active() { db.span(&call.span, "INSERT", db::TABLE, group_size) } else { Span::none() }
}

/// Answers every call with `err`: the database could not be reached for any of them.
fn fail_all(group: Vec<Call>, err: &sqlx::Error) {
    for call in group {
        let _ = call.reply.send(Err(copy(err)));
    }
}

/// An unavailability error for each caller (sqlx errors do not clone).
fn copy(err: &sqlx::Error) -> sqlx::Error {
    match err {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(format!("database unavailable: {other}")),
    }
}
