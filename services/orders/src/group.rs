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
//! "An order" here is everything CreateOrder writes for it: the order, its
//! lines, its saga row and its two outbox rows ([`db::insert_orders`]).

use std::{collections::HashMap, sync::Arc};

use infra::lane::{Lane, LaneConnection};
use outbox::{Appended, OutboxMessage, OutboxWriter};
use telemetry::DbTarget;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::db::{self, NewOrderRows, OrderRow};

/// The most calls one statement writes.
pub const MAX_GROUP: usize = 64;

/// What a write gives back: the stored order, or None when the order's
/// `request_id` was already taken (nothing was written for it). The writer
/// itself hands the order's events to the relay.
pub(crate) type Inserted = Option<OrderRow>;

/// Hands orders to the writers. Cheap to clone; the writers stop once every
/// clone is gone and the calls queued are written.
#[derive(Clone)]
pub(crate) struct GroupWriter {
    queue: mpsc::UnboundedSender<Call>,
}

struct Call {
    /// The order and everything written with it.
    rows: NewOrderRows,
    /// The caller's span, parent of the statement's span.
    span: Span,
    reply: oneshot::Sender<Result<Inserted, sqlx::Error>>,
}

impl GroupWriter {
    /// Starts `writers` writers on connections from `lane`; each wakes the
    /// relay through `outbox` as soon as its statement has committed.
    pub(crate) fn spawn(lane: Lane, writers: usize, db: DbTarget, outbox: OutboxWriter) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(calls));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(lane.clone(), Arc::clone(&calls), db.clone(), outbox.clone()));
        }
        Self { queue }
    }

    /// Writes `rows`, alone or with other calls' orders, and returns once
    /// that transaction has committed (or failed).
    pub(crate) async fn insert(&self, rows: NewOrderRows) -> Result<Inserted, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Call { rows, span: Span::current(), reply }).map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

/// One writer: takes every call waiting, writes them, answers them, again.
async fn write(lane: Lane, calls: Arc<Mutex<mpsc::UnboundedReceiver<Call>>>, db: DbTarget, outbox: OutboxWriter) {
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
            write_group(&lane, group, &db, &outbox).await;
        }
    }
}

/// Writes `group` and answers every call. When the database rejects the
/// grouped statement, each order is written alone, so the failure stays with
/// the call that caused it.
async fn write_group(lane: &Lane, group: Vec<Call>, db: &DbTarget, outbox: &OutboxWriter) {
    let Some((group, err)) = write_together(lane, group, db, outbox).await else { return };
    if let [_] = group.as_slice() {
        let call = group.into_iter().next().expect("one call");
        let _ = call.reply.send(Err(err));
        return;
    }
    tracing::warn!(error = %err, orders = group.len(), "grouped insert failed; writing its orders one by one");
    for call in group {
        // The statements before may have taken longer than this caller was
        // willing to wait (its deadline passed): it gets no order.
        if call.reply.is_closed() {
            continue;
        }
        if let Some((alone, err)) = write_together(lane, vec![call], db, outbox).await {
            let call = alone.into_iter().next().expect("one call");
            let _ = call.reply.send(Err(err));
        }
    }
}

/// Writes `group` in one statement and answers its calls, or gives them back
/// with the error when the database rejected the statement.
///
/// A connection that turns out dead under the statement (the server
/// restarted, or ended the session) leaves its outcome unknown: the commit
/// may have happened with only the answer lost. The orders are then read
/// back; those found are answered as written, and the others (of callers
/// still waiting) are written once more on a live connection. Only if that
/// fails as well do they hear that the database is unavailable. An order is
/// never written twice: its `order_id` is the primary key, and a retry that
/// finds it taken reads it back too.
async fn write_together(
    lane: &Lane,
    mut group: Vec<Call>,
    db: &DbTarget,
    outbox: &OutboxWriter,
) -> Option<(Vec<Call>, sqlx::Error)> {
    let mut retried = false;
    loop {
        let written = match lane.acquire().await {
            Ok(conn) => insert(conn, &group, db, outbox.hands_over()).await,
            Err(err) => {
                fail_all(group, &err);
                return None;
            }
        };
        let err = match written {
            Ok(written) => {
                hand_over(outbox, &group, &written);
                answer(group, written.orders);
                return None;
            }
            Err(err) => err,
        };
        if !infra::pg::is_session_gone(&err) && !is_already_written(&err) {
            if infra::pg::is_unavailable(&err) {
                fail_all(group, &err);
                return None;
            }
            return Some((group, err));
        }
        tracing::warn!(error = %err, orders = group.len(), retried, "outcome of an insert unknown; reading it back");
        group = read_back(lane, group).await?;
        if group.is_empty() {
            return None;
        }
        if retried {
            fail_all(group, &err);
            return None;
        }
        retried = true;
    }
}

