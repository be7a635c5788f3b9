//! The outbox's own settings from its `OUTBOX_*` variables, read and checked
//! here so every service that runs a relay takes the same names and ranges.

use std::time::Duration;

use infra::config::{ConfigErrors, millis_or, millis_up_to_or, parse_or, rate_or};

use crate::{DEFAULT_NOTIFY_CHANNEL, RelayConfig};

/// Every variable the outbox reads: a service warns about other names with [`PREFIX`].
pub const VARIABLES: &[&str] = &[
    "OUTBOX_BATCH_SIZE",
    "OUTBOX_PIPELINE_DEPTH",
    "OUTBOX_POLL_INTERVAL_MS",
    "OUTBOX_REBALANCE_INTERVAL_MS",
    "OUTBOX_GATHER_MS",
    "OUTBOX_GATHER_FROM_RATE",
    "OUTBOX_BACKOFF_MAX_MS",
    "OUTBOX_RETENTION_HOURS",
    "OUTBOX_VACUUM_EVERY_ROWS",
    "OUTBOX_NOTIFY_CHANNEL",
    "OUTBOX_DOORBELL_INTERVAL_MS",
];

/// The prefix of [`VARIABLES`].
pub const PREFIX: &str = "OUTBOX_";

/// Largest relay batch, in rows.
pub const MAX_BATCH_SIZE: i64 = 10_000;

/// What the `OUTBOX_*` variables set: the relay, and the writer's doorbell.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub relay: RelayConfig,
    /// At most one cross-process NOTIFY per this interval (see [`crate::OutboxWriter::spawn_doorbell`]).
    pub doorbell_interval: Duration,
}

impl OutboxSettings {
    /// `relay` (the service's broker, app id and exchanges, with the outbox's
    /// defaults) with the `OUTBOX_*` variables applied. Every problem is added
    /// to `problems`, named by its variable, for the service to report with its own.
    pub fn from_env(mut relay: RelayConfig, problems: &mut ConfigErrors) -> Self {
        let p = problems;
        relay.batch_size = p.check(parse_or("OUTBOX_BATCH_SIZE", relay.batch_size), relay.batch_size);
        relay.pipeline_depth =
            p.check(parse_or("OUTBOX_PIPELINE_DEPTH", relay.pipeline_depth), relay.pipeline_depth).clamp(1, 16);
        relay.poll_interval = p.check(millis_or("OUTBOX_POLL_INTERVAL_MS", relay.poll_interval), relay.poll_interval);
        relay.rebalance_interval =
            p.check(millis_or("OUTBOX_REBALANCE_INTERVAL_MS", relay.rebalance_interval), relay.rebalance_interval);
        relay.gather = p.check(millis_up_to_or("OUTBOX_GATHER_MS", relay.gather, Duration::from_secs(1)), relay.gather);
        relay.gather_from_rate =
            p.check(rate_or("OUTBOX_GATHER_FROM_RATE", relay.gather_from_rate), relay.gather_from_rate);
        relay.backoff_max = p.check(millis_or("OUTBOX_BACKOFF_MAX_MS", relay.backoff_max), relay.backoff_max);
        relay.retention = Duration::from_secs(3600 * p.check(parse_or("OUTBOX_RETENTION_HOURS", 0u64), 0));
        relay.vacuum_every = p.check(parse_or("OUTBOX_VACUUM_EVERY_ROWS", relay.vacuum_every), relay.vacuum_every);
        // An empty channel name turns LISTEN/NOTIFY off: relays then rely on their poll.
        let channel = std::env::var("OUTBOX_NOTIFY_CHANNEL").unwrap_or_else(|_| DEFAULT_NOTIFY_CHANNEL.to_owned());
        relay.notify_channel = (!channel.trim().is_empty()).then(|| channel.trim().to_owned());
        let doorbell = Duration::from_millis(2);
        let settings =
            Self { relay, doorbell_interval: p.check(millis_or("OUTBOX_DOORBELL_INTERVAL_MS", doorbell), doorbell) };
        settings.check(p);
        settings
    }

    /// Adds to `problems` each setting out of its range, named by its variable.
    pub fn check(&self, problems: &mut ConfigErrors) {
        if !(1..=MAX_BATCH_SIZE).contains(&self.relay.batch_size) {
            problems.invalid("OUTBOX_BATCH_SIZE", format!("must be 1 to {MAX_BATCH_SIZE}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn settings(batch_size: i64) -> OutboxSettings {
        let mut relay = RelayConfig::new(SecretString::from("amqp://x"), "app", vec!["events".into()]);
        relay.batch_size = batch_size;
        OutboxSettings { relay, doorbell_interval: Duration::from_millis(2) }
    }

    #[test]
    fn the_batch_size_is_refused_outside_its_range_by_its_variable() {
        for (size, refused) in [(0, true), (1, false), (MAX_BATCH_SIZE, false), (MAX_BATCH_SIZE + 1, true)] {
            let mut problems = ConfigErrors::default();
            settings(size).check(&mut problems);
            let printed: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
            let expected: &[&str] =
                if refused { &["environment variable OUTBOX_BATCH_SIZE is invalid: must be 1 to 10000"] } else { &[] };
            assert_eq!(printed, expected, "batch size {size}");
        }
    }

    #[test]
    fn the_defaults_pass_their_own_checks() {
        let mut problems = ConfigErrors::default();
        settings(RelayConfig::new(SecretString::from("amqp://x"), "app", vec![]).batch_size).check(&mut problems);
        assert!(problems.0.is_empty(), "{problems}");
    }

    #[test]
    fn every_variable_has_the_prefix() {
        assert!(VARIABLES.iter().all(|name| name.starts_with(PREFIX)));
    }
}
