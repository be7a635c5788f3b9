//! The saga's instruments: sagas started and ended (by outcome), how long
//! they ran, and, sampled by the timer task, those in flight, the age of the
//! oldest and the timers due.

use std::time::Duration;

use telemetry::metrics::{self, Gauge, Histogram, IntCounterVec, IntGauge, Name, Registry};

/// Cheap to clone; every clone records into the same series.
#[derive(Clone)]
pub struct SagaMetrics {
    started: IntCounterVec,
    completed: IntCounterVec,
    failed: IntCounterVec,
    duration: Histogram,
    in_flight: IntGauge,
    oldest_age: Gauge,
    timers_due: IntGauge,
}

/// Failure reasons, each with a series from the start.
const REASONS: &[&[&str]] = &[&["PAYMENT_DECLINED"], &["OUT_OF_STOCK"], &["TIMED_OUT"]];

impl SagaMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            started: metrics::counter_vec(
                registry,
                Name { prometheus: "orders_sagas_started", otel: "orders.sagas.started", unit: "{saga}" },
                "Order sagas started (orders created)",
                &[],
                &[&[]],
            ),
            completed: metrics::counter_vec(
                registry,
                Name { prometheus: "orders_sagas_completed", otel: "orders.sagas.completed", unit: "{saga}" },
                "Order sagas ended with the order COMPLETED",
                &[],
                &[&[]],
            ),
            failed: metrics::counter_vec(
                registry,
                Name { prometheus: "orders_sagas_failed", otel: "orders.sagas.failed", unit: "{saga}" },
                "Order sagas ended with the order FAILED, by reason",
                &["reason"],
                REASONS,
            ),
            duration: metrics::histogram(
                registry,
                Name { prometheus: "orders_saga_duration_seconds", otel: "orders.saga.duration", unit: "s" },
                "From order creation to COMPLETED or FAILED",
                metrics::LATENCY_BUCKETS,
            ),
            in_flight: metrics::gauge(
                registry,
                Name { prometheus: "orders_sagas_in_flight", otel: "orders.sagas.in_flight", unit: "{saga}" },
                "Order sagas whose order is neither COMPLETED nor FAILED",
            ),
            oldest_age: metrics::float_gauge(
                registry,
                Name {
                    prometheus: "orders_saga_oldest_running_age_seconds",
                    otel: "orders.saga.oldest_running.age",
                    unit: "s",
                },
                "Age of the oldest order saga still running",
            ),
            timers_due: metrics::gauge(
                registry,
                Name { prometheus: "orders_saga_timers_due", otel: "orders.saga.timers_due", unit: "{timer}" },
                "Saga step deadlines and compensation re-sends whose time has passed",
            ),
        }
    }

    /// Metrics recorded nowhere, for code run without a registry.
    pub fn detached() -> Self {
        Self::new(&Registry::new())
    }

    pub fn started(&self, sagas: u64) {
        self.started.with_label_values(&[] as &[&str]).inc_by(sagas);
    }

    /// A saga ended: `failure` is None for COMPLETED, else the reason's name.
    pub fn ended(&self, failure: Option<&str>, ran: Duration) {
        match failure {
            None => self.completed.with_label_values(&[] as &[&str]).inc(),
            Some(reason) => self.failed.with_label_values(&[reason]).inc(),
        }
        self.duration.observe(ran.as_secs_f64());
    }

    /// What the timer task measured.
    pub fn sampled(&self, in_flight: i64, oldest_age_seconds: f64, timers_due: i64) {
        self.in_flight.set(in_flight);
        self.oldest_age.set(oldest_age_seconds);
        self.timers_due.set(timers_due);
    }
}
