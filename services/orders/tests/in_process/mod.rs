//! Orders and Notifications built inside a test process, for the tests that
//! need both with process-global state of their own (a tracer provider, a
//! metrics exporter): fresh databases, a consumer queue of the test's own
//! bound to the shared `pulse.events` exchange, and a [`Leftovers`] guard that
//! removes the queues and databases, also when the test panics (a queue left
//! bound to `pulse.events` would collect every later test's events).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::time::Duration;

use inbox::Topology;
use orders::config::{Config, Role};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};

/// A database name on the test server and its URL; the services create it on start.
pub(crate) fn fresh_database(prefix: &str) -> (String, String) {
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').expect("database url has a path");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    (format!("{server}/{name}"), name)
}

/// Notifications consuming `order.created` from `pulse.events` on queues named
/// after `queue_prefix`, with the topology those queues follow.
pub(crate) fn notifications_config(database_url: &str, queue_prefix: &str) -> (notifications::Config, Topology) {
    let mut inbox = inbox::InboxConfig::new(
        SecretString::from(testkit::amqp_url()),
        contracts::EVENTS_EXCHANGE,
        testkit::unique(queue_prefix),
        vec![contracts::events::v1::ORDER_CREATED_ROUTING_KEY.to_owned()],
    );
    inbox.connection_name = format!("{queue_prefix}-consumer");
    let topology = inbox.topology();
    let config = notifications::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(database_url.to_owned()),
        pool: pool_settings(),
        consumer_enabled: true,
        inbox,
        health_interval: Duration::from_millis(200),
        tls: None,
        admin_token_file: None,
        admin_client_names: Vec::new(),
        delivery: notifications::delivery::DeliveryConfig { enabled: false, ..Default::default() },
    };
    (config, topology)
}

/// The database connections both services get in these tests.
fn pool_settings() -> infra::pg::PoolSettings {
    infra::pg::PoolSettings { max_connections: 4, min_connections: 1, acquire_timeout: Duration::from_secs(2) }
}

/// Orders in `role` on `database_url`, its relay polling and rebalancing every 200 ms.
pub(crate) fn orders_config(database_url: &str, role: Role) -> Config {
    let mut relay = outbox::RelayConfig::new(
        SecretString::from(testkit::amqp_url()),
        "pulse-orders",
        vec![contracts::EVENTS_EXCHANGE.to_owned()],
    );
    relay.poll_interval = Duration::from_millis(200);
    relay.rebalance_interval = Duration::from_millis(200);
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(database_url.to_owned()),
        pool: pool_settings(),
        writers: orders::config::DEFAULT_WRITERS,
        role,
        relay,
        shutdown_grace: Duration::ZERO,
        health_interval: Duration::from_secs(1),
        tls: None,
        doorbell_interval: Duration::from_millis(2),
        saga: saga_off(),
    }
}

/// Saga settings whose consumer and timers are off: the order flow tests
/// here never answer the saga's commands.
pub(crate) fn saga_off() -> orders::config::SagaConfig {
    let mut saga =
        orders::config::SagaConfig::new(SecretString::from(testkit::amqp_url()), &testkit::unique("test.saga-off"));
    saga.consumer_enabled = false;
    saga
}

/// What a test made and must remove: consumer queues (never the shared
/// exchange) and databases. Call [`Self::remove`] at the end; a panicking
/// test removes them on drop.
#[derive(Default)]
pub(crate) struct Leftovers {
    topologies: Vec<Topology>,
    databases: Vec<String>,
}

impl Leftovers {
    pub(crate) fn queues(&mut self, topology: &Topology) {
        self.topologies.push(topology.clone());
    }

    pub(crate) fn database(&mut self, name: &str) {
        self.databases.push(name.to_owned());
    }

    pub(crate) async fn remove(mut self) {
        remove(std::mem::take(&mut self.topologies), std::mem::take(&mut self.databases)).await;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (topologies, databases) = (std::mem::take(&mut self.topologies), std::mem::take(&mut self.databases));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(remove(topologies, databases));
        })
        .join();
    }
}

async fn remove(topologies: Vec<Topology>, databases: Vec<String>) {
    if !topologies.is_empty() {
        let broker = testkit::consumer::Broker::connect(Duration::ZERO).await;
        for topology in &topologies {
            broker.delete_queues(topology).await;
        }
    }
    if !databases.is_empty() {
        let base = testkit::database_url();
        let (server, _) = base.rsplit_once('/').expect("database url has a path");
        let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.unwrap();
        for name in databases {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await;
        }
    }
}
