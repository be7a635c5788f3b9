//! What ProcessPayment and RefundPayment do to the tables, inside the inbox's
//! transaction, and the outcome each replies with.
//!
//! Races are settled by the database: payments of one customer and currency
//! are decided one at a time under the lock of their credit row, and the
//! order's unique payment row makes a refund and a payment of one order meet
//! (an insert waits for the other's transaction, then finds its row).

use platform::values::Currency;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    db::{self, NewPayment, PaymentRow, Status},
    money::format_minor,
};

/// Why a late ProcessPayment is declined.
pub(crate) const CANCELLED_DETAIL: &str = "cancelled by a refund that arrived first";

/// The reply a command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Captured (now, or by an earlier command for the order).
    Processed { payment_id: Uuid },
    /// Nothing captured, and why.
    Declined { payment_id: Uuid, detail: String },
    /// The order holds no captured payment; `was_captured` when this refund gave one back.
    Refunded { payment_id: Uuid, was_captured: bool },
}

/// An outcome, and whether this command decided it (false: an earlier
/// command's outcome, replied again).
pub(crate) type Decided = (Outcome, bool);

/// A ProcessPayment the handler has validated.
#[derive(Debug, Clone)]
pub(crate) struct Payment {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) currency: Currency,
    pub(crate) amount_minor: i64,
}

/// Captures the payment if the customer's credit allows it, declines it
/// otherwise; an order that already has a payment gets its outcome again.
/// The caller holds the lock of the customer's credit row ([`db::lock_credits`]),
/// whose limit is `limit_minor`.
pub(crate) async fn process(
    tx: &mut PgConnection,
    payment: &Payment,
    limit_minor: i64,
) -> Result<Decided, sqlx::Error> {
    let currency = payment.currency.code();
    let limit = limit_minor;
    let new = |status, detail| NewPayment {
        order_id: payment.order_id,
        customer_id: &payment.customer_id,
        currency,
        amount_minor: payment.amount_minor,
        status,
        detail,
    };
    if let Some(existing) = db::payment(tx, payment.order_id, true).await? {
        return again(tx, existing, &new(Status::Declined, None)).await;
    }
    let used = db::used(tx, &payment.customer_id, currency).await?;
    let (status, detail) = match used.checked_add(payment.amount_minor) {
        Some(total) if total <= limit => (Status::Captured, None),
        _ => {
            let show = |minor| format_minor(minor, payment.currency);
            let detail = format!(
                "credit limit {} {currency}, {} used, {} asked",
                show(limit),
                show(used),
                show(payment.amount_minor)
            );
            (Status::Declined, Some(detail))
        }
    };
    match db::insert_payment(tx, &new(status, detail)).await? {
        Some(row) => Ok((outcome_of(&row), true)),
        // A refund (or another command) for the order committed meanwhile.
        None => {
            let existing = db::payment(tx, payment.order_id, true).await?.ok_or(sqlx::Error::RowNotFound)?;
            again(tx, existing, &new(Status::Declined, None)).await
        }
    }
}

/// The outcome of an order that has a payment row already: a cancellation
/// mark is completed with what was asked and declines; anything else is
/// replied as it stands.
async fn again(tx: &mut PgConnection, existing: PaymentRow, asked: &NewPayment<'_>) -> Result<Decided, sqlx::Error> {
    if existing.cancelled_by_refund && existing.customer_id.is_none() {
        let filled = db::fill_cancelled(tx, asked).await?;
        tracing::info!(order_id = %filled.order_id, "payment declined: {CANCELLED_DETAIL}");
        return Ok((outcome_of(&filled), true));
    }
    tracing::info!(order_id = %existing.order_id, status = %existing.status, "the order has a payment: replied again");
    Ok((outcome_of(&existing), false))
}

/// What a stored payment replies to a ProcessPayment.
fn outcome_of(row: &PaymentRow) -> Outcome {
    let payment_id = row.payment_id;
    match row.status() {
        Some(Status::Captured) => Outcome::Processed { payment_id },
        Some(Status::Refunded) => {
            Outcome::Declined { payment_id, detail: "the order's payment was captured, then refunded".into() }
        }
        _ => Outcome::Declined { payment_id, detail: row.detail.clone().unwrap_or_else(|| "declined".to_owned()) },
    }
}

/// Gives back a captured payment, or cancels the order's payment before it
/// is made so that a late ProcessPayment is declined.
pub(crate) async fn refund(tx: &mut PgConnection, order_id: Uuid) -> Result<Decided, sqlx::Error> {
    if let Some(mark) = db::insert_cancellation(tx, order_id, CANCELLED_DETAIL).await? {
        tracing::info!(%order_id, "refund before the payment: the order's payment is cancelled");
        return Ok((Outcome::Refunded { payment_id: mark.payment_id, was_captured: false }, true));
    }
    let existing = db::payment(tx, order_id, true).await?.ok_or(sqlx::Error::RowNotFound)?;
    if existing.status() == Some(Status::Captured) {
        let refunded = db::set_status(tx, order_id, Status::Refunded).await?;
        tracing::info!(%order_id, "payment refunded");
        return Ok((Outcome::Refunded { payment_id: refunded.payment_id, was_captured: true }, true));
    }
    tracing::info!(%order_id, status = %existing.status, "nothing captured to refund");
    Ok((Outcome::Refunded { payment_id: existing.payment_id, was_captured: false }, false))
}
