//! Applies inputs to sagas in the caller's transaction: the saga rows
//! locked (`SELECT … FOR UPDATE`, so no two replicas advance one saga at
//! once), the transitions of [`super::state`], the new states, the orders'
//! statuses and the messages they cause written to the outbox together, in
//! a fixed number of statements for a whole batch of inputs.

use chrono::{DateTime, Utc};
use contracts::orders::v1::FailureReason;
use outbox::{OutboxMessage, ReplyWriter};
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

use super::{
    metrics::SagaMetrics,
    state::{self, Effect, Failure, Input, Outcome, Payment, Saga, Step, Stock, Timing},
};
use crate::{
    db::{self, OrderRow},
    messaging::SagaMessages,
};

/// What applying an input did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// No saga has this order id.
    UnknownOrder,
    /// The input changed nothing (a late or repeated reply); why.
    Ignored(String),
    /// The saga moved on and sent these messages.
    Moved(Vec<Effect>),
}

/// Everything a transition needs beside the transaction.
#[derive(Clone)]
pub struct Store {
    pub timing: Timing,
    pub metrics: SagaMetrics,
    /// Where the messages go (`ORDERS_EXCHANGE`).
    pub exchange: String,
    /// Appends the messages and notifies the relays' channel in the
    /// transaction, so relays in every process wake when it commits (None
    /// leaves them to their poll).
    replies: ReplyWriter,
}

/// One input for one order's saga, and the trace context the messages it
/// causes carry.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub order_id: Uuid,
    pub input: &'a Input,
    pub traceparent: &'a str,
}

/// A saga row locked for the batch, with its order.
#[derive(sqlx::FromRow)]
struct SagaRow {
    step: String,
    payment: String,
    stock: String,
    has_lines: bool,
    detail: Option<String>,
    deadline_at: Option<DateTime<Utc>>,
    resend_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    #[sqlx(flatten)]
    order: OrderRow,
}

/// One saga of the batch as the inputs move it: its state after the inputs
/// so far, and what they did to it.
struct Moving {
    row: SagaRow,
    saga: Saga,
    changed: bool,
    ended: bool,
    /// The order's new status, reason and detail, once it ended.
    status: Option<(&'static str, Option<&'static str>, Option<String>)>,
}

impl Store {
    pub fn new(timing: Timing, metrics: SagaMetrics, notify_channel: Option<String>, exchange: String) -> Self {
        Self { timing, metrics, exchange, replies: ReplyWriter::new(notify_channel) }
    }

