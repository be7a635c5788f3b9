//! How an inbox consumer behaves, with defaults that suit production and
//! checks that refuse settings which could process an event twice.

use std::time::Duration;

use secrecy::SecretString;

use crate::topology::Topology;

/// Everything an [`crate::Inbox`] needs besides its pool and handler.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    pub amqp_url: SecretString,
    /// Topic exchange the main queue is bound to (declared durable at start).
    pub exchange: String,
    /// Name of the main queue; the retry queues and the dead-letter queue are
    /// named after it (see [`Topology`]).
    pub queue: String,
    /// Routing keys the main queue is bound with.
    pub routing_keys: Vec<String>,
    /// Delay of each retry tier, in order; the last one repeats while attempts remain.
    pub retry_delays: Vec<Duration>,
    /// Processing attempts (the first one included) before a message is dead-lettered.
    pub max_attempts: u32,
    /// Unacknowledged deliveries the broker may push ahead of us.
    pub prefetch: u16,
    /// Deliveries committed in one transaction, at most.
    pub batch_size: usize,
    /// Under heavy load, how long a batch may wait for more deliveries after
    /// its first: while deliveries arrive at `linger_from_rate` a second or
    /// more, a batch that is not full waits up to this long for the rest of
    /// what the broker is handing over. Fuller batches cost the database a
    /// commit and the broker an ack per batch instead of per few messages;
    /// zero takes only what has already arrived.
    pub linger: Duration,
    /// The delivery rate (a second, smoothed over batches) from which batches
    /// linger; below it a batch starts at once, so light load keeps the
    /// lowest latency.
    pub linger_from_rate: f64,
    /// How long processed event ids are remembered. Must exceed the longest
    /// time a copy of an event can spend travelling through the retry tiers.
    pub dedup_window: Duration,
    /// How often expired processed ids are pruned.
    pub prune_interval: Duration,
    /// How long a retry or dead-letter publish may wait for its confirm.
    pub confirm_timeout: Duration,
    /// Largest message body accepted, in bytes; a larger one goes to the
    /// dead-letter queue (reason `too_large`) without being decoded.
    pub max_message_bytes: usize,
    /// Reconnect backoff bounds.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// AMQP connection name, shown in the broker's management UI.
    pub connection_name: String,
    /// Test hook; leave at [`Fault::None`] outside tests.
    pub fault: Fault,
}

/// Faults a test can inject to exercise crash paths for real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// After the first batch that recorded an event commits, drop the broker
    /// connection without acknowledging anything and stop, as a process killed
    /// between commit and ack would.
    CrashAfterCommit,
}

/// Default [`InboxConfig::max_message_bytes`]: 256 KiB, far above any event
/// Pulse publishes and far below what would strain a consumer's memory.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest body RabbitMQ can carry (its `max_message_size` ceiling): a
/// higher limit would be no limit.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 512 * 1024 * 1024;

/// Default retry tiers: 1 s, 5 s, 30 s, 2 min, 10 min.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

impl InboxConfig {
    /// A configuration with production defaults: one attempt per retry tier
    /// plus the first, prefetch 512, batches of up to 200 that linger 2 ms from
    /// 1,500 deliveries a second, a 7-day dedup window.
    pub fn new(
        amqp_url: SecretString,
        exchange: impl Into<String>,
        queue: impl Into<String>,
        routing_keys: Vec<String>,
    ) -> Self {
        Self {
            amqp_url,
            exchange: exchange.into(),
            queue: queue.into(),
            routing_keys,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            max_attempts: DEFAULT_RETRY_DELAYS.len() as u32 + 1,
            prefetch: 512,
            batch_size: 200,
            linger: Duration::from_millis(2),
            linger_from_rate: 1_500.0,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            confirm_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connection_name: "inbox".to_owned(),
            fault: Fault::None,
        }
    }

