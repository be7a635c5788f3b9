//! The saga as a pure state machine: `(saga, input, now) -> (saga', effects)`.
//! Nothing here touches the database or the broker; [`super::store`] applies
//! the outcome under a row lock, so the rules can be tested exhaustively.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// ProcessPayment sent; waiting for PaymentProcessed or PaymentDeclined.
    Payment,
    /// ReserveInventory sent; waiting for InventoryReserved or InventoryReservationFailed.
    Reservation,
    /// The stock was refused: RefundPayment sent, the order stays CREATED until PaymentRefunded.
    Refund,
    /// Paid and reserved: the order is COMPLETED.
    Completed,
    /// The order is FAILED; compensations may still be pending.
    Failed,
}

/// What Payments was asked and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payment {
    Requested,
    Captured,
    Declined,
    /// RefundPayment sent, PaymentRefunded not yet received.
    Refunding,
    Refunded,
}

/// What Inventory was asked and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    NotRequested,
    Requested,
    Reserved,
    Refused,
    /// ReleaseInventory sent, InventoryReleased not yet received.
    Releasing,
    Released,
}

/// Why an order failed (the proto's `FailureReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    PaymentDeclined,
    OutOfStock,
    TimedOut,
}

/// A saga's state, as its row stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub step: Step,
    pub payment: Payment,
    pub stock: Stock,
    /// Whether the order has lines to reserve.
    pub has_lines: bool,
    /// The refusal a participant gave, kept for the outcome.
    pub detail: Option<String>,
    /// The step timer.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When unanswered compensations are sent again.
    pub resend_at: Option<DateTime<Utc>>,
}

/// What can happen to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    PaymentProcessed,
    PaymentDeclined {
        detail: String,
    },
    PaymentRefunded,
    InventoryReserved,
    ReservationFailed {
        detail: String,
    },
    InventoryReleased,
    /// The step timer passed.
    DeadlinePassed,
    /// The compensation timer passed.
    ResendDue,
}

/// A message the transition sends, written to the outbox with the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    ReserveInventory,
    RefundPayment,
    ReleaseInventory,
    Completed,
    Failed { reason: Failure, detail: String },
}

/// The timers' lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a step may wait for its reply.
    pub step_timeout: Duration,
    /// How often an unanswered compensation is sent again.
    pub resend_every: Duration,
}

/// The result of one input: the new state and what to send, or why the input
/// changed nothing (a late or repeated reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied { saga: Saga, effects: Vec<Effect> },
    Ignored { reason: String },
}

impl Saga {
    /// A saga that has just sent ProcessPayment.
    pub fn start(has_lines: bool, now: DateTime<Utc>, timing: &Timing) -> Self {
        Self {
            step: Step::Payment,
            payment: Payment::Requested,
            stock: Stock::NotRequested,
            has_lines,
            detail: None,
            deadline_at: Some(after(now, timing.step_timeout)),
            resend_at: None,
        }
    }

    /// Whether refunds or releases are still unanswered.
    pub fn compensating(&self) -> bool {
        self.payment == Payment::Refunding || self.stock == Stock::Releasing
    }

    /// The compensations still unanswered, to send (again).
    fn pending_compensations(&self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.payment == Payment::Refunding {
            effects.push(Effect::RefundPayment);
        }
        if self.stock == Stock::Releasing {
            effects.push(Effect::ReleaseInventory);
        }
        effects
    }

    /// The compensation timer: set while compensations are unanswered.
    fn rearm_resend(&mut self, now: DateTime<Utc>, timing: &Timing) {
        self.resend_at = self.compensating().then(|| after(now, timing.resend_every));
    }
}

fn after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX)
}

fn ignored(saga: &Saga, input: &Input) -> Outcome {
    Outcome::Ignored {
        reason: format!(
            "{input:?} does not apply at step {:?} (payment {:?}, stock {:?})",
            saga.step, saga.payment, saga.stock
        ),
    }
}

