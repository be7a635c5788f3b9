//! Configuration from the environment; every default works against the local services.

use std::{net::SocketAddr, time::Duration};

use infra::{
    config::{ConfigErrors, addr_or, millis_or, millis_up_to_or, parse_or, rate_or, secret_url_or, secret_urls_or},
    pg::PoolSettings,
};
use outbox::RelayConfig;
use platform::tls::ServerTls;
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
    /// TLS on the gRPC port (`ORDERS_TLS_*`); None serves plaintext.
    pub tls: Option<ServerTls>,
    /// At most one cross-process NOTIFY per this interval (see `outbox::OutboxWriter`).
    pub doorbell_interval: Duration,
}

/// Every variable orders reads with its own prefixes (`ORDERS_`, `OUTBOX_`):
/// any other name with them is warned about at start.
pub const VARIABLES: &[&str] = &[
    "ORDERS_GRPC_ADDR",
    "ORDERS_METRICS_ADDR",
    "ORDERS_DATABASE_URL",
    "ORDERS_DATABASE_URL_FILE",
    "ORDERS_TLS_CERT_FILE",
    "ORDERS_TLS_KEY_FILE",
    "ORDERS_TLS_CLIENT_CA_FILE",
    "ORDERS_DB_MAX_CONNECTIONS",
    "ORDERS_DB_MIN_CONNECTIONS",
    "ORDERS_DB_ACQUIRE_TIMEOUT_MS",
    "ORDERS_DB_WRITERS",
    "ORDERS_ROLE",
    "ORDERS_SHUTDOWN_GRACE_MS",
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
    // Read by the example clients (clients/), often set in the same shell: not a typo.
    "ORDERS_ADDR",
];

/// The prefixes of [`VARIABLES`].
pub const PREFIXES: &[&str] = &["ORDERS_", "OUTBOX_"];

impl Config {
    /// The configuration, or every problem it has (not just the first).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let p = &mut problems;
        let amqp_url =
            p.check(secret_urls_or("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"), SecretString::default());
        let mut relay = RelayConfig::new(amqp_url, "pulse-orders", vec![contracts::EVENTS_EXCHANGE.to_owned()]);
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
        let channel =
            std::env::var("OUTBOX_NOTIFY_CHANNEL").unwrap_or_else(|_| outbox::DEFAULT_NOTIFY_CHANNEL.to_owned());
        relay.notify_channel = (!channel.trim().is_empty()).then(|| channel.trim().to_owned());
        if !(1..=10_000).contains(&relay.batch_size) {
            p.invalid("OUTBOX_BATCH_SIZE", "must be 1 to 10000");
        }
        let max_connections: u32 = p.check(parse_or("ORDERS_DB_MAX_CONNECTIONS", 32), 32);
        let writers: usize = p.check(parse_or("ORDERS_DB_WRITERS", DEFAULT_WRITERS), DEFAULT_WRITERS);
        if writers == 0 || writers > max_connections as usize {
            p.invalid("ORDERS_DB_WRITERS", format!("must be 1 to ORDERS_DB_MAX_CONNECTIONS ({max_connections})"));
        }
        let any_port = SocketAddr::from(([0, 0, 0, 0], 0));
        let min_connections = PoolSettings::default().min_connections;
        let config = Self {
            grpc_addr: p.check(addr_or("ORDERS_GRPC_ADDR", "0.0.0.0:50051"), any_port),
            metrics_addr: p.check(addr_or("ORDERS_METRICS_ADDR", "0.0.0.0:9464"), any_port),
            database_url: p.check(
                secret_url_or("ORDERS_DATABASE_URL", "postgres://postgres:postgres@localhost:5432/pulse_orders"),
                SecretString::default(),
            ),
            pool: PoolSettings {
                max_connections,
                min_connections: p.check(parse_or("ORDERS_DB_MIN_CONNECTIONS", min_connections), min_connections),
                acquire_timeout: p
                    .check(millis_or("ORDERS_DB_ACQUIRE_TIMEOUT_MS", Duration::from_secs(3)), Duration::from_secs(3)),
            },
            writers,
            role: p.check(parse_or("ORDERS_ROLE", Role::All), Role::All),
            relay,
            shutdown_grace: p.check(millis_or("ORDERS_SHUTDOWN_GRACE_MS", Duration::ZERO), Duration::ZERO),
            health_interval: Duration::from_secs(1),
            tls: p.check(ServerTls::from_env("ORDERS"), None),
            doorbell_interval: p
                .check(millis_or("OUTBOX_DOORBELL_INTERVAL_MS", Duration::from_millis(2)), Duration::from_millis(2)),
        };
        problems.or_value(config)
    }
}
