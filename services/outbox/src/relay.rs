//! The relay loop: own partitions, claim, publish with confirms in flight,
//! delete what was confirmed; reconnect to either side with backoff.
//!
//! Each turn of [`Relay::relay`] makes sure both connections are up
//! ([`links`]) and runs one pass: share partitions when due, then claim or
//! wait as the [`plan`] decides, settling and marking the oldest batch ([`batch`]).

mod batch;
mod config;
mod links;
mod plan;

use std::collections::VecDeque;

use infra::backoff::Backoff;
use sqlx::postgres::PgConnectOptions;
use telemetry::DbTarget;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

pub use self::config::{RelayConfig, RelayStatus};
use self::{
    batch::{Batch, outstanding},
    links::{Links, Lost, listen, sleep_or_stop},
    plan::{Plan, Recovery, Step, Wait},
};
use crate::{
    message::LocalRelay, metrics::RelayMetrics, ownership::Ownership, publisher::Publisher, retention, vacuum,
};

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

/// How a pass ended.
enum Passed {
    /// Nothing settled (a batch went out, a wake-up came): on at once.
    Again,
    /// Nothing in flight, and a wake-up or the poll came.
    Idle,
    /// The oldest batch settled: `broken`, why the channel broke; `rejected`, whether the broker refused rows.
    Settled { broken: Option<String>, rejected: bool },
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
            tokio::spawn(listen(self.options.clone(), channel, self.local.clone(), tasks.clone()));
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
        let mut links = Links::default();
        // Published batches awaiting their confirms, oldest first. While one
        // waits on the broker, the next is claimed and published: the database
        // and the broker work at the same time.
        let mut in_flight: VecDeque<Batch> = VecDeque::new();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut plan = Plan::new(&self.config, Instant::now());
        while !(shutdown.is_cancelled() && in_flight.is_empty()) {
            if !self.connect(&mut links, &mut in_flight, &mut plan, &mut backoff, shutdown).await {
                continue;
            }
            let (Some(ownership), Some(publisher)) = (links.db.as_mut(), links.broker.as_ref()) else { continue };
            let passed = self.pass(ownership, publisher, &mut plan, &mut in_flight, shutdown).await;
            match passed {
                Ok(Passed::Again) => {}
                Ok(Passed::Idle) => backoff.reset(),
                Ok(Passed::Settled { broken, rejected }) => match plan::recovery(broken.is_some(), rejected) {
                    Recovery::Reset => backoff.reset(),
                    Recovery::BackOff => {
                        self.metrics.retry("rejected");
                        sleep_or_stop(backoff.next_delay(), shutdown).await;
                    }
                    Recovery::Reconnect => {
                        let reason = broken.unwrap_or_default();
                        self.lost_broker(&mut links, &mut in_flight, &reason, &mut backoff, shutdown).await;
                    }
                },
                Err(lost) => self.lost_database(&mut links, lost),
            }
        }
        self.disconnect(links).await;
        self.report(false, false, 0);
        tracing::info!("relay stopped");
    }

    /// One pass with both connections up: share partitions when due (only
    /// with nothing in flight), then claim or wait as the plan says.
    async fn pass(
        &self,
        ownership: &mut Ownership,
        publisher: &Publisher,
        plan: &mut Plan,
        in_flight: &mut VecDeque<Batch>,
        shutdown: &CancellationToken,
    ) -> Result<Passed, Lost> {
        let mut rebalance_due = plan.rebalance_due(Instant::now());
        if rebalance_due && in_flight.is_empty() && !shutdown.is_cancelled() {
            // Rows handed over for partitions about to change hands are claimed instead.
            self.local.handover.discard();
            let short = ownership.rebalance().await.map_err(Lost::Sharing)?;
            plan.rebalanced(short, Instant::now());
            // Done: claim in this same pass, or a wake-up taken before it
            // would wait for the next poll.
            rebalance_due = false;
        }
        self.report(true, true, ownership.owned());

        let may_claim = !shutdown.is_cancelled() && !rebalance_due;
        // Only a lone event skips its claim: with batches in flight, claims gather rows into fuller batches.
        let open = may_claim && in_flight.is_empty();
        self.take_handed(ownership, publisher, plan, in_flight, open).await;
        let wait = match plan.step(Instant::now(), in_flight.len(), may_claim) {
            Step::Wait(wait) => wait,
            Step::Claim { gather_until } => {
                if let Some(until) = gather_until {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Passed::Again),
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                let claim = plan.claim(Instant::now(), &outstanding(in_flight), &[]);
                let claiming = Instant::now();
                let claimed = ownership.claim(&claim).await;
                if self.take_claimed(publisher, plan, in_flight, &claim, claimed, claiming).await? {
                    return Ok(Passed::Again);
                }
                plan.wait(Instant::now(), in_flight.len(), may_claim)
            }
        };
        match wait {
            Wait::Idle(poll) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.local.waker.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                Ok(Passed::Idle)
            }
            Wait::Settle { early } => self.settle(ownership, publisher, plan, in_flight, early, may_claim).await,
        }
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
