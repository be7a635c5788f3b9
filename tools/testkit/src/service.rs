//! A consumer service ([`platform::consumer::App`]) run in-process by its
//! tests: its database on the `#[sqlx::test]` server, server and relay
//! settings sized for tests, and the running service with its clean stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use inbox::{InboxConfig, InboxStats};
use infra::pg::PoolSettings;
use outbox::RelayConfig;
use platform::consumer::{App, ServerConfig};
use secrecy::SecretString;
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// The URL of the `#[sqlx::test]` database described by `options`.
pub fn database_url(options: &PgConnectOptions) -> String {
    let mut url = url::Url::parse(&crate::database_url()).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{}", options.get_database().expect("test database has a name")));
    url.to_string()
}

/// A direct pool on the test database, for assertions.
pub async fn pool(options: &PgConnectOptions) -> PgPool {
    PgPool::connect_with(options.clone()).await.expect("connect to the test database")
}

/// A small pool (8 connections, 1 kept open) whose requests wait `acquire_timeout` at most.
pub fn pool_settings(acquire_timeout: Duration) -> PoolSettings {
    PoolSettings { max_connections: 8, min_connections: 1, acquire_timeout }
}

/// Ephemeral ports on 127.0.0.1, `database_url`, a [`pool_settings`] pool,
/// health probed every 200 ms, plaintext, no console client names.
pub fn server_config(database_url: &str, acquire_timeout: Duration) -> ServerConfig {
    ServerConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: SecretString::from(database_url.to_owned()),
        pool: pool_settings(acquire_timeout),
        health_interval: Duration::from_millis(200),
        tls: None,
        admin_client_names: Vec::new(),
    }
}

/// A relay publishing to `exchange` that polls and rebalances every 200 ms
/// and backs off 500 ms at most.
pub fn relay_config(amqp_url: &str, app_id: &str, exchange: &str) -> RelayConfig {
    let mut relay = RelayConfig::new(SecretString::from(amqp_url.to_owned()), app_id, vec![exchange.to_owned()]);
    relay.poll_interval = Duration::from_millis(200);
    relay.rebalance_interval = Duration::from_millis(200);
    relay.backoff_max = Duration::from_millis(500);
    relay
}

/// An isolated consumer of `routing_keys` ([`crate::consumer::short_retry_config`],
/// named after `name`) and a [`relay_config`] relay publishing to its exchange.
pub fn consumer_and_relay(name: &str, routing_keys: Vec<String>) -> (InboxConfig, RelayConfig) {
    let amqp_url = crate::amqp_url();
    let first = routing_keys.first().expect("at least one routing key");
    let mut inbox = crate::consumer::short_retry_config(&amqp_url, name, first);
    inbox.routing_keys = routing_keys;
    let relay = relay_config(&amqp_url, &format!("{name}-test"), &inbox.exchange);
    (inbox, relay)
}

/// A service running in the background.
pub struct Running {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// Where `GET /metrics` answers.
    pub metrics_addr: SocketAddr,
    /// What the consumer has done so far.
    pub stats: Arc<InboxStats>,
    /// True while the consumer is connected and subscribed.
    pub connected: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Builds the service (`app`, awaited after the test log is set up) and runs it.
    pub async fn spawn(app: impl Future<Output = anyhow::Result<App>>) -> Self {
        telemetry::init_for_tests();
        let app = app.await.expect("the service builds");
        let (addr, metrics_addr, stats, connected) =
            (app.grpc_addr(), app.metrics_addr(), app.consumer_stats(), app.consumer_connected());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self { addr, metrics_addr, stats, connected, stop, task }
    }

    /// Waits up to `within` for the consumer to be connected (`up`) or not;
    /// false when it did not happen (a service that already stopped counts as not connected).
    pub async fn wait_connected(&mut self, up: bool, within: Duration) -> bool {
        crate::wait_for_flag(&mut self.connected, up, within).await
    }

    /// Fires the shutdown token and waits up to `within` for a clean exit.
    pub async fn stop(self, within: Duration) {
        self.stop.cancel();
        tokio::time::timeout(within, self.task).await.expect("stops in time").unwrap().expect("stops cleanly");
    }
}
