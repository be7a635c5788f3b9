//! The consumer loop: connect, declare, consume in batches, settle each batch,
//! and reconnect with backoff whenever the broker goes away.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use infra::{backoff::Backoff, rate::ArrivalRate};
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::{FieldTable, LongString, ShortString},
};
use secrecy::ExposeSecret;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    batch,
    config::{Fault, InboxConfig},
    forward,
    handler::Handler,
    message,
    metrics::InboxMetrics,
    poison,
    stats::InboxStats,
    topology::Topology,
};

/// An idempotent consumer of `H::Event` messages.
pub struct Inbox<H: Handler> {
    pool: PgPool,
    /// The connection batches run on, taken out of `pool` and kept: a pooled
    /// one costs a round trip (the pool's check on return) per batch. Dropped
    /// when the database is lost, and taken again for the next batch.
    db: tokio::sync::Mutex<Option<PgConnection>>,
    handler: H,
    config: InboxConfig,
    topology: Topology,
    connected: watch::Sender<bool>,
    stats: Arc<InboxStats>,
    metrics: InboxMetrics,
}

/// How a broker session ended without error.
enum End {
    Shutdown,
    Crashed,
}

impl<H: Handler> Inbox<H> {
    /// Checks `config` and prepares the consumer; nothing connects until [`Self::run`].
    pub fn new(pool: PgPool, handler: H, config: InboxConfig) -> anyhow::Result<Self> {
        config.validate().map_err(|reason| anyhow::anyhow!("invalid inbox configuration: {reason}"))?;
        let topology = config.topology();
        Ok(Self {
            pool,
            db: tokio::sync::Mutex::new(None),
            handler,
            config,
            connected: watch::Sender::new(false),
            stats: Arc::default(),
            metrics: InboxMetrics::new(&telemetry::metrics::Registry::new(), &topology.main),
            topology,
        })
    }

    /// Records `inbox_messages_total` (by queue and outcome), `inbox_lag_seconds`
    /// and `inbox_batch_duration_seconds` into `registry`.
    pub fn with_metrics(mut self, registry: &telemetry::metrics::Registry) -> Self {
        self.metrics = InboxMetrics::new(registry, &self.topology.main);
        self
    }

