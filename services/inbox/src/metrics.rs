//! The consumer's instruments (Prometheus names; OpenTelemetry names in the help text).

use std::time::Duration;

use chrono::Utc;
use platform::metrics::{self, Histogram, IntCounterVec, Registry};

/// What became of one delivery; the `outcome` label of `inbox_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Processed,
    Duplicate,
    Retried,
    /// Dead-lettered after failing (permanent failure or the last attempt).
    DeadLettered,
    /// Dead-lettered because it could never be read (missing id, unknown type, undecodable).
    Poison,
}

impl Counted {
    fn label(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Poison => "poison",
        }
    }
}

#[derive(Clone)]
pub(crate) struct InboxMetrics {
    messages: IntCounterVec,
    lag: Histogram,
    batch_duration: Histogram,
}

impl InboxMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        Self {
            messages: metrics::counter_vec(
                registry,
                "inbox_messages",
                "Deliveries settled by the consumer, by outcome (inbox.messages)",
                &["queue", "outcome"],
            ),
            lag: metrics::histogram(
                registry,
                "inbox_lag_seconds",
                "From the event's commit (occurred_at) to its processing commit (inbox.lag)",
                metrics::LATENCY_BUCKETS,
            ),
            batch_duration: metrics::histogram(
                registry,
                "inbox_batch_duration_seconds",
                "Applying and settling one batch: handler, commit, forwards and ack (inbox.batch.duration)",
                metrics::LATENCY_BUCKETS,
            ),
        }
    }

    pub(crate) fn settled(&self, queue: &str, outcome: Counted) {
        self.messages.with_label_values(&[queue, outcome.label()]).inc();
    }

    /// `occurred_at_ms`: the event's commit time in milliseconds since the epoch.
    pub(crate) fn processed(&self, occurred_at_ms: Option<i64>) {
        if let Some(occurred) = occurred_at_ms {
            let lag_ms = Utc::now().timestamp_millis().saturating_sub(occurred).max(0);
            self.lag.observe(lag_ms as f64 / 1000.0);
        }
    }

    pub(crate) fn batch(&self, took: Duration) {
        self.batch_duration.observe(took.as_secs_f64());
    }
}
