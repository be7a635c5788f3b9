//! The dispatcher: claims due deliveries and sends them, concurrently (at
//! most DELIVERY_CONCURRENCY in flight, DELIVERY_ENDPOINT_CONCURRENCY per
//! endpoint), so that one slow endpoint only ever holds its own slots. It is
//! woken by `pg_notify` at the commit that makes deliveries due, by a timer for
//! the next scheduled attempt and by a slow safety poll. A fast endpoint's
//! deliveries are claimed ahead in batches ([`super::endpoints`]) and the
//! outcomes recorded in batches ([`super::record`]), so a sender never waits
//! on the database. Each endpoint has a circuit breaker: after consecutive
//! failures its deliveries are held for a cool-down, then one probe goes through.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::{
    sync::{Notify, mpsc},
    task::{Id, JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Outcome,
    claim::{self, Claimed, Room},
    config::DeliveryConfig,
    db::{CHANNEL, Kind},
    email::EmailSender,
    endpoints::{Endpoints, Queued},
    metrics::DeliveryMetrics,
    record::{self, Attempted, Record},
    webhook::WebhookSender,
};

/// Beyond the attempt's timeout, how long a claim lasts: time to wait for a
/// slot and to record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Claimed deliveries a replica holds at most, per slot of DELIVERY_CONCURRENCY.
const HELD_PER_SLOT: usize = 16;

pub(crate) struct Dispatcher {
    /// Claims and give-backs, committed without waiting for the WAL flush: a
    /// claim lost with the database only means the delivery is sent again
    /// under its webhook-id, which at-least-once allows, and the claim is on
    /// the path of every delivery's latency.
    claims: PgPool,
    /// Outcomes, committed durably, and the gauges.
    records: PgPool,
    listen_options: PgConnectOptions,
    config: DeliveryConfig,
    webhook: WebhookSender,
    email: EmailSender,
    metrics: DeliveryMetrics,
}

/// A finished attempt, as the loop settles it.
struct Settled {
    endpoint_id: Uuid,
    duration: Duration,
    delivered: bool,
    endpoint_failed: bool,
}