    /// Applies each request in turn inside `tx` (several may be for one
    /// saga) and answers what each did, in a fixed number of statements
    /// whatever their number: the sagas locked in order id order (two
    /// replicas' batches queue up, never deadlock) and read with their
    /// orders; the transitions computed; the lines read for the sagas that
    /// reserve stock; the sagas and orders written; the messages appended
    /// with the relays' wake-up.
    pub async fn apply_all(
        &self,
        tx: &mut PgConnection,
        requests: &[Request<'_>],
    ) -> Result<Vec<Applied>, sqlx::Error> {
        let mut ids: Vec<Uuid> = requests.iter().map(|r| r.order_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<SagaRow> = sqlx::query_as(&format!(
            "WITH locked AS (SELECT order_id, step, payment, stock, has_lines, detail, deadline_at, resend_at, started_at \
               FROM sagas WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE) \
             SELECT locked.step, locked.payment, locked.stock, locked.has_lines, locked.detail, locked.deadline_at, \
                    locked.resend_at, locked.started_at, {} \
             FROM locked JOIN orders USING (order_id)",
            db::COLUMNS
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut sagas: HashMap<Uuid, Result<Moving, String>> = rows
            .into_iter()
            .map(|row| {
                let order_id = row.order.order_id;
                let unreadable = format!("unreadable saga state {}/{}/{}", row.step, row.payment, row.stock);
                let moving = saga_of(&row).map(|saga| Moving { row, saga, changed: false, ended: false, status: None });
                (order_id, moving.ok_or(unreadable))
            })
            .collect();
        let now = Utc::now();
        let mut applied = Vec::with_capacity(requests.len());
        let mut sends: Vec<(Uuid, Effect, &str)> = Vec::new();
        for request in requests {
            let Some(entry) = sagas.get_mut(&request.order_id) else {
                applied.push(Applied::UnknownOrder);
                continue;
            };
            let moving = match entry {
                Ok(moving) => moving,
                Err(unreadable) => {
                    applied.push(Applied::Ignored(unreadable.clone()));
                    continue;
                }
            };
            let (next, effects) = match state::apply(&moving.saga, request.input, now, &self.timing) {
                Outcome::Ignored { reason } => {
                    applied.push(Applied::Ignored(reason));
                    continue;
                }
                Outcome::Applied { saga, effects } => (saga, effects),
            };
            if next.step != moving.saga.step && matches!(next.step, Step::Completed | Step::Failed) {
                moving.ended = true;
                let reason = effects.iter().find_map(|e| match e {
                    Effect::Failed { reason, .. } => Some(failure_name(*reason)),
                    _ => None,
                });
                self.metrics.ended(reason, (now - moving.row.started_at).to_std().unwrap_or_default());
            }
            for effect in &effects {
                match effect {
                    Effect::Completed => moving.status = Some(("COMPLETED", None, None)),
                    Effect::Failed { reason, detail } => {
                        moving.status = Some(("FAILED", Some(failure_name(*reason)), Some(detail.clone())));
                    }
                    _ => {}
                }
                sends.push((request.order_id, effect.clone(), request.traceparent));
            }
            moving.saga = next;
            moving.changed = true;
            applied.push(Applied::Moved(effects));
        }
        let reserving: Vec<Uuid> =
            sends.iter().filter(|(_, effect, _)| *effect == Effect::ReserveInventory).map(|(id, ..)| *id).collect();
        if !reserving.is_empty() {
            for (order_id, lines) in db::lines_of(tx, &reserving).await? {
                if let Some(Ok(moving)) = sagas.get_mut(&order_id) {
                    moving.row.order.lines = lines;
                }
            }
        }
        let moved: Vec<&Moving> = sagas.values().filter_map(|m| m.as_ref().ok()).filter(|m| m.changed).collect();
        if moved.is_empty() {
            return Ok(applied);
        }
        write(tx, &moved, now).await?;
        let messages: Vec<OutboxMessage> = sends
            .iter()
            .filter_map(|(order_id, effect, traceparent)| {
                let moving = sagas.get(order_id)?.as_ref().ok()?;
                let messages = SagaMessages {
                    order: &moving.row.order,
                    exchange: &self.exchange,
                    at: now,
                    traceparent: (*traceparent).to_owned(),
                };
                Some(match effect {
                    Effect::ReserveInventory => messages.reserve_inventory(),
                    Effect::RefundPayment => messages.refund_payment(),
                    Effect::ReleaseInventory => messages.release_inventory(),
                    Effect::Completed => messages.completed(),
                    Effect::Failed { reason, detail } => messages.failed(failure_number(*reason), detail),
                })
            })
            .collect();
        self.replies.append_all(tx, &messages.iter().collect::<Vec<_>>()).await?;
        Ok(applied)
    }
}

/// Writes the moved sagas' new state, and the new status of the orders whose
/// saga ended, in one statement.
async fn write(tx: &mut PgConnection, moved: &[&Moving], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let ended: Vec<&&Moving> = moved.iter().filter(|m| m.status.is_some()).collect();
    sqlx::query(
        "WITH s AS (UPDATE sagas SET step = u.step, payment = u.payment, stock = u.stock, detail = u.detail, \
                deadline_at = u.deadline_at, resend_at = u.resend_at, updated_at = $9, \
                ended_at = CASE WHEN u.ended THEN $9 ELSE sagas.ended_at END \
              FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], \
                          $7::timestamptz[], $8::bool[]) \
                   AS u(order_id, step, payment, stock, detail, deadline_at, resend_at, ended) \
              WHERE sagas.order_id = u.order_id) \
         UPDATE orders SET status = u.status, failure_reason = u.reason, failure_detail = u.detail, updated_at = $9 \
         FROM unnest($10::uuid[], $11::text[], $12::text[], $13::text[]) AS u(order_id, status, reason, detail) \
         WHERE orders.order_id = u.order_id",
    )
    .bind(moved.iter().map(|m| m.row.order.order_id).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| step_name(m.saga.step)).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| payment_name(m.saga.payment)).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| stock_name(m.saga.stock)).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| m.saga.detail.as_deref()).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| m.saga.deadline_at).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| m.saga.resend_at).collect::<Vec<_>>())
    .bind(moved.iter().map(|m| m.ended).collect::<Vec<_>>())
    .bind(now)
    .bind(ended.iter().map(|m| m.row.order.order_id).collect::<Vec<_>>())
    .bind(ended.iter().filter_map(|m| m.status.as_ref().map(|s| s.0)).collect::<Vec<_>>())
    .bind(ended.iter().filter_map(|m| m.status.as_ref().map(|s| s.1)).collect::<Vec<_>>())
    .bind(ended.iter().filter_map(|m| m.status.as_ref().map(|s| s.2.as_deref())).collect::<Vec<_>>())
    .execute(tx)
    .await
    .map(drop)
}