    /// True while the consumer holds a broker connection and is subscribed.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    pub fn stats(&self) -> Arc<InboxStats> {
        Arc::clone(&self.stats)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Consumes until `shutdown` fires, then stops taking deliveries, finishes
    /// the batch in hand, acks what committed and closes the connection.
    pub async fn run(self, shutdown: CancellationToken) {
        let prune_stop = CancellationToken::new();
        let pruner = tokio::spawn(crate::prune::run(
            self.pool.clone(),
            self.config.dedup_window,
            self.config.prune_interval,
            prune_stop.clone(),
        ));
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut sessions = 0u64;
        while !shutdown.is_cancelled() {
            if sessions > 0 {
                self.stats.count_reconnect();
            }
            sessions += 1;
            let started = tokio::time::Instant::now();
            match self.session(&shutdown, &mut backoff).await {
                Ok(End::Shutdown) => break,
                Ok(End::Crashed) => {
                    tracing::warn!("inbox stopped by an injected crash");
                    break;
                }
                Err(err) => {
                    self.connected.send_replace(false);
                    if started.elapsed() > Duration::from_secs(30) {
                        // A long quiet session was healthy: come back quickly.
                        backoff.reset();
                    }
                    tracing::warn!(error = format!("{err:#}"), queue = %self.topology.main, "inbox lost the broker; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        self.connected.send_replace(false);
        if let Some(conn) = self.db.lock().await.take() {
            // A goodbye, not a dropped socket, in the server's log.
            let _ = sqlx::Connection::close(conn).await;
        }
        prune_stop.cancel();
        let _ = pruner.await;
        tracing::info!(queue = %self.topology.main, "inbox stopped");
    }

    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> anyhow::Result<End> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(self.config.connection_name.as_str()));
        // Raced against shutdown: a connect to an unresponsive host can take minutes.
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            connected = infra::amqp::connect(self.config.amqp_url.expose_secret(), properties) => {
                connected.context("cannot connect")?
            }
        };
        let result = self.consume(&connection, shutdown, backoff).await;
        // Closing the connection hands every unacknowledged delivery back to the
        // queue; after an injected crash that includes the committed batch.
        let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, ShortString::from("bye"))).await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<End> {
        self.topology.declare(connection).await.context("cannot declare the topology")?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        channel.basic_qos(self.config.prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", self.config.connection_name, uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                ShortString::from(self.topology.main.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Its own channel: the batches' `multiple` acks must not cover its deliveries.
        let poison_channel = connection.create_channel().await?;
        poison_channel.confirm_select(ConfirmSelectOptions::default()).await?;
        poison_channel.basic_qos(16, BasicQosOptions::default()).await?;
        let poison_consumer = poison_channel
            .basic_consume(
                ShortString::from(self.topology.poison.as_str()),
                ShortString::from(format!("{tag}-poison").as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mover = poison::Mover {
            topology: self.topology.clone(),
            confirm_timeout: self.config.confirm_timeout,
            stats: Arc::clone(&self.stats),
            metrics: self.metrics.clone(),
        };
        let poison_stop = CancellationToken::new();
        // Whichever way this session ends, the mover ends with it.
        let _stop_mover = poison_stop.clone().drop_guard();
        let mut mover = tokio::spawn(mover.run(poison_channel.clone(), poison_consumer, poison_stop.clone()));
        self.connected.send_replace(true);
        tracing::info!(queue = %self.topology.main, prefetch = self.config.prefetch, "inbox consuming");
        let mut arrivals = ArrivalRate::default();

        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                moved = &mut mover => {
                    let err = moved.map_err(anyhow::Error::new).and_then(|ended| ended).err();
                    return Err(err.unwrap_or_else(|| anyhow::anyhow!("poison queue mover stopped")));
                }
                next = consumer.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return Err(err).context("consumer failed"),
                None => anyhow::bail!("the broker cancelled the consumer"),
            };
            let taken = tokio::time::Instant::now();
            let mut deliveries = vec![first];
            // Whatever the broker has already pushed joins the batch...
            let mut broken = take_ready(&mut consumer, &mut deliveries, self.config.batch_size);
            // ...and under heavy load, what arrives within the linger too: the
            // relay publishes a batch at once but the broker hands it over in
            // pieces, and each piece taken alone costs a transaction and an ack.
            let heavy = arrivals.at(taken) >= self.config.linger_from_rate;
            if heavy && !self.config.linger.is_zero() {
                let until = taken + self.config.linger;
                while broken.is_none() && deliveries.len() < self.config.batch_size {
                    match tokio::time::timeout_at(until, consumer.next()).await {
                        Ok(Some(Ok(delivery))) => {
                            deliveries.push(delivery);
                            broken = take_ready(&mut consumer, &mut deliveries, self.config.batch_size);
                        }
                        Ok(Some(Err(err))) => broken = Some(err),
                        // The stream ended (reported at the next take) or the linger is over.
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            arrivals.update(deliveries.len(), taken);
            // Not raced against shutdown: a batch in hand is always finished.
            if let Some(end) = self.process(&channel, deliveries).await? {
                return Ok(end);
            }
            // Only a settled batch proves the session works; a broker that takes
            // the subscription but refuses our publishes must not be retried fast.
            backoff.reset();
            if let Some(err) = broken {
                return Err(err).context("consumer failed");
            }
        }

        self.connected.send_replace(false);
        poison_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), mover).await;
        poison_channel.close(200, ShortString::from("inbox stopping")).await.ok();
        channel.basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default()).await.ok();
        // Prefetched deliveries not yet taken go back to the queue with the channel.
        channel.close(200, ShortString::from("inbox stopping")).await.ok();
        Ok(End::Shutdown)
    }

    async fn process(&self, channel: &Channel, deliveries: Vec<Delivery>) -> anyhow::Result<Option<End>> {
        let started = std::time::Instant::now();
        let mut items: Vec<_> = deliveries
            .into_iter()
            .map(|delivery| message::prepare::<H>(delivery, &self.topology, self.config.max_message_bytes))
            .collect();
        let applying = items.iter().any(|item| item.outcome == message::Outcome::Pending).then(std::time::Instant::now);
        let committed = batch::apply(&self.pool, &mut *self.db.lock().await, &self.handler, &mut items).await;
        let applied = started.elapsed();
        if let Some(applying) = applying {
            self.metrics.applied(applying.elapsed());
        }
        if committed && self.config.fault == Fault::CrashAfterCommit {
            return Ok(Some(End::Crashed));
        }
        forward::settle(channel, &self.config, &self.topology, &items, &self.stats, &self.metrics)
            .await
            .map_err(|reason| anyhow::anyhow!(reason))?;
        self.metrics.batch(started.elapsed());
        tracing::debug!(
            messages = items.len(),
            apply_us = applied.as_micros() as u64,
            settle_us = (started.elapsed() - applied).as_micros() as u64,
            "settled inbox batch"
        );
        Ok(None)
    }
}

/// Moves the deliveries already received into `batch`, up to `limit`, without
/// waiting; returns the consumer's error if it reported one.
fn take_ready(consumer: &mut lapin::Consumer, batch: &mut Vec<Delivery>, limit: usize) -> Option<lapin::Error> {
    while batch.len() < limit {
        match consumer.next().now_or_never() {
            Some(Some(Ok(delivery))) => batch.push(delivery),
            Some(Some(Err(err))) => return Some(err),
            Some(None) | None => break,
        }
    }
    None
}
