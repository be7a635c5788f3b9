//! Configuration from the environment; every default works against the local services.
//!
//! The saga's variables (see `docs/saga.md`):
//!
//! | variable | default |
//! |---|---|
//! | `SAGA_ENABLED` | `true` (off: an order writes only its OrderCreated event and stays CREATED; for a deployment without Payments and Inventory) |
//! | `SAGA_STEP_TIMEOUT_MS` | `30000` (a step without a reply by then fails the order TIMED_OUT) |
//! | `SAGA_COMPENSATION_RESEND_MS` | `30000` (an unanswered refund or release is sent again this often) |
//! | `SAGA_TIMER_INTERVAL_MS` | `200` (how often the timer sweep looks for deadlines passed) |
//! | `ORDERS_SAGA_CONSUMER_ENABLED` | `true` (off: this replica neither consumes replies nor sweeps timers) |
//! | `ORDERS_QUEUE_PREFIX` | `pulse` (reply queue `<prefix>.orders.saga-replies`) |
//! | `ORDERS_EXCHANGE` | `pulse.events` (where orders publishes its events, commands and outcomes, and binds its reply queue) |
//!
//! The reply consumer's retry tiers and dedup window follow the inbox's
//! defaults and `INBOX_*` variables ([`inbox::variables::VARIABLES`]).

use std::{net::SocketAddr, time::Duration};

use inbox::InboxConfig;
use infra::{
    config::{ConfigErrors, addr_or, bool_or, millis_or, parse_or, secret_url_or, secret_urls_or, var_or},
    pg::PoolSettings,
};
use outbox::{OutboxSettings, RelayConfig};
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
    /// The order saga: its timers and its reply consumer.
    pub saga: SagaConfig,
}

/// The saga's settings (see [`crate::saga`]).
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Whether CreateOrder starts the saga (`SAGA_ENABLED`); off, an order
    /// writes only its `OrderCreated` and no replica consumes replies.
    pub enabled: bool,
    /// How long a step waits for its reply (`SAGA_STEP_TIMEOUT_MS`).
    pub step_timeout: Duration,
    /// How often unanswered compensations are sent again (`SAGA_COMPENSATION_RESEND_MS`).
    pub resend_every: Duration,
    /// The timer sweep's tick (`SAGA_TIMER_INTERVAL_MS`).
    pub timer_interval: Duration,
    /// Whether this replica consumes replies and sweeps timers (`ORDERS_SAGA_CONSUMER_ENABLED`).
    pub consumer_enabled: bool,
    /// The reply consumer: queue `<ORDERS_QUEUE_PREFIX>.orders.saga-replies`
    /// on `exchange`, which is also where orders publishes every message
    /// (`ORDERS_EXCHANGE`; the relay must declare it).
    pub inbox: InboxConfig,
}

impl SagaConfig {
    /// The defaults, consuming `<queue_prefix>.orders.saga-replies` on `amqp_url`.
    pub fn new(amqp_url: SecretString, queue_prefix: &str) -> Self {
        let mut inbox = InboxConfig::new(
            amqp_url,
            contracts::EVENTS_EXCHANGE.to_owned(),
            queue_name(queue_prefix),
            crate::saga::replies::ROUTING_KEYS.iter().map(|key| (*key).to_owned()).collect(),
        );
        inbox.connection_name = "orders-saga".to_owned();
        Self {
            enabled: true,
            step_timeout: DEFAULT_STEP_TIMEOUT,
            resend_every: DEFAULT_RESEND,
            timer_interval: DEFAULT_TIMER_INTERVAL,
            consumer_enabled: true,
            inbox,
        }
    }
}

/// The reply consumer's main queue for a prefix; its retry and dead-letter queues are named after it.
pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}.orders.saga-replies")
}

/// `SAGA_STEP_TIMEOUT_MS` unless set.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// `SAGA_COMPENSATION_RESEND_MS` unless set.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(30);
/// `SAGA_TIMER_INTERVAL_MS` unless set.
pub const DEFAULT_TIMER_INTERVAL: Duration = Duration::from_millis(200);

/// Every variable orders reads with its own prefix (`ORDERS_`); the outbox's
/// (`OUTBOX_`) are [`outbox::config::VARIABLES`]. Any other name with either
/// prefix is warned about at start.
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
    "ORDERS_SAGA_CONSUMER_ENABLED",
    "ORDERS_QUEUE_PREFIX",
    "ORDERS_EXCHANGE",
    "SAGA_ENABLED",
    "SAGA_STEP_TIMEOUT_MS",
    "SAGA_COMPENSATION_RESEND_MS",
    "SAGA_TIMER_INTERVAL_MS",
    // Read by the example clients (clients/), often set in the same shell: not a typo.
    "ORDERS_ADDR",
];

/// The prefixes of [`known_variables`].
pub const PREFIXES: &[&str] = &["ORDERS_", "SAGA_", outbox::config::PREFIX, inbox::variables::PREFIX];

/// [`VARIABLES`], the outbox's and the inbox's.
pub fn known_variables() -> Vec<&'static str> {
    VARIABLES.iter().chain(outbox::config::VARIABLES).chain(inbox::variables::VARIABLES).copied().collect()
}

impl Config {
    /// The configuration, or every problem it has (not just the first).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let p = &mut problems;
        let amqp_url =
            p.check(secret_urls_or("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"), SecretString::default());
        let mut saga = SagaConfig::new(amqp_url.clone(), &var_or("ORDERS_QUEUE_PREFIX", "pulse"));
        saga.inbox.exchange = var_or("ORDERS_EXCHANGE", contracts::EVENTS_EXCHANGE);
        saga.step_timeout = p.check(millis_or("SAGA_STEP_TIMEOUT_MS", DEFAULT_STEP_TIMEOUT), DEFAULT_STEP_TIMEOUT);
        saga.resend_every = p.check(millis_or("SAGA_COMPENSATION_RESEND_MS", DEFAULT_RESEND), DEFAULT_RESEND);
        saga.timer_interval =
            p.check(millis_or("SAGA_TIMER_INTERVAL_MS", DEFAULT_TIMER_INTERVAL), DEFAULT_TIMER_INTERVAL);
        for (name, value) in [
            ("SAGA_STEP_TIMEOUT_MS", saga.step_timeout),
            ("SAGA_COMPENSATION_RESEND_MS", saga.resend_every),
            ("SAGA_TIMER_INTERVAL_MS", saga.timer_interval),
        ] {
            if value.is_zero() {
                p.invalid(name, "must be at least 1 ms");
            }
        }
        saga.enabled = p.check(bool_or("SAGA_ENABLED", true), true);
        saga.consumer_enabled = p.check(bool_or("ORDERS_SAGA_CONSUMER_ENABLED", true), true);
        saga.inbox.apply_env(p);
        if let (true, Err(reason)) = (p.0.is_empty(), saga.inbox.validate()) {
            p.invalid("ORDERS_QUEUE_PREFIX", reason);
        }
        let relay = RelayConfig::new(amqp_url, "pulse-orders", vec![saga.inbox.exchange.clone()]);
        let outbox = OutboxSettings::from_env(relay, p);
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
            relay: outbox.relay,
            shutdown_grace: p.check(millis_or("ORDERS_SHUTDOWN_GRACE_MS", Duration::ZERO), Duration::ZERO),
            health_interval: Duration::from_secs(1),
            tls: p.check(ServerTls::from_env("ORDERS"), None),
            doorbell_interval: outbox.doorbell_interval,
            saga,
        };
        problems.or_value(config)
    }
}