/// Inserts `group`'s orders and events on `conn`; `hand_over`: see [`db::insert_orders`].
async fn insert(
    mut conn: LaneConnection,
    group: &[Call],
    db: &DbTarget,
    hand_over: bool,
) -> Result<db::Written, sqlx::Error> {
    let rows: Vec<&NewOrderRows> = group.iter().map(|call| &call.rows).collect();
    let written = if let [call] = group {
        db::insert_orders(&mut conn, &rows, hand_over).instrument(statement_span(db, call, 1)).await
    } else {
        let spans: Vec<Span> = group.iter().map(|call| statement_span(db, call, group.len())).collect();
        let written = db::insert_orders(&mut conn, &rows, hand_over).await;
        drop(spans);
        written
    };
    conn.settle(&written);
    written
}

/// Hands the statement's outbox rows to the relay, from the writer itself:
/// woken by each caller once it has its answer instead, the relay would wait
/// for those callers' tasks to be scheduled first, a hand-off that on a busy
/// machine costs milliseconds. The relay adds each message's `occurred_at`,
/// as it does to a row it claims.
fn hand_over(outbox: &OutboxWriter, group: &[Call], written: &db::Written) {
    let events = &written.events;
    let messages: HashMap<Uuid, &OutboxMessage> = group
        .iter()
        .flat_map(|call| std::iter::once(&call.rows.created).chain(call.rows.saga.as_ref().map(|s| &s.process_payment)))
        .map(|message| (message.event_id, message))
        .collect();
    let handed: Vec<(Appended, &OutboxMessage)> =
        events.iter().filter_map(|(event_id, appended)| Some((*appended, *messages.get(event_id)?))).collect();
    if handed.len() == events.len() {
        outbox.hand_over(&handed);
    } else {
        // Only every row of a statement may be handed over; these are claimed.
        events.iter().for_each(|(_, appended)| outbox.committed(*appended));
    }
}

/// Answers each call with its order as written, or None when its `request_id` was taken.
fn answer(group: Vec<Call>, rows: Vec<OrderRow>) {
    let mut rows: HashMap<Uuid, OrderRow> = rows.into_iter().map(|row| (row.order_id, row)).collect();
    for call in group {
        let inserted = rows.remove(&call.rows.order.order_id);
        let _ = call.reply.send(Ok(inserted));
    }
}

/// Answers the calls whose orders the database holds (a statement committed
/// them but its answer was lost) and returns the calls still waiting for
/// theirs; a caller that gave up is dropped, so nothing is written for it.
/// None when the database cannot be read either: then every call has heard so.
async fn read_back(lane: &Lane, group: Vec<Call>) -> Option<Vec<Call>> {
    let ids: Vec<Uuid> = group.iter().map(|call| call.rows.order.order_id).collect();
    let found = lane
        .read(|conn| {
            let ids = ids.clone();
            Box::pin(async move { db::find_many(conn, &ids).await })
        })
        .await;
    let mut found: HashMap<Uuid, OrderRow> = match found {
        Ok(rows) => rows.into_iter().map(|row| (row.order_id, row)).collect(),
        Err(err) => {
            fail_all(group, &err);
            return None;
        }
    };
    let mut waiting = Vec::new();
    for call in group {
        match found.remove(&call.rows.order.order_id) {
            Some(mut row) => {
                row.lines = call.rows.order.lines.clone();
                tracing::info!(order_id = %row.order_id, "order found written after its connection died");
                let _ = call.reply.send(Ok(Some(row)));
            }
            None if call.reply.is_closed() => {}
            None => waiting.push(call),
        }
    }
    Some(waiting)
}

/// Whether an insert failed because its order is already stored: its
/// `order_id`, made for this call, is taken only by an earlier attempt of
/// the same write that committed.
fn is_already_written(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(refused) = err else { return false };
    refused.code().as_deref() == Some("23505") && refused.constraint() == Some(db::ORDERS_PKEY)
}

/// The client span of the INSERT that writes `call` among `group_size`
/// orders, in the call's span.
fn statement_span(db: &DbTarget, call: &Call, group_size: usize) -> Span {
    db.span(&call.span, "INSERT", db::TABLE, group_size)
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
