//! Configuration from the environment; every default works against the local
//! Postgres and RabbitMQ.
//!
//! | variable | default |
//! |---|---|
//! | `NOTIFICATIONS_GRPC_ADDR` | `0.0.0.0:50052` |
//! | `NOTIFICATIONS_DATABASE_URL` | `postgres://postgres:postgres@localhost:5432/pulse_notifications` |
//! | `NOTIFICATIONS_DB_MAX_CONNECTIONS` | `32` |
//! | `NOTIFICATIONS_DB_MIN_CONNECTIONS` | `4` |
//! | `NOTIFICATIONS_DB_ACQUIRE_TIMEOUT_MS` | `3000` |
//! | `AMQP_URL` | `amqp://guest:guest@localhost:5672/%2f` |
//! | `NOTIFICATIONS_CONSUMER_ENABLED` | `true` |
//! | `NOTIFICATIONS_EXCHANGE` | `pulse.events` |
//! | `NOTIFICATIONS_QUEUE_PREFIX` | `pulse` (main queue `<prefix>.notifications.order-created`, bound to `order.created`, `order.completed` and `order.failed`) |
//! | `NOTIFICATIONS_PREFETCH` | `512` |
//! | `NOTIFICATIONS_BATCH_SIZE` | `200` |
//! | `NOTIFICATIONS_LINGER_MS` | `2` (a batch's wait for more deliveries under heavy load) |
//! | `NOTIFICATIONS_LINGER_FROM_RATE` | `1500` (deliveries a second from which batches linger) |
//! | `NOTIFICATIONS_RETRY_DELAYS_MS` | `1000,5000,30000,120000,600000` |
//! | `NOTIFICATIONS_MAX_ATTEMPTS` | `6` |
//! | `NOTIFICATIONS_DEDUP_WINDOW_SECS` | `604800` (7 days) |
//! | `INBOX_MAX_MESSAGE_BYTES` | `262144` (256 KiB; a larger body is dead-lettered, reason `too_large`) |
//! | `NOTIFICATIONS_ADMIN_TOKEN_FILE` | unset (the dead-letter console refuses every call) |
//! | `NOTIFICATIONS_ADMIN_CLIENT_NAMES` | empty (no client certificate is an admin credential) |
//! | `DELIVERY_ENABLED` | `true` (run the delivery dispatcher in this replica) |
//! | `DELIVERY_SECRET_KEY` | unset (base64 of 32 random bytes encrypting webhook secrets; unset: creating or rotating a webhook endpoint is FAILED_PRECONDITION) |
//! | `DELIVERY_SECRET_KEY_FILE` | unset (a file holding the same; wins over the variable) |
//! | `DELIVERY_RETRY_SCHEDULE` | `5s,30s,2m,10m,1h,6h` (delays before attempts 2..n, jitter ±20 %) |
//! | `DELIVERY_DISABLE_AFTER` | `5d` (an endpoint failing continuously this long is disabled, with a notification) |
//! | `DELIVERY_ALLOW_PRIVATE_NETWORKS` | `false` (allow loopback, private and link-local targets) |
//! | `DELIVERY_TIMEOUT` | `10s` (one attempt: connect and answer) |
//! | `DELIVERY_ENDPOINT_CONCURRENCY` | `4` (attempts in flight per endpoint) |
//! | `DELIVERY_CONCURRENCY` | `64` (attempts in flight per replica) |
//! | `DELIVERY_SECRET_ROTATION_WINDOW` | `24h` (how long the previous secret keeps signing) |
//! | `SMTP_URL` | `smtp://localhost:1025` (`smtp://` plain, `smtps://` or `?tls=required`) |
//! | `SMTP_FROM` | `Pulse <pulse@localhost>` |
//!
//! Durations take `ms`, `s`, `m`, `h` or `d`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use inbox::InboxConfig;
use infra::config::{ConfigError, ConfigErrors, bool_or, millis_up_to_or, parse_or, rate_or, var_or};
use infra::pg::PoolSettings;
use platform::{consumer::ServerConfig, tls::ServerTls};
use secrecy::SecretString;

