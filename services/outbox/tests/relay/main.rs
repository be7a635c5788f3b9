//! The relay against the real Postgres and RabbitMQ: ordering across relays,
//! unroutable messages, the archive.

mod handover;
mod messages;
mod ordering;
mod upkeep;

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use outbox::{OutboxMessage, OutboxWriter, Relay, RelayConfig};
use secrecy::SecretString;
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn config(exchange: &str) -> RelayConfig {
    let mut config =
        RelayConfig::new(SecretString::from(testkit::amqp_url()), "outbox-test", vec![exchange.to_owned()]);
    config.poll_interval = Duration::from_millis(100);
    config.rebalance_interval = Duration::from_millis(200);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    config.batch_size = 100;
    config
}

fn message(exchange: &str, routing_key: &str, aggregate: &str, seq: usize) -> OutboxMessage {
    OutboxMessage {
        event_id: Uuid::new_v4(),
        aggregate_type: "test".into(),
        aggregate_id: aggregate.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        message_type: "test.v1.Seq".into(),
        content_type: "text/plain".into(),
        payload: format!("{aggregate}:{seq}").into_bytes(),
        headers: [("x-correlation-id".to_owned(), format!("corr-{aggregate}-{seq}"))].into(),
    }
}

/// Appends `messages` in one transaction and commits it, waking nobody: a
/// relay finds the rows on its start, its poll or a claim of its own.
async fn commit_unannounced(pool: &PgPool, writer: &OutboxWriter, messages: impl IntoIterator<Item = OutboxMessage>) {
    let mut tx = pool.begin().await.unwrap();
    for message in messages {
        let _ = writer.append(&mut tx, &message).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_messages").fetch_one(pool).await.unwrap()
}

/// What most tests start from: the database's options, an exchange of their
/// own, and a queue bound to it with `binding`.
struct Setup {
    options: PgConnectOptions,
    exchange: String,
    amqp: lapin::Connection,
    consumer: lapin::Consumer,
    writer: OutboxWriter,
}

async fn setup(pool: &PgPool, binding: &str) -> Setup {
    let exchange = testkit::unique("test.outbox");
    let amqp = testkit::amqp_connection().await;
    let consumer = testkit::subscribe(&amqp, &exchange, binding).await;
    Setup { options: pool.connect_options().as_ref().clone(), exchange, amqp, consumer, writer: OutboxWriter::new() }
}

/// Each aggregate's messages (bodies `aggregate:seq`) arrived in order from
/// 0 with no gap; returns how many aggregates there were.
fn assert_aggregate_order(received: &[lapin::message::Delivery]) -> usize {
    let mut next: HashMap<String, usize> = HashMap::new();
    for delivery in received {
        let body = String::from_utf8(delivery.data.clone()).unwrap();
        let (aggregate, seq) = body.split_once(':').unwrap();
        let expected = next.entry(aggregate.to_owned()).or_default();
        assert_eq!(seq.parse::<usize>().unwrap(), *expected, "events of {aggregate} out of order");
        *expected += 1;
    }
    next.len()
}

/// The outbox is empty within five seconds.
async fn assert_outbox_empties(pool: &PgPool) {
    assert!(testkit::eventually(Duration::from_secs(5), || async { pending(pool).await == 0 }).await, "rows left");
}

/// Stops a relay, waits for it to return, and removes the test's exchange.
async fn finish(stop: CancellationToken, relay: tokio::task::JoinHandle<()>, amqp: &lapin::Connection, exchange: &str) {
    stop.cancel();
    relay.await.unwrap();
    testkit::delete_exchange(amqp, exchange).await;
}

fn start(options: &PgConnectOptions, config: RelayConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let relay = Relay::new(options.clone(), config, None);
    (stop.clone(), tokio::spawn(relay.run(stop)))
}
