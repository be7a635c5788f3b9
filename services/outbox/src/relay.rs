//! The relay loop: own partitions, claim, publish with confirms in flight,
//! delete what was confirmed; reconnect to either side with backoff.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use infra::{backoff::Backoff, rate::ArrivalRate};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgListener};
use telemetry::DbTarget;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::{
    message::{DEFAULT_NOTIFY_CHANNEL, LocalRelay},
    metrics::RelayMetrics,
    ownership::{Claim, Ownership, PendingRow},
    publisher::{Outcome, Publisher},
    retention, vacuum,
};

/// How a relay behaves; every field has a working default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub amqp_url: SecretString,
    /// AMQP `app_id` of published messages and the connection's name.
    pub app_id: String,
    /// Exchanges declared (durable, topic) on every connect.
    pub exchanges: Vec<String>,
    /// Rows claimed, published and marked together.
    pub batch_size: i64,
    /// Batches published ahead of their confirms (1: strictly one at a time).
    pub pipeline_depth: usize,
    /// Under heavy steady load, how long rows may gather between claims: while
    /// events arrive at `gather_from_rate` a second or more and a claim does not
    /// fill a batch, the next claim waits until this long after it. Fuller
    /// batches cost the broker, the database and the consumer less per event,
    /// which is what lets the whole pipeline sustain a higher rate; zero claims
    /// again as soon as a batch is confirmed.
    pub gather: Duration,
    /// The arrival rate (events a second, smoothed over claims) from which rows
    /// gather; below it each claim follows the last at once, so light load
    /// keeps the lowest latency.
    pub gather_from_rate: f64,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
    /// How often relays re-share partitions.
    pub rebalance_interval: Duration,
    /// How long a batch may wait for its confirms before the channel is reset.
    pub confirm_timeout: Duration,
    /// Published rows kept in `outbox_archive`; zero deletes them at once.
    pub retention: Duration,
    /// The relay vacuums `outbox_messages` each time it has deleted this many
    /// rows (see the `vacuum` module); zero leaves the table to autovacuum.
    pub vacuum_every: u64,
    /// Postgres channel to LISTEN on; None relies on the local waker and the poll.
    pub notify_channel: Option<String>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl RelayConfig {
    pub fn new(amqp_url: SecretString, app_id: impl Into<String>, exchanges: Vec<String>) -> Self {
        Self {
            amqp_url,
            app_id: app_id.into(),
            exchanges,
            batch_size: 500,
            pipeline_depth: 4,
            gather: Duration::from_millis(20),
            gather_from_rate: 1_500.0,
            poll_interval: Duration::from_secs(1),
            rebalance_interval: Duration::from_secs(2),
            confirm_timeout: Duration::from_secs(30),
            retention: Duration::ZERO,
            vacuum_every: 10_000,
            notify_channel: Some(DEFAULT_NOTIFY_CHANNEL.to_owned()),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// How often a relay claims from the start of the outbox rather than near
/// the newest row it has claimed: the longest a row that committed late, far
/// below ids already claimed, waits.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How far below the newest id it has claimed a relay with nothing in flight
/// looks again, for rows that committed after rows with higher ids (ids are
/// taken at insert, rows become visible at commit). Looking from the start
/// instead would walk every row deleted since the last vacuum, each claim: at
/// a few thousand events a second, tens of thousands of dead index entries.
const LOOKBACK_IDS: i64 = 1_000;

/// What the relay can currently reach; drives its health status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// The relay holds its database connection (and with it its partitions),
    /// which it opens only while the broker is reachable.
    pub database: bool,
    pub broker: bool,
    pub owned_partitions: usize,
}

impl RelayStatus {
    pub fn healthy(&self) -> bool {
        self.database && self.broker
    }
}

/// A published batch and the future that yields the broker's answers.
struct Batch {
    rows: Vec<PendingRow>,
    settle: BoxFuture<'static, (Vec<Outcome>, Option<String>)>,
    /// With OpenTelemetry, each row's publish span context; empty without.
    contexts: Vec<Option<String>>,
}

pub struct Relay {
    options: PgConnectOptions,
    /// Where `options` lead, for the spans of the marking statements.
    db: DbTarget,
    config: RelayConfig,
    local: LocalRelay,
    status: watch::Sender<RelayStatus>,
    metrics: RelayMetrics,
    /// Whether the backlog sampler runs (only with a registry someone scrapes).
    sample_backlog: bool,
    /// Rows deleted since the last vacuum.
    deleted: vacuum::Deleted,
}

impl Relay {
    /// A relay over the database at `options`. `local` is the writer's
    /// [`crate::OutboxWriter::local_relay`] when both live in one process.
    pub fn new(options: PgConnectOptions, config: RelayConfig, local: Option<LocalRelay>) -> Self {
        Self {
            db: DbTarget::new(&options),
            options,
            config,
            local: local.unwrap_or_default(),
            status: watch::Sender::new(RelayStatus::default()),
            metrics: RelayMetrics::new(&telemetry::metrics::Registry::new()),
            sample_backlog: false,
            deleted: vacuum::Deleted::default(),
        }
    }

    /// Records the relay's metrics into `registry` and measures the backlog
    /// (`outbox_pending_messages`, `outbox_oldest_pending_age_seconds`) about every second.
    pub fn with_metrics(mut self, registry: &telemetry::metrics::Registry) -> Self {
        self.metrics = RelayMetrics::new(registry);
        self.sample_backlog = true;
        self
    }

    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// Relays until `shutdown` fires; returns once the batches in flight are settled and marked.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = CancellationToken::new();
        // Dropped unfinished (a runtime shutting down, an aborted task), the
        // relay takes its helpers with it.
        let _helpers = tasks.clone().drop_guard();
        if let Some(channel) = self.config.notify_channel.clone() {
            tokio::spawn(listen(self.options.clone(), channel, Arc::clone(&self.local.waker), tasks.clone()));
        }
        if !self.config.retention.is_zero() {
            tokio::spawn(retention::maintain(self.options.clone(), self.config.retention, tasks.clone()));
        }
        if self.sample_backlog {
            tokio::spawn(self.metrics.clone().sample(self.options.clone(), tasks.clone()));
        }
        if self.config.vacuum_every > 0 {
            let (options, deleted) = (self.options.clone(), self.deleted.clone());
            tokio::spawn(vacuum::maintain(options, deleted, self.config.vacuum_every, tasks.clone()));
        }
        self.relay(&shutdown).await;
        tasks.cancel();
    }

    async fn relay(&self, shutdown: &CancellationToken) {
        let mut db: Option<Ownership> = None;
        let mut broker: Option<Publisher> = None;
        // Published batches awaiting their confirms, oldest first. While one
        // waits on the broker, the next is claimed and published: the database
        // and the broker work at the same time.
        let mut in_flight: VecDeque<Batch> = VecDeque::new();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut next_rebalance = Instant::now();
        let mut next_sweep = Instant::now();
        // The newest id claimed on this connection with these partitions.
        let mut claimed_up_to = 0i64;
        // Whether the last claim came back full: only a backlog is worth
        // claiming ahead of the confirms. Caught up, the relay claims again once
        // its batch is confirmed, so rows committed meanwhile go out together
        // (fewer, fuller batches for the database and the broker at steady load).
        let mut backlog = false;
        // While rows gather after a claim: no claim before this.
        let mut gather_until: Option<Instant> = None;
        // A commit woke the relay while a batch was in flight: its rows are
        // claimed and published at once instead of after that batch's confirms,
        // which at light load would add a whole confirm to their latency.
        let mut woken = false;
        let mut arrivals = ArrivalRate::default();

        loop {
            if shutdown.is_cancelled() && in_flight.is_empty() {
                break;
            }
            if broker.as_ref().is_some_and(|b| !b.is_connected()) {
                broker = None;
            }
            if broker.is_none() {
                in_flight.clear();
                match Publisher::connect(
                    self.config.amqp_url.expose_secret(),
                    &self.config.app_id,
                    &self.config.exchanges,
                )
                .await
                {
                    Ok(publisher) => {
                        tracing::info!("relay connected to the broker");
                        broker = Some(publisher);
                    }
                    Err(err) => {
                        // Partitions are held only while they can be published: a
                        // relay that cannot reach the broker lets its peers take them.
                        if let Some(ownership) = db.take() {
                            ownership.close().await;
                        }
                        self.report(false, false, 0);
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "relay cannot reach the broker; events stay pending"
                        );
                        self.metrics.retry("broker_unreachable");
                        sleep_or_stop(backoff.next_delay(), shutdown).await;
                        continue;
                    }
                }
            }
            if db.is_none() {
                // Rows published without a mark stay pending and go out again.
                in_flight.clear();
                self.local.set_owned([]);
                match Ownership::connect(&self.options, self.local.clone()).await {
                    Ok(ownership) => {
                        tracing::info!(relay = ownership.instance(), "relay connected to the database");
                        db = Some(ownership);
                        next_rebalance = Instant::now();
                        claimed_up_to = 0;
                    }
                    Err(err) => {
                        self.report(false, true, 0);
                        tracing::warn!(error = %err, "relay cannot reach the database");
                        self.metrics.retry("database_unreachable");
                        sleep_or_stop(backoff.next_delay(), shutdown).await;
                        continue;
                    }
                }
            }
            let (Some(ownership), Some(publisher)) = (db.as_mut(), broker.as_ref()) else { continue };

            // Partitions change hands only with nothing in flight.
            let mut rebalance_due = Instant::now() >= next_rebalance;
            if rebalance_due && in_flight.is_empty() && !shutdown.is_cancelled() {
                match ownership.rebalance().await {
                    // Short of our share: look again soon, a peer is giving partitions back.
                    Ok(short) => {
                        // A partition taken over may hold rows far below: look from the start.
                        claimed_up_to = 0;
                        let wait =
                            if short { self.config.rebalance_interval / 8 } else { self.config.rebalance_interval };
                        next_rebalance = Instant::now() + wait;
                        // Done: claim in this same pass, or a wake-up taken
                        // before it would wait for the next poll.
                        rebalance_due = false;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "relay lost the database while sharing partitions");
                        db = None;
                        continue;
                    }
                }
            }
            self.report(true, true, ownership.owned());

            let may_claim = !shutdown.is_cancelled() && !rebalance_due;
            if may_claim && in_flight.len() < self.config.pipeline_depth && (in_flight.is_empty() || backlog || woken) {
                woken = false;
                if let Some(until) = gather_until.take().filter(|until| *until > Instant::now()) {
                    tokio::select! {
                        _ = shutdown.cancelled() => continue,
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                let claim = self.next_claim(&in_flight, &[], &mut next_sweep, claimed_up_to, backlog);
                let claiming = Instant::now();
                let claimed = ownership.claim(&claim).await;
                backlog = claimed.as_ref().is_ok_and(|rows| rows.len() as i64 >= claim.limit);
                claimed_up_to = newest(claimed.as_deref().unwrap_or_default(), claimed_up_to);
                gather_until = claimed
                    .as_ref()
                    .ok()
                    .and_then(|rows| self.gather_after(&mut arrivals, rows.len(), &claim, claiming));
                match claimed {
                    Ok(rows) if !rows.is_empty() => {
                        in_flight.push_back(self.publish(publisher, rows, claiming).await);
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "relay lost the database while claiming");
                        db = None;
                        continue;
                    }
                }
            }

            // Room for another batch and no rows gathering: a wake-up claims
            // alongside the oldest batch's confirms instead of after them.
            let early = may_claim
                && in_flight.len() < self.config.pipeline_depth
                && gather_until.is_none_or(|until| until <= Instant::now());
            let Some(front) = in_flight.front_mut() else {
                backoff.reset();
                let until_rebalance = next_rebalance.saturating_duration_since(Instant::now());
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.local.waker.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval.min(until_rebalance)) => {}
                }
                continue;
            };
            let settling = Instant::now();
            let (outcomes, broken) = if early {
                tokio::select! {
                    settled = &mut front.settle => settled,
                    _ = self.local.waker.notified() => {
                        woken = true;
                        continue;
                    }
                }
            } else {
                (&mut front.settle).await
            };
            let batch = in_flight.pop_front().expect("the batch just settled");
            let marking = Instant::now();
            let rows = batch.rows;
            let confirmed: Vec<i64> =
                rows.iter().zip(&outcomes).filter(|(_, o)| **o == Outcome::Confirmed).map(|(r, _)| r.id).collect();
            // The next batch is claimed while this one is marked, each on its own connection.
            // Rows gathering after a busy claim are claimed at the top of the loop, in time.
            let gathering = gather_until.is_some_and(|until| until > Instant::now());
            let next = (may_claim && broken.is_none() && (in_flight.is_empty() || backlog) && !gathering)
                .then(|| self.next_claim(&in_flight, &rows, &mut next_sweep, claimed_up_to, backlog));
            let archive = !self.config.retention.is_zero();
            // They close when both statements are done: with a claim beside, a little late.
            let spans = self.mark_spans(&batch.contexts, &outcomes, confirmed.len());
            let (marked, claimed) = ownership.mark_and_claim(&confirmed, archive, next.as_ref()).await;
            drop(spans);
            if let Ok(rows) = marked {
                self.deleted.add(rows);
            }
            if let Err(err) = marked {
                // Confirmed but not marked: they will be published again (at least once).
                tracing::warn!(error = %err, rows = confirmed.len(), "relay could not mark confirmed rows");
                db = None;
                continue;
            }
            tracing::debug!(
                rows = confirmed.len(),
                settle_us = (marking - settling).as_micros() as u64,
                mark_us = marking.elapsed().as_micros() as u64,
                "marked outbox batch"
            );
            if let (Some(claim), Ok(rows)) = (&next, &claimed) {
                backlog = rows.len() as i64 >= claim.limit;
                claimed_up_to = newest(rows, claimed_up_to);
                gather_until = self.gather_after(&mut arrivals, rows.len(), claim, marking);
            }
            match claimed {
                Ok(next) if !next.is_empty() => in_flight.push_back(self.publish(publisher, next, marking).await),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "relay lost the database while claiming");
                    db = None;
                    continue;
                }
            }
            let mut unconfirmed = 0;
            for (row, outcome) in rows.iter().zip(&outcomes) {
                match outcome {
                    Outcome::Confirmed => self.metrics.confirmed(row),
                    Outcome::Unknown => unconfirmed += 1,
                    Outcome::Rejected(_) => self.metrics.failed("rejected", 1),
                }
            }
            self.metrics.failed("unconfirmed", unconfirmed);
            let mut rejected = false;
            for (row, outcome) in rows.iter().zip(&outcomes) {
                if let Outcome::Rejected(reason) = outcome {
                    rejected = true;
                    tracing::error!(event_id = %row.event_id, outbox_id = row.id, exchange = %row.exchange,
                        routing_key = %row.routing_key, reason = %reason, "broker refused an outbox message; it stays pending");
                    if let Err(err) = ownership.record_failure(&[row.id], reason).await {
                        tracing::warn!(error = %err, "relay could not record a publish failure");
                    }
                }
            }
            if let Some(reason) = broken {
                tracing::warn!(reason = %reason, "relay lost the broker channel; unconfirmed rows stay pending");
                if let Some(publisher) = broker.take() {
                    publisher.close().await;
                }
                in_flight.clear();
                self.report(true, false, db.as_ref().map_or(0, Ownership::owned));
                self.metrics.retry("channel_broken");
                sleep_or_stop(backoff.next_delay(), shutdown).await;
            } else if rejected {
                // Refused rows come back in the next claim: do not spin on them.
                self.metrics.retry("rejected");
                sleep_or_stop(backoff.next_delay(), shutdown).await;
            } else {
                backoff.reset();
            }
        }

        if let Some(publisher) = broker {
            publisher.close().await;
        }
        self.local.set_owned([]);
        if let Some(ownership) = db {
            ownership.close().await;
        }
        self.report(false, false, 0);
        tracing::info!("relay stopped");
    }

    /// When the claim after one of `claimed` rows (started at `started`) may
    /// run: later only while events arrive fast and that claim was not full.
    fn gather_after(
        &self,
        arrivals: &mut ArrivalRate,
        claimed: usize,
        claim: &Claim,
        started: Instant,
    ) -> Option<Instant> {
        let per_s = arrivals.update(claimed, started);
        let gather = !self.config.gather.is_zero() && per_s >= self.config.gather_from_rate;
        (gather && (claimed as i64) < claim.limit).then(|| started + self.config.gather)
    }

    /// The rows to claim after those published and not yet marked: `in_flight`
    /// and `settling` (a settled batch being marked). With batches in flight,
    /// the rows after the newest of them; with none, the rows from
    /// [`LOOKBACK_IDS`] below `claimed_up_to` on; once every [`SWEEP_INTERVAL`],
    /// every pending row. Outstanding rows are left out of the last two. Short
    /// of a `backlog`, batches in flight are small and the claim looks back as
    /// with none: rows of a transaction that committed after a later one's
    /// (ids are taken before commit) are not left for the sweep.
    fn next_claim(
        &self,
        in_flight: &VecDeque<Batch>,
        settling: &[PendingRow],
        next_sweep: &mut Instant,
        claimed_up_to: i64,
        backlog: bool,
    ) -> Claim {
        let outstanding = || in_flight.iter().map(|b| b.rows.as_slice()).chain([settling]);
        let sweep = Instant::now() >= *next_sweep;
        if sweep {
            *next_sweep = Instant::now() + SWEEP_INTERVAL;
        }
        if sweep || in_flight.is_empty() || !backlog {
            let after = if sweep { 0 } else { claimed_up_to.saturating_sub(LOOKBACK_IDS).max(0) };
            let exclude = outstanding().flat_map(|rows| rows.iter().map(|r| r.id)).filter(|id| *id > after).collect();
            Claim { limit: self.config.batch_size, after, exclude }
        } else {
            // Rows are claimed in id order: a batch's last row is its highest.
            let after = outstanding().filter_map(|rows| rows.last()).map(|r| r.id).max().unwrap_or(0);
            Claim { limit: self.config.batch_size, after, exclude: Vec::new() }
        }
    }

    /// Publishes claimed `rows` (claimed from `claiming` on), confirms left in flight.
    async fn publish(&self, publisher: &Publisher, rows: Vec<PendingRow>, claiming: Instant) -> Batch {
        self.metrics.batch(rows.len());
        let publishing = Instant::now();
        let mut flight = publisher.publish(&rows, &self.config.app_id).await;
        tracing::debug!(
            rows = rows.len(),
            claim_us = (publishing - claiming).as_micros() as u64,
            publish_us = publishing.elapsed().as_micros() as u64,
            "published outbox batch"
        );
        let contexts = flight.take_contexts();
        Batch { rows, settle: Box::pin(flight.settle(self.config.confirm_timeout)), contexts }
    }

    /// With OpenTelemetry, a span per confirmed row, child of its publish
    /// span, for the statement that marks the `batch_size` confirmed rows done;
    /// without it, nothing (`contexts` is empty).
    fn mark_spans(&self, contexts: &[Option<String>], outcomes: &[Outcome], batch_size: usize) -> Vec<Span> {
        contexts
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| **outcome == Outcome::Confirmed)
            .map(|(context, _)| {
                let span = self.db.span(&Span::none(), "DELETE", "outbox_messages", batch_size);
                telemetry::set_parent(&span, context.as_deref());
                span
            })
            .collect()
    }

    fn report(&self, database: bool, broker: bool, owned_partitions: usize) {
        self.metrics.owned(owned_partitions);
        self.status.send_if_modified(|status| {
            let next = RelayStatus { database, broker, owned_partitions };
            let changed = *status != next;
            *status = next;
            changed
        });
    }
}

async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// The highest id among claimed `rows` (in id order) and `up_to`.
fn newest(rows: &[PendingRow], up_to: i64) -> i64 {
    rows.last().map_or(up_to, |row| row.id.max(up_to))
}

/// Turns NOTIFYs on `channel` into wake-ups; a reconnect also wakes the relay
/// since notifications may have been missed meanwhile.
async fn listen(options: PgConnectOptions, channel: String, waker: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let connected = async {
            let mut listener = PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(options.clone())).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(error = %err, "outbox listener cannot connect");
                sleep_or_stop(backoff.next_delay(), &stop).await;
                continue;
            }
        };
        backoff.reset();
        waker.notify_one();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => waker.notify_one(),
                    // None: the connection dropped and will be re-established.
                    Ok(None) => waker.notify_one(),
                    Err(err) => {
                        tracing::debug!(error = %err, "outbox listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}
