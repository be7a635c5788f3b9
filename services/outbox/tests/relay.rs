//! The relay against the real Postgres and RabbitMQ: ordering across relays,
//! unroutable messages, the archive.

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

#[sqlx::test(migrations = false)]
async fn two_relays_publish_every_row_once_in_aggregate_order(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let aggregates: Vec<String> = (0..50).map(|i| format!("agg-{i}")).collect();

    let (stop_a, relay_a) = start(&options, config(&exchange));
    let (stop_b, relay_b) = start(&options, config(&exchange));
    // 2,000 rows in waves while both relays run; relay A leaves half-way, so
    // its partitions move to B in the middle of the stream.
    for wave in 0..40 {
        let mut tx = pool.begin().await.unwrap();
        let mut receipts = Vec::new();
        for aggregate in &aggregates {
            let appended = writer.append(&mut tx, &message(&exchange, "seq.created", aggregate, wave)).await.unwrap();
            receipts.push(appended);
        }
        tx.commit().await.unwrap();
        for appended in receipts {
            writer.committed(appended);
        }
        if wave == 20 {
            stop_a.cancel();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay_a.await.unwrap();

    let received = testkit::receive(&mut consumer, 2_000, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 2_000, "every row is published");
    let extra = testkit::receive(&mut consumer, 1, Duration::from_millis(700)).await;
    assert!(extra.is_empty(), "no row is published twice");

    let mut ids = std::collections::HashSet::new();
    for delivery in &received {
        let id = delivery.properties.message_id().as_ref().unwrap().to_string();
        assert!(ids.insert(id), "duplicate message id");
    }
    assert_eq!(assert_aggregate_order(&received), 50);
    assert_outbox_empties(&pool).await;

    finish(stop_b, relay_b, &amqp, &exchange).await;
}

/// A relay that starts over rows already waiting publishes them at once: it
/// does not sit out a poll interval after taking its partitions.
#[sqlx::test(migrations = false)]
async fn a_starting_relay_publishes_the_waiting_rows_without_waiting_for_a_poll(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    // Nobody is woken: only the relay's own start can find these rows.
    let rows = (0..10).map(|i| message(&exchange, "seq.created", &format!("agg-{i}"), 0));
    commit_unannounced(&pool, &writer, rows).await;

    let mut config = config(&exchange);
    config.notify_channel = None;
    config.poll_interval = Duration::from_secs(60);
    config.rebalance_interval = Duration::from_secs(60);
    let (stop, relay) = start(&options, config);
    let received = testkit::receive(&mut consumer, 10, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 10, "published on start, long before the 60 s poll");

    finish(stop, relay, &amqp, &exchange).await;
}

/// A backlog claimed in full batches (500 rows, published a hundred at a time)
/// goes out whole: every row once, each aggregate's rows in order, the outbox
/// left empty.
#[sqlx::test(migrations = false)]
async fn a_backlog_in_full_batches_is_published_once_in_aggregate_order(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let rows = (0..250)
        .flat_map(|seq| ["agg-a", "agg-b", "agg-c", "agg-d"].map(|aggregate| (aggregate, seq)))
        .map(|(aggregate, seq)| message(&exchange, "seq.created", aggregate, seq));
    commit_unannounced(&pool, &writer, rows).await;

    let mut config = config(&exchange);
    config.batch_size = 500;
    let (stop, relay) = start(&options, config);
    let received = testkit::receive(&mut consumer, 1_000, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1_000, "every row is published");
    assert_eq!(assert_aggregate_order(&received), 4);
    assert_outbox_empties(&pool).await;
    let extra = testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await;
    assert!(extra.is_empty(), "no row is published twice");

    finish(stop, relay, &amqp, &exchange).await;
}

/// Under heavy steady load the relay lets rows gather between claims: a row
/// committed right after a claim waits out the gather interval, then goes out.
#[sqlx::test(migrations = false)]
async fn under_heavy_load_rows_gather_between_claims(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let mut config = config(&exchange);
    config.gather = Duration::from_secs(1);
    // Every claim counts as heavy load.
    config.gather_from_rate = 0.0;
    let (stop, relay) = start(&options, config);

    // Nothing to wake in this test: the relay finds each row on its 100 ms poll.
    let append = |aggregate| commit_unannounced(&pool, &writer, [message(&exchange, "seq.created", aggregate, 0)]);
    append("first").await;
    let first = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    let first_at = std::time::Instant::now();
    append("second").await;
    let second = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1, "the gathered row goes out");
    assert_eq!(second[0].data, b"second:0");
    // Its claim waits a second from the first one's, which came before the first arrived.
    let waited = first_at.elapsed();
    assert!(waited >= Duration::from_millis(500), "claimed again after {waited:?}");
    assert_outbox_empties(&pool).await;

    finish(stop, relay, &amqp, &exchange).await;
}

/// The relay vacuums the outbox itself once it has deleted enough rows:
/// autovacuum may be a minute away, or off.
#[sqlx::test(migrations = false)]
async fn the_relay_vacuums_the_outbox_after_deleting_enough_rows(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    commit_unannounced(&pool, &writer, (0..1_500).map(|seq| message(&exchange, "seq.created", "agg", seq))).await;

    let mut config = config(&exchange);
    config.vacuum_every = 1_000;
    let (stop, relay) = start(&options, config);
    assert_eq!(testkit::receive(&mut consumer, 1_500, Duration::from_secs(30)).await.len(), 1_500);
    let vacuumed = || async {
        let count: i64 =
            sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox_messages'")
                .fetch_one(&pool)
                .await
                .unwrap();
        count >= 1
    };
    assert!(testkit::eventually(Duration::from_secs(10), vacuumed).await, "no vacuum after 1,500 deleted rows");
    assert_eq!(pending(&pool).await, 0);

    finish(stop, relay, &amqp, &exchange).await;
}

/// A transaction that took its id early and commits late leaves a row below
/// ids the relay has already claimed, while batches are in flight: it is
/// still published, once, and nothing is published twice.
#[sqlx::test(migrations = false)]
async fn a_row_committed_late_below_claimed_ids_is_published(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;

    let mut late = pool.begin().await.unwrap();
    let late_receipt = writer.append(&mut late, &message(&exchange, "seq.late", "late", 0)).await.unwrap();
    for wave in 0..30 {
        // Committed before the relay starts: nobody to wake.
        let rows = (0..100).map(|i| message(&exchange, "seq.created", &format!("agg-{i}"), wave));
        commit_unannounced(&pool, &writer, rows).await;
    }
    let (stop, relay) = start(&options, config(&exchange));
    let mut received = testkit::receive(&mut consumer, 300, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 300, "the relay is publishing");
    late.commit().await.unwrap();
    writer.committed(late_receipt);

    received.extend(testkit::receive(&mut consumer, 2_701, Duration::from_secs(60)).await);
    assert_eq!(received.len(), 3_001, "every row is published, the late one too");
    assert!(testkit::receive(&mut consumer, 1, Duration::from_millis(700)).await.is_empty(), "none twice");
    let ids: std::collections::HashSet<String> =
        received.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3_001, "no duplicate message id");
    assert!(received.iter().any(|d| d.data == b"late:0"), "the late row is among them");
    assert_outbox_empties(&pool).await;

    finish(stop, relay, &amqp, &exchange).await;
}

