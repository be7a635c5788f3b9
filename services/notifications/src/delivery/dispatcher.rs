//! The dispatcher: claims due deliveries and sends them, concurrently (at
//! most DELIVERY_CONCURRENCY in flight, DELIVERY_ENDPOINT_CONCURRENCY per
//! endpoint), so that one slow endpoint only ever holds its own slots. It is
//! woken by `pg_notify` at the commit that makes deliveries due, by a timer for
//! the next scheduled attempt and by a slow safety poll. Each endpoint has a
//! circuit breaker: after consecutive failures its deliveries are held for a
//! cool-down, then one probe goes through.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener},
};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Outcome,
    claim::{self, Attempted, Claimed, Room},
    config::DeliveryConfig,
    db::{CHANNEL, Kind},
    email::EmailSender,
    metrics::DeliveryMetrics,
    webhook::WebhookSender,
};

/// Beyond the attempt's timeout, how long a claim lasts: time to record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

pub(crate) struct Dispatcher {
    pool: PgPool,
    listen_options: PgConnectOptions,
    config: DeliveryConfig,
    webhook: WebhookSender,
    email: EmailSender,
    metrics: DeliveryMetrics,
}

/// An endpoint's attempts in flight and its breaker.
#[derive(Debug, Default)]
struct EndpointState {
    in_flight: i32,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// A finished attempt, as the loop settles it.
struct Settled {
    endpoint_id: Uuid,
    delivered: bool,
    endpoint_failed: bool,
}

impl Dispatcher {
    pub(crate) fn new(
        pool: PgPool,
        listen_options: PgConnectOptions,
        config: DeliveryConfig,
        metrics: DeliveryMetrics,
    ) -> anyhow::Result<Self> {
        let webhook = WebhookSender::new(config.timeout, config.allow_private_networks, config.secret_key.clone())?;
        let email = EmailSender::new(&config.smtp_url, &config.smtp_from, config.timeout)?;
        Ok(Self { pool, listen_options, config, webhook, email, metrics })
    }

    fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    /// Runs until `stop` fires, then lets the attempts in flight finish.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let mut helpers = JoinSet::new();
        helpers.spawn(listen(self.listen_options.clone(), Arc::clone(&wake), stop.clone()));
        helpers.spawn(Arc::clone(&self).refresh_gauges(stop.clone()));
        let mut endpoints: HashMap<Uuid, EndpointState> = HashMap::new();
        let mut in_flight: JoinSet<Settled> = JoinSet::new();
        tracing::info!(concurrency = self.config.concurrency, "delivery dispatcher started");
        while !stop.is_cancelled() {
            while let Some(done) = in_flight.try_join_next() {
                self.settle(&mut endpoints, done);
            }
            let room = self.room(&endpoints, in_flight.len());
            if room.total > 0 {
                match claim::claim(&self.pool, &room, self.lease()).await {
                    Ok(claimed) if !claimed.is_empty() => {
                        for delivery in claimed {
                            endpoints.entry(delivery.endpoint_id).or_default().in_flight += 1;
                            in_flight.spawn(Arc::clone(&self).attempt(delivery));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot claim deliveries; trying again shortly");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            }
            let deadline = self.next_wake(&room, &endpoints).await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => self.settle(&mut endpoints, done),
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
        while let Some(done) = in_flight.join_next().await {
            self.settle(&mut endpoints, done);
        }
        helpers.shutdown().await;
        tracing::info!("delivery dispatcher stopped");
    }

    /// What the next claim may take: the replica's free slots and each endpoint's.
    fn room(&self, endpoints: &HashMap<Uuid, EndpointState>, in_flight: usize) -> Room {
        let now = Instant::now();
        let per_endpoint = self.config.endpoint_concurrency as i32;
        let mut room =
            Room { total: self.config.concurrency.saturating_sub(in_flight) as i64, per_endpoint, ..Room::default() };
        for (id, state) in endpoints {
            let free = match state.open_until {
                Some(until) if until > now => 0,
                // Half-open: one probe at a time.
                Some(_) => i32::from(state.in_flight == 0),
                None => per_endpoint - state.in_flight,
            };
            if free <= 0 {
                room.full.push(*id);
            } else if free < per_endpoint {
                room.busy.push((*id, free));
            }
        }
        room
    }

    /// When to look again without being woken: the next due delivery, a breaker's cool-down end, or the poll.
    async fn next_wake(&self, room: &Room, endpoints: &HashMap<Uuid, EndpointState>) -> Instant {
        let now = Instant::now();
        let mut deadline = now + self.config.poll_interval;
        if room.total > 0 {
            match claim::next_due(&self.pool, &room.full).await {
                Ok(Some(due)) => {
                    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
                    // A due row that was not claimed is being claimed elsewhere: look again soon, not at once.
                    deadline = deadline.min(now + wait.max(Duration::from_millis(20)));
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot read the next due delivery"),
            }
        }
        for until in endpoints.values().filter_map(|state| state.open_until) {
            if until > now {
                deadline = deadline.min(until);
            }
        }
        deadline
    }

    fn settle(&self, endpoints: &mut HashMap<Uuid, EndpointState>, done: Result<Settled, tokio::task::JoinError>) {
        let done = match done {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "a delivery attempt panicked; its delivery comes due again after its lease");
                return;
            }
        };
        let Some(state) = endpoints.get_mut(&done.endpoint_id) else { return };
        state.in_flight -= 1;
        if done.delivered {
            state.consecutive_failures = 0;
            state.open_until = None;
        } else if done.endpoint_failed {
            state.consecutive_failures += 1;
            if state.consecutive_failures >= self.config.breaker_threshold {
                if state.open_until.is_none() {
                    tracing::warn!(endpoint_id = %done.endpoint_id, failures = state.consecutive_failures, "circuit opened: holding the endpoint's deliveries");
                }
                state.open_until = Some(Instant::now() + self.config.breaker_cooldown);
            }
        }
        if state.in_flight <= 0 && state.consecutive_failures == 0 && state.open_until.is_none() {
            endpoints.remove(&done.endpoint_id);
        }
    }

    /// Sends one delivery and records the outcome, in a span continuing the order's trace.
    async fn attempt(self: Arc<Self>, delivery: Claimed) -> Settled {
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
            match claim::record(&self.pool, &delivery, &attempted, self.config.disable_after).await {
                Ok((true, disabled)) => {
                    tracing::debug!(status = attempted.status, code = ?attempted.status_code, error = %attempted.error, "delivery attempt recorded");
                    if let Some(disabled) = disabled {
                        tracing::warn!(endpoint_id = %disabled.endpoint_id, failing_since = %disabled.failing_since, "endpoint disabled: its deliveries kept failing");
                    }
                }
                Ok((false, _)) => tracing::info!("delivery claimed again elsewhere after its lease ran out; this attempt is recorded only"),
                Err(err) => tracing::warn!(error = %err, "cannot record a delivery attempt; the delivery comes due again after its lease"),
            }
            Settled {
                endpoint_id: delivery.endpoint_id,
                delivered: attempted.status == "delivered",
                endpoint_failed: attempted.endpoint_failed,
            }
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

    async fn refresh_gauges(self: Arc<Self>, stop: CancellationToken) {
        let every = self.config.poll_interval.min(Duration::from_secs(5));
        loop {
            match claim::gauges(&self.pool).await {
                Ok((pending, oldest, disabled)) => self.metrics.gauges(pending, oldest, disabled),
                Err(err) => tracing::debug!(error = %err, "cannot read the delivery gauges"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// ±20 %.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.8..=1.2))
}

/// LISTENs on [`CHANNEL`] on a connection of its own, waking the dispatcher on each notification.
async fn listen(options: PgConnectOptions, wake: Arc<Notify>, stop: CancellationToken) {
    let pool = PgPool::connect_lazy_with(options);
    while !stop.is_cancelled() {
        let result = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            // Whatever was notified while not listening.
            wake.notify_one();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok::<(), sqlx::Error>(()),
                    notification = listener.recv() => {
                        notification?;
                        wake.notify_one();
                    }
                }
            }
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "delivery LISTEN connection lost; reconnecting");
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
    pool.close().await;
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