/// Everything the service needs; tests build one directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port 0 binds an ephemeral port (see [`crate::App::grpc_addr`]).
    pub grpc_addr: SocketAddr,
    /// `GET /metrics` (Prometheus text); port 0 binds an ephemeral port.
    pub metrics_addr: SocketAddr,
    pub database_url: SecretString,
    pub pool: PoolSettings,
    /// Off for a replica that only serves the API.
    pub consumer_enabled: bool,
    /// The consumer: broker URL, queue names, retry tiers, batch sizes.
    pub inbox: InboxConfig,
    /// How often the health check probes the database.
    pub health_interval: Duration,
    /// TLS on the gRPC port (`NOTIFICATIONS_TLS_*`); None serves plaintext.
    pub tls: Option<ServerTls>,
    /// The file holding the dead-letter console's bearer token; None refuses
    /// every console call PERMISSION_DENIED.
    pub admin_token_file: Option<PathBuf>,
    /// With mutual TLS, the client certificate names (subject common name or
    /// DNS subject alternative name) the console also accepts as a credential.
    pub admin_client_names: Vec<String>,
    /// Webhook and email deliveries (`DELIVERY_*`, `SMTP_*`).
    pub delivery: crate::delivery::DeliveryConfig,
}

/// The consumer's main queue for a prefix; the retry and dead-letter queues are named after it.
pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.notifications.order-created")
}

/// Every variable notifications reads with its own prefix (`NOTIFICATIONS_`);
/// the inbox's (`INBOX_`) are [`inbox::variables::VARIABLES`]. Any other name
/// with either prefix is warned about at start.
pub const VARIABLES: &[&str] = &[
    "NOTIFICATIONS_GRPC_ADDR",
    "NOTIFICATIONS_METRICS_ADDR",
    "NOTIFICATIONS_DATABASE_URL",
    "NOTIFICATIONS_DATABASE_URL_FILE",
    "NOTIFICATIONS_TLS_CERT_FILE",
    "NOTIFICATIONS_TLS_KEY_FILE",
    "NOTIFICATIONS_TLS_CLIENT_CA_FILE",
    "NOTIFICATIONS_ADMIN_TOKEN_FILE",
    "NOTIFICATIONS_ADMIN_CLIENT_NAMES",
    // Read by `notifications dlq` (the console's command line), often set in the same shell.
    "NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE",
    "NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE",
    "NOTIFICATIONS_ADMIN_CA_FILE",
    "NOTIFICATIONS_DB_MAX_CONNECTIONS",
    "NOTIFICATIONS_DB_MIN_CONNECTIONS",
    "NOTIFICATIONS_DB_ACQUIRE_TIMEOUT_MS",
    "NOTIFICATIONS_CONSUMER_ENABLED",
    "NOTIFICATIONS_EXCHANGE",
    "NOTIFICATIONS_QUEUE_PREFIX",
    "NOTIFICATIONS_PREFETCH",
    "NOTIFICATIONS_BATCH_SIZE",
    "NOTIFICATIONS_LINGER_MS",
    "NOTIFICATIONS_LINGER_FROM_RATE",
    "NOTIFICATIONS_RETRY_DELAYS_MS",
    "NOTIFICATIONS_MAX_ATTEMPTS",
    "NOTIFICATIONS_DEDUP_WINDOW_SECS",
    // Read by the example clients (clients/), often set in the same shell: not a typo.
    "NOTIFICATIONS_ADDR",
];

/// The prefix of notifications' own variables, without its underscore.
pub const PREFIX: &str = "NOTIFICATIONS";

/// The prefixes of [`known_variables`].
pub const PREFIXES: &[&str] = &["NOTIFICATIONS_", inbox::variables::PREFIX, "DELIVERY_", "SMTP_"];

/// [`VARIABLES`], the inbox's and the delivery channels'.
pub fn known_variables() -> Vec<&'static str> {
    VARIABLES.iter().chain(inbox::variables::VARIABLES).chain(crate::delivery::config::VARIABLES).copied().collect()
}

/// Variables that were renamed (old, new): setting the old one is warned about with the new name.
pub const RENAMED: &[(&str, &str)] = &[("NOTIFICATIONS_MAX_MESSAGE_BYTES", "INBOX_MAX_MESSAGE_BYTES")];

