//! Applies an input to a saga in the caller's transaction: the saga row
//! locked (`SELECT … FOR UPDATE`, so no two replicas advance one saga at
//! once), the transition of [`super::state`], the new state, the order's
//! status and the messages it causes written to the outbox together.

use chrono::{DateTime, Utc};
use contracts::orders::v1::FailureReason;
use outbox::OutboxWriter;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    metrics::SagaMetrics,
    state::{self, Effect, Failure, Input, Outcome, Payment, Saga, Step, Stock, Timing},
};
use crate::{db, messaging::SagaMessages};

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
    /// The channel relays LISTEN on; notified in the transaction, so relays
    /// in every process wake when it commits. None leaves them to their poll.
    pub notify_channel: Option<String>,
    /// Where the messages go (`ORDERS_EXCHANGE`).
    pub exchange: String,
    writer: OutboxWriter,
}

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
}

impl Store {
    pub fn new(timing: Timing, metrics: SagaMetrics, notify_channel: Option<String>, exchange: String) -> Self {
        Self { timing, metrics, notify_channel, exchange, writer: OutboxWriter::new() }
    }

    /// Applies `input` to the saga of `order_id` inside `tx`; `traceparent`
    /// is the trace context the messages it sends carry.
    pub async fn apply(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        input: &Input,
        traceparent: &str,
    ) -> Result<Applied, sqlx::Error> {
        let row: Option<SagaRow> = sqlx::query_as(
            "SELECT step, payment, stock, has_lines, detail, deadline_at, resend_at, started_at \
             FROM sagas WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(Applied::UnknownOrder) };
        let Some(saga) = saga_of(&row) else {
            return Ok(Applied::Ignored(format!("unreadable saga state {}/{}/{}", row.step, row.payment, row.stock)));
        };
        let now = Utc::now();
        let (next, effects) = match state::apply(&saga, input, now, &self.timing) {
            Outcome::Ignored { reason } => return Ok(Applied::Ignored(reason)),
            Outcome::Applied { saga, effects } => (saga, effects),
        };
        let ended = next.step != saga.step && matches!(next.step, Step::Completed | Step::Failed);
        sqlx::query(
            "UPDATE sagas SET step = $2, payment = $3, stock = $4, detail = $5, deadline_at = $6, resend_at = $7, \
             updated_at = $8, ended_at = CASE WHEN $9 THEN $8 ELSE ended_at END WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(step_name(next.step))
        .bind(payment_name(next.payment))
        .bind(stock_name(next.stock))
        .bind(next.detail.as_deref())
        .bind(next.deadline_at)
        .bind(next.resend_at)
        .bind(now)
        .bind(ended)
        .execute(&mut *tx)
        .await?;
        if !effects.is_empty() {
            self.send(tx, order_id, &effects, now, traceparent).await?;
        }
        if ended {
            let reason = effects.iter().find_map(|e| match e {
                Effect::Failed { reason, .. } => Some(failure_name(*reason)),
                _ => None,
            });
            self.metrics.ended(reason, (now - row.started_at).to_std().unwrap_or_default());
        }
        Ok(Applied::Moved(effects))
    }

    /// Writes the order's new status and the messages of `effects` to the outbox.
    async fn send(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        effects: &[Effect],
        now: DateTime<Utc>,
        traceparent: &str,
    ) -> Result<(), sqlx::Error> {
        let order = db::find_for_update(tx, order_id).await?;
        let Some(order) = db::with_lines(tx, order).await? else {
            return Err(sqlx::Error::RowNotFound);
        };
        let messages =
            SagaMessages { order: &order, exchange: &self.exchange, at: now, traceparent: traceparent.to_owned() };
        for effect in effects {
            let message = match effect {
                Effect::ReserveInventory => messages.reserve_inventory(),
                Effect::RefundPayment => messages.refund_payment(),
                Effect::ReleaseInventory => messages.release_inventory(),
                Effect::Completed => {
                    set_status(tx, order_id, "COMPLETED", None, None, now).await?;
                    messages.completed()
                }
                Effect::Failed { reason, detail } => {
                    set_status(tx, order_id, "FAILED", Some(failure_name(*reason)), Some(detail), now).await?;
                    messages.failed(failure_number(*reason), detail)
                }
            };
            // The NOTIFY below wakes the relays at the commit; the receipt is not needed.
            let _receipt = self.writer.append(tx, &message).await?;
        }
        if let Some(channel) = &self.notify_channel {
            sqlx::query("SELECT pg_notify($1, '')").bind(channel).execute(&mut *tx).await?;
        }
        Ok(())
    }
}

async fn set_status(
    tx: &mut PgConnection,
    order_id: Uuid,
    status: &str,
    reason: Option<&str>,
    detail: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = $2, failure_reason = $3, failure_detail = $4, updated_at = $5 WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status)
    .bind(reason)
    .bind(detail)
    .bind(now)
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
