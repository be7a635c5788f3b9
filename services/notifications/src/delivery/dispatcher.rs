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
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{
    attempt::{InFlight, Settled},
    claim::{self, Claimed, Room},
    config::DeliveryConfig,
    db::CHANNEL,
    email::EmailSender,
    endpoints::{Endpoints, Queued},
    handoff,
    metrics::DeliveryMetrics,
    record::{self, Record},
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
    pub(super) config: DeliveryConfig,
    pub(super) webhook: WebhookSender,
    pub(super) email: EmailSender,
    pub(super) metrics: DeliveryMetrics,
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

    pub(super) fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    /// Runs until `stop` fires, then gives back what it claimed (or was
    /// handed) and did not send, lets the attempts in flight finish and records them.
    pub(crate) async fn run(self: Arc<Self>, mut handoff: handoff::Receiver, stop: CancellationToken) {
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
            handoff.report(endpoints.outstanding() < held_at_most, endpoints.refusing());
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
                Some(handed) = handoff.handed.recv() => endpoints.queue(handed),
                looked = async { looking.as_mut().expect("guarded").await }, if looking.is_some() => {
                    looking = None;
                    match looked {
                        Looked::Claimed { room, claimed: Ok(claimed) } => {
                            let count = claimed.len();
                            endpoints.queue(claimed);
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
                    // Until the look sets it: never a deadline already past.
                    deadline = Instant::now() + self.config.poll_interval;
                    endpoints.forget_idle();
                }
            }
        }
        handoff.report(false, Vec::new());
        if let Some(looking) = looking
            && let Looked::Claimed { claimed: Ok(claimed), .. } = looking.await
        {
            endpoints.queue(claimed);
        }
        handoff.handed.close();
        while let Ok(handed) = handoff.handed.try_recv() {
            endpoints.queue(handed);
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
