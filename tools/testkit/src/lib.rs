//! Test-only helpers: a TCP fault proxy on 127.0.0.1 that can cut every
//! connection to Postgres or RabbitMQ and refuse new ones until restored (or
//! swallow the server's replies, so a request is carried out but its answer
//! lost), the addresses of the local services the tests run against, and a
//! consumer service run in-process ([`service`]), and real receivers of
//! deliveries: an HTTP server ([`receiver`]) and an SMTP server ([`smtp`]).

pub mod consumer;
pub mod otlp;
pub mod pki;
pub mod receiver;
pub mod schema;
pub mod service;
pub mod smtp;

mod process;
mod proxy;

use std::net::SocketAddr;

pub use self::{
    process::{grpcurl, metric_sample, run_until_ready_then_terminate, scrape_metrics},
    proxy::FaultProxy,
};

/// `AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `DATABASE_URL` (the server `#[sqlx::test]` uses), or the local Postgres.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A name no other test uses, for queues and exchanges.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// `url` with its host and port replaced by `addr` (to route it through a proxy).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (credentials, after) = match rest.rsplit_once('@') {
        Some((credentials, after)) => (format!("{credentials}@"), after),
        None => (String::new(), rest),
    };
    let path = after.find('/').map_or("", |i| &after[i..]);
    format!("{scheme}://{credentials}{addr}{path}")
}

/// A lapin connection to the test broker.
pub async fn amqp_connection() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.expect("connect to RabbitMQ")
}

/// A server-named, exclusive queue bound to `exchange` with `routing_key`
/// (the exchange is declared durable/topic if missing), consumed with auto-ack.
pub async fn subscribe(conn: &lapin::Connection, exchange: &str, routing_key: &str) -> lapin::Consumer {
    use lapin::{
        ExchangeKind,
        options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
        types::{FieldTable, ShortString},
    };
    let channel = conn.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(exchange),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
    channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Deliveries from `consumer` until `count` arrived or `within` passed.
pub async fn receive(
    consumer: &mut lapin::Consumer,
    count: usize,
    within: std::time::Duration,
) -> Vec<lapin::message::Delivery> {
    use futures::StreamExt;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while received.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => received.push(delivery),
            Ok(Some(Err(err))) => panic!("consumer failed: {err}"),
            Ok(None) | Err(_) => break,
        }
    }
    received
}

/// Deletes an exchange a test declared (best effort).
pub async fn delete_exchange(conn: &lapin::Connection, exchange: &str) {
    if let Ok(channel) = conn.create_channel().await {
        let _ = channel
            .exchange_delete(
                lapin::types::ShortString::from(exchange),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until `flag` (a service's "connected" watch) reads `want`, failing
/// the test after `within`. False when the service dropped the flag first.
#[must_use = "false means the service went away before the flag read `want`"]
pub async fn wait_for_flag(
    flag: &mut tokio::sync::watch::Receiver<bool>,
    want: bool,
    within: std::time::Duration,
) -> bool {
    tokio::time::timeout(within, flag.wait_for(|value| *value == want))
        .await
        .unwrap_or_else(|_| panic!("the flag never became {want} within {within:?}"))
        .is_ok()
}

/// The socket address a service URL points at (`localhost` resolves to 127.0.0.1).
pub fn socket_addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = rest.split(['/', '?']).next().expect("url has a host");
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|_| panic!("{url:?} does not name an IP address and port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_replaces_host_and_port_only() {
        let addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(via("amqp://guest:guest@localhost:5672/%2f", addr), "amqp://guest:guest@127.0.0.1:6000/%2f");
        assert_eq!(via("postgres://postgres@127.0.0.1:5432/db?x=1", addr), "postgres://postgres@127.0.0.1:6000/db?x=1");
        assert_eq!(via("amqp://h:1", addr), "amqp://127.0.0.1:6000");
    }
}
