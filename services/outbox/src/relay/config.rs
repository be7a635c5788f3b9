//! How a relay behaves, and what it reports of its health.

use std::time::Duration;

use secrecy::SecretString;

use crate::message::DEFAULT_NOTIFY_CHANNEL;

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
