//! Configuration from the environment; every default works against the local
//! Postgres and RabbitMQ.
//!
//! | variable | default |
//! |---|---|
//! | `INVENTORY_GRPC_ADDR` | `0.0.0.0:50054` |
//! | `INVENTORY_METRICS_ADDR` | `0.0.0.0:9467` |
//! | `INVENTORY_DATABASE_URL` | `postgres://postgres:postgres@localhost:5432/pulse_inventory` |
//! | `INVENTORY_DB_MAX_CONNECTIONS` | `32` |
//! | `INVENTORY_DB_MIN_CONNECTIONS` | `4` |
//! | `INVENTORY_DB_ACQUIRE_TIMEOUT_MS` | `3000` |
//! | `AMQP_URL` | `amqp://guest:guest@localhost:5672/%2f` |
//! | `INVENTORY_EXCHANGE` | `pulse.events` (commands consumed and replies published there) |
//! | `INVENTORY_QUEUE_PREFIX` | `pulse` (queue `<prefix>.inventory.commands`) |
//! | `INVENTORY_PREFETCH` | `512` |
//! | `INVENTORY_BATCH_SIZE` | `200` |
//! | `INVENTORY_MAX_ATTEMPTS` | `6` |
//! | `INVENTORY_ADMIN_TOKEN_FILE` | unset (the dead-letter console refuses every call) |
//! | `INVENTORY_ADMIN_CLIENT_NAMES` | empty (no client certificate is an admin credential) |
//! | `OUTBOX_*`, `INBOX_*` | the outbox relay's and the inbox's own (docs/configuration.md) |

use std::path::PathBuf;

use inbox::InboxConfig;
use infra::config::{ConfigErrors, var_or};
use outbox::{OutboxSettings, RelayConfig};
use platform::consumer::ServerConfig;

/// Everything the service needs; tests build one directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ports, database, health probe, TLS and the console's client names
    /// (`INVENTORY_*`, read alike by every consumer service).
    pub server: ServerConfig,
    /// The consumer of the commands: broker URL, exchange, queue names, retry tiers.
    pub inbox: InboxConfig,
    /// The relay of the replies (same broker; publishes to the exchange of `inbox`).
    pub relay: RelayConfig,
    /// The file holding the dead-letter console's bearer token; None refuses
    /// every console call PERMISSION_DENIED.
    pub admin_token_file: Option<PathBuf>,
}

/// The commands queue for a prefix; the retry and dead-letter queues are named after it.
pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.inventory.commands")
}

/// The routing keys of the commands queue: `inventory.reserve`, `inventory.release`.
pub fn routing_keys() -> Vec<String> {
    use contracts::{
        Routed,
        inventory::v1::{ReleaseInventory, ReserveInventory},
    };
    vec![ReserveInventory::ROUTING_KEY.to_owned(), ReleaseInventory::ROUTING_KEY.to_owned()]
}

/// Every variable inventory reads with its own prefix (`INVENTORY_`); the
/// inbox's and the outbox's are theirs. Any other name with one of
/// [`PREFIXES`] is warned about at start.
pub const VARIABLES: &[&str] = &[
    "INVENTORY_GRPC_ADDR",
    "INVENTORY_METRICS_ADDR",
    "INVENTORY_DATABASE_URL",
    "INVENTORY_DATABASE_URL_FILE",
    "INVENTORY_TLS_CERT_FILE",
    "INVENTORY_TLS_KEY_FILE",
    "INVENTORY_TLS_CLIENT_CA_FILE",
    "INVENTORY_ADMIN_TOKEN_FILE",
    "INVENTORY_ADMIN_CLIENT_NAMES",
    "INVENTORY_DB_MAX_CONNECTIONS",
    "INVENTORY_DB_MIN_CONNECTIONS",
    "INVENTORY_DB_ACQUIRE_TIMEOUT_MS",
    "INVENTORY_EXCHANGE",
    "INVENTORY_QUEUE_PREFIX",
    "INVENTORY_PREFETCH",
    "INVENTORY_BATCH_SIZE",
    "INVENTORY_MAX_ATTEMPTS",
];

/// The prefix of inventory's own variables, without its underscore.
pub const PREFIX: &str = "INVENTORY";

/// The prefixes of [`known_variables`].
pub const PREFIXES: &[&str] = &["INVENTORY_", inbox::variables::PREFIX, outbox::config::PREFIX];

/// [`VARIABLES`], the inbox's and the outbox's.
pub fn known_variables() -> Vec<&'static str> {
    VARIABLES.iter().chain(inbox::variables::VARIABLES).chain(outbox::config::VARIABLES).copied().collect()
}

/// The variable naming the console's token file.
pub const ADMIN_TOKEN_FILE: &str = "INVENTORY_ADMIN_TOKEN_FILE";

impl Config {
    /// The configuration, or every problem it has (not just the first).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let p = &mut problems;
        let mut inbox =
            InboxConfig::for_service(PREFIX, "inventory", contracts::EVENTS_EXCHANGE, queue_name, routing_keys(), p);
        inbox.apply_service_env(PREFIX, p);
        let exchanges = vec![inbox.exchange.clone()];
        let relay =
            OutboxSettings::from_env(RelayConfig::new(inbox.amqp_url.clone(), "pulse-inventory", exchanges), p).relay;

        let config = Self {
            server: ServerConfig::from_env(PREFIX, "0.0.0.0:50054", "0.0.0.0:9467", p),
            inbox,
            relay,
            admin_token_file: Some(var_or(ADMIN_TOKEN_FILE, "")).filter(|p| !p.trim().is_empty()).map(PathBuf::from),
        };
        problems.or_value(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_takes_both_commands() {
        assert_eq!(queue_name("pulse"), "pulse.inventory.commands");
        assert_eq!(routing_keys(), ["inventory.reserve", "inventory.release"]);
    }

    #[test]
    fn every_variable_has_the_prefix() {
        assert!(VARIABLES.iter().all(|name| name.starts_with("INVENTORY_")));
    }
}