fn saga_of(row: &SagaRow) -> Option<Saga> {
    Some(Saga {
        step: parse(row.step.as_str(), STEPS)?,
        payment: parse(row.payment.as_str(), PAYMENTS)?,
        stock: parse(row.stock.as_str(), STOCKS)?,
        has_lines: row.has_lines,
        detail: row.detail.clone(),
        deadline_at: row.deadline_at,
        resend_at: row.resend_at,
    })
}

const STEPS: &[(Step, &str)] = &[
    (Step::Payment, "PAYMENT"),
    (Step::Reservation, "RESERVATION"),
    (Step::Refund, "REFUND"),
    (Step::Completed, "COMPLETED"),
    (Step::Failed, "FAILED"),
];
const PAYMENTS: &[(Payment, &str)] = &[
    (Payment::Requested, "REQUESTED"),
    (Payment::Captured, "CAPTURED"),
    (Payment::Declined, "DECLINED"),
    (Payment::Refunding, "REFUNDING"),
    (Payment::Refunded, "REFUNDED"),
];
const STOCKS: &[(Stock, &str)] = &[
    (Stock::NotRequested, "NOT_REQUESTED"),
    (Stock::Requested, "REQUESTED"),
    (Stock::Reserved, "RESERVED"),
    (Stock::Refused, "REFUSED"),
    (Stock::Releasing, "RELEASING"),
    (Stock::Released, "RELEASED"),
];

fn parse<T: Copy>(raw: &str, names: &[(T, &str)]) -> Option<T> {
    names.iter().find(|(_, name)| *name == raw).map(|(value, _)| *value)
}

fn name<T: PartialEq>(value: T, names: &[(T, &'static str)]) -> &'static str {
    names.iter().find(|(v, _)| *v == value).map_or("", |(_, name)| name)
}

fn step_name(step: Step) -> &'static str {
    name(step, STEPS)
}

fn payment_name(payment: Payment) -> &'static str {
    name(payment, PAYMENTS)
}

fn stock_name(stock: Stock) -> &'static str {
    name(stock, STOCKS)
}

/// The order's `failure_reason` column, and the metrics' `reason` label.
pub fn failure_name(reason: Failure) -> &'static str {
    match reason {
        Failure::PaymentDeclined => "PAYMENT_DECLINED",
        Failure::OutOfStock => "OUT_OF_STOCK",
        Failure::TimedOut => "TIMED_OUT",
    }
}

fn failure_number(reason: Failure) -> i32 {
    let reason = match reason {
        Failure::PaymentDeclined => FailureReason::PaymentDeclined,
        Failure::OutOfStock => FailureReason::OutOfStock,
        Failure::TimedOut => FailureReason::TimedOut,
    };
    reason as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_reads_back() {
        for (step, raw) in STEPS {
            assert_eq!((parse(raw, STEPS), step_name(*step)), (Some(*step), *raw));
        }
        for (payment, raw) in PAYMENTS {
            assert_eq!((parse(raw, PAYMENTS), payment_name(*payment)), (Some(*payment), *raw));
        }
        for (stock, raw) in STOCKS {
            assert_eq!((parse(raw, STOCKS), stock_name(*stock)), (Some(*stock), *raw));
        }
    }
}