#[sqlx::test(migrations = false)]
async fn published_message_carries_properties_and_headers(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.created").await;
    let sent = message(&exchange, "seq.created", "agg-1", 0);
    commit_unannounced(&pool, &writer, [sent.clone()]).await;

    let mut archiving = config(&exchange);
    archiving.retention = Duration::from_secs(3600);
    let (stop, relay) = start(&options, archiving);
    let received = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    let delivery = &received[0];
    let props = &delivery.properties;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), sent.event_id.to_string());
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(props.content_type().as_ref().unwrap().as_str(), "text/plain");
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "test.v1.Seq");
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "outbox-test");
    assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "corr-agg-1-0");
    let stamp = props.timestamp().unwrap() as i64;
    assert!((Utc::now().timestamp() - stamp).abs() < 60);
    let headers = props.headers().as_ref().unwrap();
    let text = |key: &str| match headers.inner().get(key) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {key}: {other:?}"),
    };
    assert_eq!(text("x-correlation-id"), "corr-agg-1-0");
    assert_eq!(text("x-aggregate-id"), "agg-1");
    assert_eq!(delivery.data, b"agg-1:0");

    // With a retention, published rows leave the live table and wait in the archive.
    assert_outbox_empties(&pool).await;
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_archive WHERE event_id = $1")
        .bind(sent.event_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(archived, 1);
    finish(stop, relay, &amqp, &exchange).await;
}

#[sqlx::test(migrations = false)]
async fn unroutable_message_stays_pending_until_a_queue_is_bound(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let options = pool.connect_options().as_ref().clone();
    let exchange = testkit::unique("test.outbox");
    let writer = OutboxWriter::new();
    let sent = message(&exchange, "nobody.listens", "agg-1", 0);
    commit_unannounced(&pool, &writer, [sent.clone()]).await;

    let (stop, relay) = start(&options, config(&exchange));
    let failed = testkit::eventually(Duration::from_secs(10), || async {
        let row: Option<(i32, Option<String>)> =
            sqlx::query_as("SELECT attempts, last_error FROM outbox_messages WHERE event_id = $1")
                .bind(sent.event_id)
                .fetch_optional(&pool)
                .await
                .unwrap();
        matches!(row, Some((attempts, Some(error))) if attempts >= 1 && error.starts_with("unroutable"))
    })
    .await;
    assert!(failed, "a returned message counts as a failed publish and stays pending");

    let amqp = testkit::amqp_connection().await;
    let mut consumer = testkit::subscribe(&amqp, &exchange, "nobody.listens").await;
    let received = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "published once a queue is bound");
    assert_outbox_empties(&pool).await;
    finish(stop, relay, &amqp, &exchange).await;
}

#[sqlx::test(migrations = false)]
async fn appended_rows_vanish_with_a_rolled_back_transaction(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let writer = OutboxWriter::new();
    let mut tx = pool.begin().await.unwrap();
    let _ = writer.append(&mut tx, &message("x", "y", "agg", 0)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(pending(&pool).await, 0);
}

#[sqlx::test(migrations = false)]
async fn archive_partitions_are_created_ahead_and_dropped_after_retention(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let options = pool.connect_options().as_ref().clone();
    let now = Utc::now();
    outbox::maintain_archive_once(&options, Duration::from_secs(3600), now).await.unwrap();
    let partitions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'outbox_archive'::regclass AND c.relname LIKE 'outbox_archive_p%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(partitions().await, 5, "from an hour ago to three hours ahead");
    sqlx::query(
        "INSERT INTO outbox_archive (id, event_id, aggregate_type, aggregate_id, exchange, routing_key,
             message_type, content_type, payload, headers, created_at, attempts, published_at)
         VALUES (1, gen_random_uuid(), 'a', 'b', 'c', 'd', 'e', 'f', '', '{}', now(), 1, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Four hours later with a one-hour retention: the row's hour is gone, whole.
    outbox::maintain_archive_once(&options, Duration::from_secs(3600), now + chrono::TimeDelta::hours(4))
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_archive").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(partitions().await, 5, "only the window around the new now remains");
}