/// The one transition function.
pub fn apply(saga: &Saga, input: &Input, now: DateTime<Utc>, timing: &Timing) -> Outcome {
    let mut next = saga.clone();
    let effects = match (saga.step, input) {
        (Step::Payment, Input::PaymentProcessed) => {
            next.payment = Payment::Captured;
            if saga.has_lines {
                next.step = Step::Reservation;
                next.stock = Stock::Requested;
                next.deadline_at = Some(after(now, timing.step_timeout));
                vec![Effect::ReserveInventory]
            } else {
                next.step = Step::Completed;
                next.deadline_at = None;
                vec![Effect::Completed]
            }
        }
        (Step::Payment, Input::PaymentDeclined { detail }) => {
            next.payment = Payment::Declined;
            next.step = Step::Failed;
            next.deadline_at = None;
            next.detail = Some(detail.clone());
            vec![Effect::Failed { reason: Failure::PaymentDeclined, detail: detail.clone() }]
        }
        (Step::Reservation, Input::InventoryReserved) => {
            next.stock = Stock::Reserved;
            next.step = Step::Completed;
            next.deadline_at = None;
            vec![Effect::Completed]
        }
        (Step::Reservation, Input::ReservationFailed { detail }) => {
            next.stock = Stock::Refused;
            next.payment = Payment::Refunding;
            next.step = Step::Refund;
            next.detail = Some(detail.clone());
            next.deadline_at = Some(after(now, timing.step_timeout));
            next.rearm_resend(now, timing);
            vec![Effect::RefundPayment]
        }
        (Step::Refund, Input::PaymentRefunded) => {
            next.payment = Payment::Refunded;
            next.step = Step::Failed;
            next.deadline_at = None;
            next.resend_at = None;
            let detail = saga.detail.clone().unwrap_or_default();
            vec![Effect::Failed { reason: Failure::OutOfStock, detail }]
        }
        (Step::Refund, Input::DeadlinePassed) => {
            // The order's fate is known; the refund keeps being sent until answered.
            next.step = Step::Failed;
            next.deadline_at = None;
            let detail = format!("{}; the refund is still pending", saga.detail.as_deref().unwrap_or("out of stock"));
            vec![Effect::Failed { reason: Failure::OutOfStock, detail }]
        }
        (Step::Payment | Step::Reservation, Input::DeadlinePassed) => {
            let detail = match saga.step {
                Step::Payment => format!("no payment reply within {} ms", timing.step_timeout.as_millis()),
                _ => format!("no stock reply within {} ms", timing.step_timeout.as_millis()),
            };
            // Whatever a step may have done is undone: the payment was asked
            // for in either step, the reservation only in the second.
            next.payment = Payment::Refunding;
            if saga.step == Step::Reservation {
                next.stock = Stock::Releasing;
            }
            next.step = Step::Failed;
            next.deadline_at = None;
            next.detail = Some(detail.clone());
            next.rearm_resend(now, timing);
            let mut effects = vec![Effect::Failed { reason: Failure::TimedOut, detail }];
            effects.extend(next.pending_compensations());
            effects
        }
        (Step::Failed | Step::Refund, Input::ResendDue) if saga.compensating() => {
            next.rearm_resend(now, timing);
            saga.pending_compensations()
        }
        (Step::Failed, Input::PaymentRefunded) if saga.payment == Payment::Refunding => {
            next.payment = Payment::Refunded;
            next.rearm_resend(now, timing);
            Vec::new()
        }
        (Step::Failed, Input::InventoryReleased) if saga.stock == Stock::Releasing => {
            next.stock = Stock::Released;
            next.rearm_resend(now, timing);
            Vec::new()
        }
        (_, Input::DeadlinePassed | Input::ResendDue) => {
            // A timer with nothing left to do: cleared, so it does not fire again.
            next.deadline_at = if matches!(input, Input::DeadlinePassed) { None } else { next.deadline_at };
            next.resend_at = if matches!(input, Input::ResendDue) { None } else { next.resend_at };
            if next == *saga {
                return ignored(saga, input);
            }
            Vec::new()
        }
        _ => return ignored(saga, input),
    };
    Outcome::Applied { saga: next, effects }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