/// The attempts in flight, with each task's endpoint (so that even a
/// panicked attempt frees its slot).
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<Settled>,
    endpoints: HashMap<Id, Uuid>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn spawn(&mut self, endpoint_id: Uuid, attempt: impl Future<Output = Settled> + Send + 'static) {
        let id = self.tasks.spawn(attempt).id();
        self.endpoints.insert(id, endpoint_id);
    }

    fn finished(&mut self, joined: Result<(Id, Settled), JoinError>) -> Settled {
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
    pub(crate) fn new(
        listen_options: PgConnectOptions,
        config: DeliveryConfig,
        metrics: DeliveryMetrics,
    ) -> anyhow::Result<Self> {
        let webhook = WebhookSender::new(config.timeout, config.allow_private_networks, config.secret_key.clone())?;
        let email = EmailSender::new(&config.smtp_url, &config.smtp_from, config.timeout)?;
        let claims = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(listen_options.clone().options([("synchronous_commit", "off")]));
        let records = PgPoolOptions::new().max_connections(2).connect_lazy_with(listen_options.clone());
        Ok(Self { claims, records, listen_options, config, webhook, email, metrics })
    }

    fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    /// Runs until `stop` fires, then gives back what it claimed and did not
    /// send, lets the attempts in flight finish and records them.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let mut helpers = JoinSet::new();
        helpers.spawn(listen(self.listen_options.clone(), Arc::clone(&wake), stop.clone()));
        helpers.spawn(Arc::clone(&self).refresh_gauges(stop.clone()));
        let (records, to_record) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record::run(self.records.clone(), to_record, self.config.disable_after));
        let mut endpoints = Endpoints::new(
            self.config.endpoint_concurrency,
            self.config.breaker_threshold,
            self.config.breaker_cooldown,
        );
        let mut in_flight = InFlight::default();
        let held_at_most = self.config.concurrency * HELD_PER_SLOT;
        tracing::info!(concurrency = self.config.concurrency, "delivery dispatcher started");
        // Whether a claim may find something: after a wake-up, the timer, a
        // full claim, or an endpoint (or the replica) having room again.
        let mut look = true;
        // The claim (or due-time read) under way, if any: attempts go on
        // starting and settling meanwhile.
        let mut looking: Option<Pin<Box<dyn Future<Output = Looked> + Send>>> = None;
        let mut deadline = Instant::now();
        while !stop.is_cancelled() {
            while let Some(joined) = in_flight.tasks.try_join_next_with_id() {
                let done = in_flight.finished(joined);
                look |= self.settle(&mut endpoints, done, held_at_most).await;
            }
            self.start_attempts(&mut endpoints, &mut in_flight, &records).await;
            if look && looking.is_none() {
                look = false;
                let room = endpoints.room(held_at_most.saturating_sub(endpoints.outstanding()));
                if room.total > 0 {
                    looking = Some(Box::pin(claim(self.claims.clone(), room, self.lease())));
                } else {
                    deadline = self.deadline(None, &endpoints);
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => look = true,
                looked = async { looking.as_mut().expect("guarded").await }, if looking.is_some() => {
                    looking = None;
                    match looked {
                        Looked::Claimed { room, claimed: Ok(claimed) } => {
                            let (count, now) = (claimed.len(), Instant::now());
                            for delivery in claimed {
                                endpoints.queue(delivery, now);
                            }
                            if count as i64 >= room.total {
                                look = true;
                            } else {
                                // Nothing more is due now: when will something be?
                                looking = Some(Box::pin(next_due(self.claims.clone(), room)));
                            }
                        }
                        Looked::Claimed { claimed: Err(err), .. } => {
                            tracing::warn!(error = %err, "cannot claim deliveries; trying again shortly");
                            deadline = Instant::now() + Duration::from_secs(1);
                        }
                        Looked::NextDue(due) => deadline = self.deadline(due, &endpoints),
                    }
                }
                Some(joined) = in_flight.tasks.join_next_with_id(), if in_flight.len() > 0 => {
                    let done = in_flight.finished(joined);
                    look |= self.settle(&mut endpoints, done, held_at_most).await;
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    look = true;
                    endpoints.forget_idle();
                }
            }
        }
        if let Some(looking) = looking
            && let Looked::Claimed { claimed: Ok(claimed), .. } = looking.await
        {
            let now = Instant::now();
            for delivery in claimed {
                endpoints.queue(delivery, now);
            }
        }
        let unsent: Vec<Queued> = endpoints.iter_mut().flat_map(|(_, e)| e.queued.drain(..)).collect();
        self.give_back(&unsent, chrono::Utc::now()).await;
        while let Some(joined) = in_flight.tasks.join_next_with_id().await {
            let done = in_flight.finished(joined);
            self.settle(&mut endpoints, done, held_at_most).await;
        }
        drop(records);
        if let Err(err) = recorder.await {
            tracing::error!(error = %err, "the delivery recorder panicked");
        }
        helpers.shutdown().await;
        self.claims.close().await;
        self.records.close().await;
        tracing::info!("delivery dispatcher stopped");
    }

    /// Starts queued deliveries where their endpoint and the replica have free slots.
    async fn start_attempts(
        self: &Arc<Self>,
        endpoints: &mut Endpoints,
        in_flight: &mut InFlight,
        records: &mpsc::UnboundedSender<Record>,
    ) {
        let now = Instant::now();
        // A claim that waited this long has too little lease left for a whole attempt.
        let too_old = self.lease().saturating_sub(self.config.timeout + Duration::from_secs(1));
        let mut stale = Vec::new();
        for (id, endpoint) in endpoints.iter_mut() {
            let mut slots = endpoint.slots(self.config.endpoint_concurrency, now);
            while slots > 0 && in_flight.len() < self.config.concurrency {
                let Some(queued) = endpoint.queued.pop_front() else { break };
                if now.duration_since(queued.claimed_at) > too_old {
                    stale.push(queued);
                    continue;
                }
                slots -= 1;
                endpoint.in_flight += 1;
                in_flight.spawn(*id, Arc::clone(self).attempt(queued.delivery, records.clone()));
            }
        }
        self.give_back(&stale, chrono::Utc::now()).await;
    }

    /// Gives claimed, unsent deliveries back for `due`.
    async fn give_back(&self, unsent: &[Queued], due: chrono::DateTime<chrono::Utc>) {
        let deliveries: Vec<&Claimed> = unsent.iter().map(|q| &q.delivery).collect();
        if let Err(err) = claim::release(&self.claims, &deliveries, due).await {
            tracing::warn!(error = %err, deliveries = deliveries.len(), "cannot give back claimed deliveries; they come due again after their lease");
        }
    }

    /// When to look again without being woken: when `next_due` comes due, a
    /// breaker's cool-down ends, or the poll.
    fn deadline(&self, next_due: Option<chrono::DateTime<chrono::Utc>>, endpoints: &Endpoints) -> Instant {
        let now = Instant::now();
        let mut deadline = now + self.config.poll_interval;
        if let Some(due) = next_due {
            let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
            // A due row that was not claimed is being claimed elsewhere: look again soon, not at once.
            deadline = deadline.min(now + wait.max(Duration::from_millis(20)));
        }
        if let Some(probe) = endpoints.next_probe() {
            deadline = deadline.min(probe);
        }
        deadline
    }

    /// Settles a finished attempt; returns whether a claim may now take more.
    async fn settle(&self, endpoints: &mut Endpoints, done: Settled, held_at_most: usize) -> bool {
        let finished = endpoints.finished(done.endpoint_id, done.duration, done.delivered, done.endpoint_failed);
        if !finished.given_back.is_empty() {
            let due = chrono::Utc::now() + self.config.breaker_cooldown;
            self.give_back(&finished.given_back, due).await;
        }
        finished.claimable || endpoints.outstanding() == held_at_most / 2
    }

    /// Sends one delivery and hands the outcome to the recorder, in a span continuing the order's trace.
    async fn attempt(self: Arc<Self>, delivery: Claimed, records: mpsc::UnboundedSender<Record>) -> Settled {
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

    async fn refresh_gauges(self: Arc<Self>, stop: CancellationToken) {
        let every = self.config.poll_interval.min(Duration::from_secs(5));
        loop {
            match claim::gauges(&self.records).await {
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

/// What a look at the deliveries found.
enum Looked {
    /// What a claim with `room` took.
    Claimed { room: Room, claimed: Result<Vec<Claimed>, sqlx::Error> },
    /// When the next delivery comes due.
    NextDue(Option<chrono::DateTime<chrono::Utc>>),
}

async fn claim(pool: PgPool, room: Room, lease: Duration) -> Looked {
    let claimed = claim::claim(&pool, &room, lease).await;
    Looked::Claimed { room, claimed }
}

async fn next_due(pool: PgPool, room: Room) -> Looked {
    Looked::NextDue(claim::next_due(&pool, &room.full).await.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "cannot read the next due delivery");
        None
    }))
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
