//! The service's own counters, beside the inbox's and the outbox's:
//! `payments_captured_total`, `payments_declined_total`, `payments_refunded_total`.

use telemetry::metrics::{self, IntCounterVec, Name, Registry};

use crate::commands::Outcome;

/// Outcomes of the commands, as decided (an attempt rolled back and retried
/// may count twice; the tables are the record).
#[derive(Clone)]
pub(crate) struct Counters {
    captured: IntCounterVec,
    declined: IntCounterVec,
    refunded: IntCounterVec,
}

impl Counters {
    pub(crate) fn new(registry: &Registry) -> Self {
        let counter = |prometheus, otel, help| {
            metrics::counter_vec(registry, Name { prometheus, otel, unit: "{payment}" }, help, &[], &[&[]])
        };
        Self {
            captured: counter("payments_captured", "payments.captured", "Payments captured from customers' credit"),
            declined: counter(
                "payments_declined",
                "payments.declined",
                "Payments declined (over the limit, or cancelled)",
            ),
            refunded: counter("payments_refunded", "payments.refunded", "Captured payments given back by a refund"),
        }
    }

    /// Counts `outcome` unless it repeats an earlier one.
    pub(crate) fn record(&self, outcome: &crate::commands::Outcome, new: bool) {
        if !new {
            return;
        }
        let counter = match outcome {
            Outcome::Processed { .. } => &self.captured,
            Outcome::Declined { .. } => &self.declined,
            Outcome::Refunded { was_captured: true, .. } => &self.refunded,
            Outcome::Refunded { was_captured: false, .. } => return,
        };
        counter.with_label_values(&[] as &[&str]).inc();
    }
}
