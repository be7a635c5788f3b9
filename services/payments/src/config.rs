//! Configuration from the environment; every default works against the local
//! Postgres and RabbitMQ.
//!
//! | variable | default |
//! |---|---|
//! | `PAYMENTS_GRPC_ADDR` | `0.0.0.0:50053` |
//! | `PAYMENTS_METRICS_ADDR` | `0.0.0.0:9466` |
//! | `PAYMENTS_DATABASE_URL` (or `_FILE`) | `postgres://postgres:postgres@localhost:5432/pulse_payments` |
//! | `PAYMENTS_DB_MAX_CONNECTIONS` / `_MIN_CONNECTIONS` / `_ACQUIRE_TIMEOUT_MS` | `32` / `4` / `3000` |
//! | `AMQP_URL` | `amqp://guest:guest@localhost:5672/%2f` |
//! | `PAYMENTS_EXCHANGE` | `pulse.events` (commands consumed from, replies published to) |
//! | `PAYMENTS_QUEUE_PREFIX` | `pulse` (main queue `<prefix>.payments.commands`) |
//! | `PAYMENTS_PREFETCH` / `PAYMENTS_BATCH_SIZE` | `512` / `200` |
//! | `PAYMENTS_MAX_ATTEMPTS` | `6` |
//! | `PAYMENTS_DEDUP_WINDOW_SECS` | `604800` (7 days) |
//! | `PAYMENTS_DEFAULT_CREDIT` | `1000.00` (the limit of a customer never set, in every currency) |
//! | `PAYMENTS_ADMIN_TOKEN_FILE` | unset (the dead-letter console refuses every call) |
//! | `PAYMENTS_ADMIN_CLIENT_NAMES` | empty (no client certificate is an admin credential) |
//! | `PAYMENTS_TLS_CERT_FILE` / `_KEY_FILE` / `_CLIENT_CA_FILE` | unset (plaintext) |
//! | `INBOX_*`, `OUTBOX_*` | the inbox's and the outbox's own |

use std::time::Duration;

use contracts::{
    Routed,
    payments::v1::{ProcessPayment, RefundPayment},
};
use inbox::InboxConfig;
use infra::config::{ConfigError, ConfigErrors, parse_or, secret_from_file, var_or};
use outbox::{OutboxSettings, RelayConfig};
use platform::consumer::ServerConfig;
use secrecy::SecretString;

use crate::money::DefaultCredit;

/// Everything the service needs; tests build one directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ports, database, health probe, TLS and the console's client names
    /// (`PAYMENTS_*`, read alike by every consumer service).
    pub server: ServerConfig,
    /// The consumer of the commands: broker URL, exchange, queue names, retry tiers.
    pub inbox: InboxConfig,
    /// The relay of the replies (to the consumer's exchange).
    pub relay: RelayConfig,
    /// The limit of a customer whose credit was never set.
    pub default_credit: DefaultCredit,
    /// The dead-letter console's bearer token (`PAYMENTS_ADMIN_TOKEN_FILE`);
    /// None refuses every console call PERMISSION_DENIED.
    pub admin_token: Option<SecretString>,
}

/// The consumer's main queue for a prefix; the retry and dead-letter queues are named after it.
pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.payments.commands")
}

/// The routing keys of the commands the queue is bound with.
pub fn routing_keys() -> Vec<String> {
    vec![ProcessPayment::ROUTING_KEY.to_owned(), RefundPayment::ROUTING_KEY.to_owned()]
}

/// Every variable payments reads with its own prefix (`PAYMENTS_`); the
/// inbox's and the outbox's are theirs. Any other name with one of
/// [`PREFIXES`] is warned about at start.
pub const VARIABLES: &[&str] = &[
    "PAYMENTS_GRPC_ADDR",
    "PAYMENTS_METRICS_ADDR",
    "PAYMENTS_DATABASE_URL",
    "PAYMENTS_DATABASE_URL_FILE",
    "PAYMENTS_TLS_CERT_FILE",
    "PAYMENTS_TLS_KEY_FILE",
    "PAYMENTS_TLS_CLIENT_CA_FILE",
    "PAYMENTS_ADMIN_TOKEN_FILE",
    "PAYMENTS_ADMIN_CLIENT_NAMES",
    "PAYMENTS_DB_MAX_CONNECTIONS",
    "PAYMENTS_DB_MIN_CONNECTIONS",
    "PAYMENTS_DB_ACQUIRE_TIMEOUT_MS",
    "PAYMENTS_EXCHANGE",
    "PAYMENTS_QUEUE_PREFIX",
    "PAYMENTS_PREFETCH",
    "PAYMENTS_BATCH_SIZE",
    "PAYMENTS_MAX_ATTEMPTS",
    "PAYMENTS_DEDUP_WINDOW_SECS",
    "PAYMENTS_DEFAULT_CREDIT",
];

/// The prefix of payments' own variables, without its underscore.
pub const PREFIX: &str = "PAYMENTS";

/// The prefixes of [`known_variables`].
pub const PREFIXES: &[&str] = &["PAYMENTS_", inbox::variables::PREFIX, outbox::config::PREFIX];

/// [`VARIABLES`], the inbox's and the outbox's.
pub fn known_variables() -> Vec<&'static str> {
    VARIABLES.iter().chain(inbox::variables::VARIABLES).chain(outbox::config::VARIABLES).copied().collect()
}

impl Config {
    /// The configuration, or every problem it has (not just the first).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let p = &mut problems;
        let mut inbox =
            InboxConfig::for_service(PREFIX, "payments", contracts::EVENTS_EXCHANGE, queue_name, routing_keys(), p);
        let window = inbox.dedup_window.as_secs();
        inbox.dedup_window = Duration::from_secs(p.check(parse_or("PAYMENTS_DEDUP_WINDOW_SECS", window), window));
        inbox.apply_service_env(PREFIX, p);
        let exchanges = vec![inbox.exchange.clone()];
        let relay =
            OutboxSettings::from_env(RelayConfig::new(inbox.amqp_url.clone(), "pulse-payments", exchanges), p).relay;
        let default_credit = p.check(
            DefaultCredit::parse(&var_or("PAYMENTS_DEFAULT_CREDIT", "1000.00")).map_err(|reason| {
                ConfigError::Invalid {
                    name: "PAYMENTS_DEFAULT_CREDIT".to_owned(),
                    reason: format!("must be a decimal amount, zero or more: {reason}"),
                }
            }),
            DefaultCredit::default(),
        );

        let config = Self {
            server: ServerConfig::from_env(PREFIX, "0.0.0.0:50053", "0.0.0.0:9466", p),
            inbox,
            relay,
            default_credit,
            admin_token: p.check(secret_from_file("PAYMENTS_ADMIN_TOKEN"), None),
        };
        problems.or_value(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_takes_both_commands() {
        assert_eq!(queue_name("pulse"), "pulse.payments.commands");
        assert_eq!(routing_keys(), ["payment.process", "payment.refund"]);
    }

    #[test]
    fn every_variable_has_a_known_prefix() {
        assert!(known_variables().iter().all(|name| PREFIXES.iter().any(|prefix| name.starts_with(prefix))));
    }
}
