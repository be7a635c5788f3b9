//! The consumer's instruments.

use std::time::Duration;

use chrono::Utc;
use telemetry::metrics::{self, Histogram, IntCounterVec, Name, Registry};

/// What became of one delivery; the `outcome` label of `inbox_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Processed,
    Duplicate,
    Retried,
    /// Dead-lettered after failing (permanent failure or the last attempt).
    DeadLettered,
    /// Dead-lettered because it could never be read (missing id, unknown
    /// type, wrong content type, too large, undecodable) or because every
    /// delivery of it ended its consumer (the broker's delivery limit).
    Poison,
}

impl Counted {
    const ALL: [Self; 5] = [Self::Processed, Self::Duplicate, Self::Retried, Self::DeadLettered, Self::Poison];

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
    handler_duration: Histogram,
    batch_duration: Histogram,
}

impl InboxMetrics {
    /// `queue`: the main queue, under which every outcome is counted from 0.
    pub(crate) fn new(registry: &Registry, queue: &str) -> Self {
        let known = Counted::ALL.map(|outcome| [queue, outcome.label()]);
        let known: Vec<&[&str]> = known.iter().map(|labels| labels.as_slice()).collect();
        Self {
            messages: metrics::counter_vec(
                registry,
                Name { prometheus: "inbox_messages", otel: "inbox.messages", unit: "{message}" },
                "Deliveries settled by the consumer, by outcome",
                &["queue", "outcome"],
                &known,
            ),
            lag: metrics::histogram(
                registry,
                Name { prometheus: "inbox_lag_seconds", otel: "inbox.lag", unit: "s" },
                "From the event's commit (occurred_at) to its processing commit",
                metrics::LATENCY_BUCKETS,
            ),
            handler_duration: metrics::histogram(
                registry,
                Name { prometheus: "inbox_handler_duration_seconds", otel: "messaging.process.duration", unit: "s" },
                "Applying one batch in the database: recording the event ids, the handler, the commit",
                metrics::LATENCY_BUCKETS,
            ),
            batch_duration: metrics::histogram(
                registry,
                Name { prometheus: "inbox_batch_duration_seconds", otel: "inbox.batch.duration", unit: "s" },
                "Applying and settling one batch: handler, commit, forwards and ack",
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

    /// One batch's database half (a batch with nothing to apply is not measured).
    pub(crate) fn applied(&self, took: Duration) {
        self.handler_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn batch(&self, took: Duration) {
        self.batch_duration.observe(took.as_secs_f64());
    }
}
