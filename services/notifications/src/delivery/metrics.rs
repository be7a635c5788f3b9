//! The delivery channels' instruments.

use std::time::Duration;

use telemetry::metrics::{self, Gauge, HistogramVec, IntCounterVec, IntGauge, Name, Registry};

#[derive(Clone)]
pub(crate) struct DeliveryMetrics {
    deliveries: IntCounterVec,
    attempt_duration: HistogramVec,
    pending: IntGauge,
    oldest_pending_age: Gauge,
    endpoints_disabled: IntGauge,
}

/// Outcomes of `notifications_deliveries_total`.
pub(crate) const OUTCOMES: [&str; 3] = ["delivered", "retried", "failed"];
const KINDS: [&str; 2] = ["webhook", "email"];

impl DeliveryMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let known: Vec<[&str; 2]> =
            OUTCOMES.iter().flat_map(|outcome| KINDS.iter().map(move |kind| [*outcome, *kind])).collect();
        let known: Vec<&[&str]> = known.iter().map(|labels| labels.as_slice()).collect();
        let attempt_duration = metrics::histogram_vec(
            registry,
            Name {
                prometheus: "notifications_delivery_attempt_duration_seconds",
                otel: "notifications.delivery.attempt.duration",
                unit: "s",
            },
            "One delivery attempt: the request and its answer (or the SMTP exchange)",
            &["kind"],
            metrics::LATENCY_BUCKETS,
        );
        // A series per kind from the start, as the counters have.
        for kind in KINDS {
            attempt_duration.with_label_values(&[kind]);
        }
        Self {
            deliveries: metrics::counter_vec(
                registry,
                Name { prometheus: "notifications_deliveries", otel: "notifications.deliveries", unit: "{delivery}" },
                "Delivery attempts settled, by outcome (delivered, retried, failed) and endpoint kind",
                &["outcome", "kind"],
                &known,
            ),
            attempt_duration,
            pending: metrics::gauge(
                registry,
                Name {
                    prometheus: "notifications_deliveries_pending",
                    otel: "notifications.deliveries.pending",
                    unit: "{delivery}",
                },
                "Deliveries waiting for an attempt",
            ),
            oldest_pending_age: metrics::float_gauge(
                registry,
                Name {
                    prometheus: "notifications_delivery_oldest_pending_age_seconds",
                    otel: "notifications.delivery.oldest_pending.age",
                    unit: "s",
                },
                "Age of the oldest pending delivery",
            ),
            endpoints_disabled: metrics::gauge(
                registry,
                Name {
                    prometheus: "notifications_endpoints_disabled",
                    otel: "notifications.endpoints.disabled",
                    unit: "{endpoint}",
                },
                "Delivery endpoints disabled (by request or for failing)",
            ),
        }
    }

    pub(crate) fn attempted(&self, kind: &str, outcome: &str, duration: Duration) {
        self.deliveries.with_label_values(&[outcome, kind]).inc();
        self.attempt_duration.with_label_values(&[kind]).observe(duration.as_secs_f64());
    }

    pub(crate) fn gauges(&self, pending: i64, oldest_age_seconds: f64, disabled: i64) {
        self.pending.set(pending);
        self.oldest_pending_age.set(oldest_age_seconds);
        self.endpoints_disabled.set(disabled);
    }
}
