//! Configuration from the environment; every default works against the local services.

use std::{net::SocketAddr, time::Duration};

use outbox::RelayConfig;
use platform::{
    config::{ConfigError, addr_or, millis_or, millis_up_to_or, parse_or, rate_or, secret_url_or, secret_urls_or},
    db::PoolSettings,
};
use secrecy::SecretString;

/// What this replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// gRPC API and outbox relay (the default).
    All,
    /// gRPC API only; relays run as their own replica set.
    Api,
    /// Outbox relay only (with the health and reflection services).
    Relay,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "api" => Ok(Self::Api),
            "relay" => Ok(Self::Relay),
            other => Err(format!("expected all, api or relay, got {other:?}")),
        }
    }
}

/// CreateOrder transactions in flight at once, by default.
pub const DEFAULT_WRITERS: usize = 2;

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    /// `GET /metrics` (Prometheus text); port 0 binds an ephemeral port.
    pub metrics_addr: SocketAddr,
    pub database_url: SecretString,
    pub pool: PoolSettings,
    /// CreateOrder writers: transactions in flight at once, each writing every
    /// call that waited for it (see [`crate::group`]). At most the pool's size.
    pub writers: usize,
    pub role: Role,
    pub relay: RelayConfig,
    /// Between NOT_SERVING and closing the listener, so load balancers stop routing first.
    pub shutdown_grace: Duration,
    pub health_interval: Duration,
    /// At most one cross-process NOTIFY per this interval (see `outbox::OutboxWriter`).
    pub doorbell_interval: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let amqp_url = secret_urls_or("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")?;
        let mut relay = RelayConfig::new(amqp_url, "pulse-orders", vec![contracts::EVENTS_EXCHANGE.to_owned()]);
        relay.batch_size = parse_or("OUTBOX_BATCH_SIZE", relay.batch_size)?;
        relay.pipeline_depth = parse_or("OUTBOX_PIPELINE_DEPTH", relay.pipeline_depth)?.clamp(1, 16);
        relay.poll_interval = millis_or("OUTBOX_POLL_INTERVAL_MS", relay.poll_interval)?;
        relay.rebalance_interval = millis_or("OUTBOX_REBALANCE_INTERVAL_MS", relay.rebalance_interval)?;
        relay.gather = millis_up_to_or("OUTBOX_GATHER_MS", relay.gather, Duration::from_secs(1))?;
        relay.gather_from_rate = rate_or("OUTBOX_GATHER_FROM_RATE", relay.gather_from_rate)?;
        relay.backoff_max = millis_or("OUTBOX_BACKOFF_MAX_MS", relay.backoff_max)?;
        relay.retention = Duration::from_secs(3600 * parse_or("OUTBOX_RETENTION_HOURS", 0u64)?);
        relay.vacuum_every = parse_or("OUTBOX_VACUUM_EVERY_ROWS", relay.vacuum_every)?;
        // An empty channel name turns LISTEN/NOTIFY off: relays then rely on their poll.
        let channel =
            std::env::var("OUTBOX_NOTIFY_CHANNEL").unwrap_or_else(|_| outbox::DEFAULT_NOTIFY_CHANNEL.to_owned());
        relay.notify_channel = (!channel.trim().is_empty()).then(|| channel.trim().to_owned());
        if !(1..=10_000).contains(&relay.batch_size) {
            return Err(ConfigError::Invalid { name: "OUTBOX_BATCH_SIZE".into(), reason: "must be 1 to 10000".into() });
        }
        let max_connections: u32 = parse_or("ORDERS_DB_MAX_CONNECTIONS", 32)?;
        let writers: usize = parse_or("ORDERS_DB_WRITERS", DEFAULT_WRITERS)?;
        if writers == 0 || writers > max_connections as usize {
            return Err(ConfigError::Invalid {
                name: "ORDERS_DB_WRITERS".into(),
                reason: format!("must be 1 to ORDERS_DB_MAX_CONNECTIONS ({max_connections})"),
            });
        }
        Ok(Self {
            grpc_addr: addr_or("ORDERS_GRPC_ADDR", "0.0.0.0:50051")?,
            metrics_addr: addr_or("ORDERS_METRICS_ADDR", "0.0.0.0:9464")?,
            database_url: secret_url_or(
                "ORDERS_DATABASE_URL",
                "postgres://postgres:postgres@localhost:5432/pulse_orders",
            )?,
            pool: PoolSettings {
                max_connections,
                min_connections: parse_or("ORDERS_DB_MIN_CONNECTIONS", PoolSettings::default().min_connections)?,
                acquire_timeout: millis_or("ORDERS_DB_ACQUIRE_TIMEOUT_MS", Duration::from_secs(3))?,
            },
            writers,
            role: parse_or("ORDERS_ROLE", Role::All)?,
            relay,
            shutdown_grace: millis_or("ORDERS_SHUTDOWN_GRACE_MS", Duration::ZERO)?,
            health_interval: Duration::from_secs(1),
            doorbell_interval: millis_or("OUTBOX_DOORBELL_INTERVAL_MS", Duration::from_millis(2))?,
        })
    }
}