impl Config {
    /// The configuration, or every problem it has (not just the first).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let p = &mut problems;
        let mut inbox = InboxConfig::for_service(
            PREFIX,
            "notifications",
            contracts::EVENTS_EXCHANGE,
            queue_name,
            crate::handler::routing_keys(),
            p,
        );
        inbox.linger =
            p.check(millis_up_to_or("NOTIFICATIONS_LINGER_MS", inbox.linger, Duration::from_secs(1)), inbox.linger);
        inbox.linger_from_rate =
            p.check(rate_or("NOTIFICATIONS_LINGER_FROM_RATE", inbox.linger_from_rate), inbox.linger_from_rate);
        if let Some(delays) = p.check(delays_from("NOTIFICATIONS_RETRY_DELAYS_MS"), None) {
            inbox.max_attempts = delays.len() as u32 + 1;
            inbox.retry_delays = delays;
        }
        let window = inbox.dedup_window.as_secs();
        inbox.dedup_window = Duration::from_secs(p.check(parse_or("NOTIFICATIONS_DEDUP_WINDOW_SECS", window), window));
        // NOTIFICATIONS_MAX_ATTEMPTS, read here, wins over the count the retry delays imply.
        inbox.apply_service_env(PREFIX, p);

        // Flat fields (other crates' tests build this configuration): read as every consumer service does.
        let ServerConfig { grpc_addr, metrics_addr, database_url, pool, health_interval, tls, admin_client_names } =
            ServerConfig::from_env(PREFIX, "0.0.0.0:50052", "0.0.0.0:9465", p);
        let config = Self {
            grpc_addr,
            metrics_addr,
            database_url,
            pool,
            consumer_enabled: p.check(bool_or("NOTIFICATIONS_CONSUMER_ENABLED", true), true),
            inbox,
            health_interval,
            tls,
            admin_token_file: Some(var_or(ADMIN_TOKEN_FILE, "")).filter(|p| !p.trim().is_empty()).map(PathBuf::from),
            admin_client_names,
            delivery: crate::delivery::DeliveryConfig::from_env(p),
        };
        problems.or_value(config)
    }

    /// The settings the kit's parts read ([`platform::consumer::Kit`]).
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            grpc_addr: self.grpc_addr,
            metrics_addr: self.metrics_addr,
            database_url: self.database_url.clone(),
            pool: self.pool.clone(),
            health_interval: self.health_interval,
            tls: self.tls.clone(),
            admin_client_names: self.admin_client_names.clone(),
        }
    }
}

/// The variable naming the console's token file.
pub const ADMIN_TOKEN_FILE: &str = "NOTIFICATIONS_ADMIN_TOKEN_FILE";

/// The admin token in `path`, surrounding whitespace removed. The error names
/// the file, never its content.
pub fn read_admin_token(path: &std::path::Path) -> anyhow::Result<SecretString> {
    platform::consumer::read_admin_token(ADMIN_TOKEN_FILE, path)
}

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name: name.to_owned(), reason: reason.into() }
}

/// A comma-separated list of milliseconds, None when the variable is unset.
fn delays_from(name: &str) -> Result<Option<Vec<Duration>>, ConfigError> {
    let raw = var_or(name, "");
    if raw.trim().is_empty() {
        return Ok(None);
    }
    parse_delays(&raw).map(Some).map_err(|reason| invalid(name, reason))
}

fn parse_delays(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(|part| {
            let ms: u64 =
                part.trim().parse().map_err(|_| format!("{:?} is not a number of milliseconds", part.trim()))?;
            if ms == 0 { Err("a retry delay must be at least 1 ms".to_owned()) } else { Ok(Duration::from_millis(ms)) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn queue_names_derive_from_the_prefix() {
        assert_eq!(queue_name("pulse"), "pulse.notifications.order-created");
    }

    #[test]
    fn parses_retry_delays() {
        assert_eq!(parse_delays("1000, 5000,30000").unwrap(), [1000, 5000, 30000].map(Duration::from_millis));
        assert!(parse_delays("1000,,5000").is_err());
        assert!(parse_delays("1s").is_err());
        assert!(parse_delays("0").is_err());
    }

    proptest! {
        #[test]
        fn delay_lists_round_trip(delays in proptest::collection::vec(1u64..10_000_000, 1..8)) {
            let raw = delays.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let parsed = parse_delays(&raw).unwrap();
            prop_assert_eq!(parsed, delays.into_iter().map(Duration::from_millis).collect::<Vec<_>>());
        }
    }
}