    /// The queue names this configuration declares and consumes.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.exchange, &self.queue, &self.routing_keys, &self.retry_delays)
    }

    /// The longest a message can spend waiting in retry queues before its last attempt.
    pub fn total_retry_delay(&self) -> Duration {
        (1..self.max_attempts).filter_map(|made| crate::headers::tier_for(made, &self.retry_delays)).map(|t| t.1).sum()
    }

    /// Refuses settings that cannot work, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue.is_empty() || self.queue.len() > 200 {
            return Err(format!("queue name must be 1 to 200 characters, got {:?}", self.queue));
        }
        if self.routing_keys.is_empty() {
            return Err("at least one routing key is required".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.max_attempts > 1 && self.retry_delays.is_empty() {
            return Err("retry_delays must not be empty when max_attempts is above 1".into());
        }
        if let Some(bad) = self.retry_delays.iter().find(|d| d.as_millis() == 0 || d.subsec_nanos() % 1_000_000 != 0) {
            return Err(format!("retry delays must be whole milliseconds of at least 1 ms, got {bad:?}"));
        }
        let mut names: Vec<String> = self.retry_delays.iter().map(|d| crate::topology::delay_label(*d)).collect();
        names.sort();
        names.dedup();
        if names.len() != self.retry_delays.len() {
            return Err("retry delays must be distinct".into());
        }
        if self.prefetch == 0 || self.batch_size == 0 {
            return Err("prefetch and batch_size must be at least 1".into());
        }
        if self.linger > Duration::from_secs(1) {
            return Err(format!("linger must be at most 1 s, got {:?}", self.linger));
        }
        if !self.linger_from_rate.is_finite() || self.linger_from_rate < 0.0 {
            return Err(format!("linger_from_rate must be a rate of 0 or more, got {}", self.linger_from_rate));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(format!(
                "max_message_bytes must be 1 to {MAX_MESSAGE_BYTES_CEILING} (the broker's ceiling), got {}",
                self.max_message_bytes
            ));
        }
        let longest = self.total_retry_delay();
        if self.dedup_window <= longest {
            return Err(format!(
                "dedup_window ({:?}) must exceed the total retry delay ({longest:?}), or a late copy could be processed twice",
                self.dedup_window
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InboxConfig {
        InboxConfig::new(SecretString::from("amqp://localhost"), "ex", "q", vec!["k".into()])
    }

    #[test]
    fn defaults_are_valid_and_sum_the_tiers() {
        let config = config();
        config.validate().unwrap();
        assert_eq!(config.total_retry_delay(), Duration::from_secs(1 + 5 + 30 + 120 + 600));
    }

    #[test]
    fn the_last_tier_repeats_in_the_total() {
        let mut config = config();
        config.retry_delays = vec![Duration::from_millis(200), Duration::from_millis(400)];
        config.max_attempts = 5;
        assert_eq!(config.total_retry_delay(), Duration::from_millis(200 + 400 + 400 + 400));
        config.max_attempts = 1;
        assert_eq!(config.total_retry_delay(), Duration::ZERO);
    }

    #[test]
    fn rejects_a_dedup_window_shorter_than_the_retries() {
        let mut config = config();
        config.dedup_window = Duration::from_secs(600);
        assert!(config.validate().unwrap_err().contains("dedup_window"));
    }

    #[test]
    fn rejects_unusable_settings() {
        for tweak in [
            (|c: &mut InboxConfig| c.max_attempts = 0) as fn(&mut InboxConfig),
            |c| c.retry_delays.clear(),
            |c| c.retry_delays = vec![Duration::from_micros(1500)],
            |c| c.retry_delays = vec![Duration::from_secs(1), Duration::from_millis(1000)],
            |c| c.routing_keys.clear(),
            |c| c.batch_size = 0,
            |c| c.linger = Duration::from_millis(1_001),
            |c| c.linger_from_rate = f64::NAN,
            |c| c.linger_from_rate = -1.0,
            |c| c.queue.clear(),
            |c| c.max_message_bytes = 0,
            |c| c.max_message_bytes = MAX_MESSAGE_BYTES_CEILING + 1,
        ] {
            let mut config = config();
            tweak(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
