//! One delivery attempt: sent in a span continuing the order's trace, judged
//! (delivered, retried on the schedule, or failed), counted, and handed to
//! the recorder.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::{
    sync::mpsc,
    task::{Id, JoinError, JoinSet},
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Outcome,
    claim::Claimed,
    db::Kind,
    dispatcher::Dispatcher,
    record::{Attempted, Record},
};

/// A finished attempt, as the loop settles it.
pub(super) struct Settled {
    pub(super) endpoint_id: Uuid,
    pub(super) duration: Duration,
    pub(super) delivered: bool,
    pub(super) endpoint_failed: bool,
}

/// The attempts in flight, with each task's endpoint (so that even a
/// panicked attempt frees its slot).
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) tasks: JoinSet<Settled>,
    endpoints: HashMap<Id, Uuid>,
}

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn spawn(&mut self, endpoint_id: Uuid, attempt: impl Future<Output = Settled> + Send + 'static) {
        let id = self.tasks.spawn(attempt).id();
        self.endpoints.insert(id, endpoint_id);
    }

    pub(super) fn finished(&mut self, joined: Result<(Id, Settled), JoinError>) -> Settled {
        match joined {
            Ok((id, settled)) => {
                self.endpoints.remove(&id);
                settled
            }
            Err(err) => {
                tracing::error!(error = %err, "a delivery attempt panicked; its delivery comes due again after its lease");
                let endpoint_id = self.endpoints.remove(&err.id()).unwrap_or_default();
                Settled { endpoint_id, duration: Duration::ZERO, delivered: false, endpoint_failed: false }
            }
        }
    }
}

impl Dispatcher {
    /// Sends one delivery and hands the outcome to the recorder, in a span continuing the order's trace.
    pub(super) async fn attempt(self: Arc<Self>, delivery: Claimed, records: mpsc::UnboundedSender<Record>) -> Settled {
        let kind = Kind::parse(&delivery.kind);
        let span = tracing::info_span!(
            "delivery attempt",
            otel.kind = "client",
            delivery_id = %delivery.delivery_id,
            endpoint_id = %delivery.endpoint_id,
            order_id = %delivery.order_id,
            attempt = delivery.attempts,
            kind = kind.as_str(),
            correlation_id = %delivery.correlation_id,
        );
        telemetry::propagation::set_parent(&span, delivery.traceparent.as_deref());
        let traceparent = telemetry::propagation::traceparent_of(&span).unwrap_or_else(|| {
            let parent = delivery.traceparent.as_deref().and_then(telemetry::tracecontext::TraceParent::parse);
            parent.map_or_else(telemetry::tracecontext::TraceParent::new_root, |p| p.child()).to_string()
        });
        async move {
            let started_at = chrono::Utc::now();
            let started = Instant::now();
            let limit = self.config.timeout + Duration::from_secs(1);
            let send = async {
                match kind {
                    Kind::Webhook => self.webhook.send(&delivery, &traceparent).await,
                    Kind::Email => self.email.send(&delivery, &traceparent).await,
                }
            };
            let outcome = tokio::time::timeout(limit, send)
                .await
                .unwrap_or_else(|_| Outcome::retry(None, format!("timed out after {limit:?}"), None));
            let duration = started.elapsed();
            let attempted = self.judge(&delivery, outcome, started_at, duration);
            let label = match attempted.status {
                "delivered" => "delivered",
                "failed" => "failed",
                _ => "retried",
            };
            self.metrics.attempted(kind.as_str(), label, duration);
            tracing::debug!(status = attempted.status, code = ?attempted.status_code, error = %attempted.error, "delivery attempted");
            let settled = Settled {
                endpoint_id: delivery.endpoint_id,
                duration,
                delivered: attempted.status == "delivered",
                endpoint_failed: attempted.endpoint_failed,
            };
            // The recorder outlives every attempt; should it be gone, the
            // delivery comes due again after its lease.
            let _ = records.send(Record {
                delivery_id: delivery.delivery_id,
                endpoint_id: delivery.endpoint_id,
                attempt: delivery.attempts,
                correlation_id: delivery.correlation_id.clone(),
                attempted,
            });
            settled
        }
        .instrument(span)
        .await
    }

    /// The delivery's next state after this attempt.
    fn judge(
        &self,
        delivery: &Claimed,
        outcome: Outcome,
        started_at: chrono::DateTime<chrono::Utc>,
        duration: Duration,
    ) -> Attempted {
        let base = Attempted {
            started_at,
            duration,
            status_code: None,
            error: String::new(),
            status: "delivered",
            next_attempt_at: None,
            endpoint_failed: false,
        };
        match outcome {
            Outcome::Delivered { status_code } => Attempted { status_code, ..base },
            Outcome::Failed { status_code, error } => Attempted { status_code, error, status: "failed", ..base },
            Outcome::Retry { status_code, error, retry_after } => {
                let attempt = delivery.attempts.max(1) as usize;
                match self.config.retry_schedule.get(attempt - 1) {
                    Some(delay) => {
                        let delay = jitter(*delay).max(retry_after.unwrap_or_default());
                        let next = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                        Attempted {
                            status_code,
                            error,
                            status: "pending",
                            next_attempt_at: Some(next),
                            endpoint_failed: true,
                            ..base
                        }
                    }
                    None => Attempted { status_code, error, status: "failed", endpoint_failed: true, ..base },
                }
            }
        }
    }
}

/// ±20 %.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
        }
    }
}
