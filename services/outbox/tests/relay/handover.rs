//! Rows handed to the in-process relay at commit: published without a claim,
//! yet never ahead of an older row of the outbox that the relay has not claimed.

use super::*;

/// A relay sharing `writer`'s in-process handle, with no NOTIFY and a poll
/// far beyond the test: only a handover or `committed` moves it.
fn start_beside(
    options: &PgConnectOptions,
    exchange: &str,
    writer: &OutboxWriter,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = config(exchange);
    config.notify_channel = None;
    config.poll_interval = Duration::from_secs(120);
    config.rebalance_interval = Duration::from_secs(120);
    let stop = CancellationToken::new();
    let relay = Relay::new(options.clone(), config, Some(writer.local_relay()));
    (stop.clone(), tokio::spawn(relay.run(stop)))
}

/// Appends `message` in a transaction of its own and hands it over once committed.
async fn commit_and_hand_over(pool: &PgPool, writer: &OutboxWriter, message: &OutboxMessage) {
    let mut tx = pool.begin().await.unwrap();
    let appended = writer.append(&mut tx, message).await.unwrap();
    tx.commit().await.unwrap();
    writer.hand_over(&[(appended, message)]);
}

/// Writes `message` for the one row `statement`'s CTE `source` returns, in a
/// transaction of its own, and commits it without waking anyone.
async fn commit_statement<'a>(
    pool: &PgPool,
    statement: outbox::WithEvents<'a>,
    source: &str,
    message: &'a OutboxMessage,
) -> outbox::Appended {
    let mut tx = pool.begin().await.unwrap();
    let written: Vec<((i32,), outbox::Appended)> = statement.event(source, message).fetch_all(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(written.len(), 1);
    written[0].1
}

/// Hands a first row over and waits for it: the relay is up, owns every
/// partition and, its claim beside the mark done, sits idle.
async fn warm_up(pool: &PgPool, writer: &OutboxWriter, exchange: &str, consumer: &mut lapin::Consumer) {
    assert!(
        testkit::eventually(Duration::from_secs(10), || async {
            writer.local_relay().partitions().len() == usize::from(outbox::PARTITIONS.unsigned_abs())
        })
        .await,
        "the relay owns every partition"
    );
    commit_and_hand_over(pool, writer, &message(exchange, "seq.warm", "warm", 0)).await;
    assert_eq!(testkit::receive(consumer, 1, Duration::from_secs(10)).await.len(), 1, "the first row goes out");
    assert_outbox_empties(pool).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The relay publishes a handed row while every statement on the outbox
/// table waits behind a lock: it did not need to claim it.
#[sqlx::test(migrations = false)]
async fn a_handed_row_is_published_without_a_claim(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let (stop, relay) = start_beside(&options, &exchange, &writer);
    warm_up(&pool, &writer, &exchange, &mut consumer).await;

    let handed = message(&exchange, "seq.created", "handed", 0);
    let mut tx = pool.begin().await.unwrap();
    let appended = writer.append(&mut tx, &handed).await.unwrap();
    tx.commit().await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox_messages IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    writer.hand_over(&[(appended, &handed)]);
    let received = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "published with the table locked");
    assert_eq!(received[0].data, b"handed:0");

    lock.rollback().await.unwrap();
    // The mark waited for the lock too; once it is gone, the row leaves the outbox.
    assert_outbox_empties(&pool).await;
    assert!(testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await.is_empty(), "none twice");

    finish(stop, relay, &amqp, &exchange).await;
}

/// A row of the aggregate committed before the handed one, and not claimed
/// yet, goes out first: the handed row is claimed behind it instead.
#[sqlx::test(migrations = false)]
async fn a_handed_row_never_overtakes_an_older_row_the_relay_has_not_claimed(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let (stop, relay) = start_beside(&options, &exchange, &writer);
    warm_up(&pool, &writer, &exchange, &mut consumer).await;

    // Written by, say, another process whose doorbell has not rung yet.
    commit_unannounced(&pool, &writer, [message(&exchange, "seq.created", "order-1", 0)]).await;
    commit_and_hand_over(&pool, &writer, &message(&exchange, "seq.created", "order-1", 1)).await;

    let received = testkit::receive(&mut consumer, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2, "both rows go out, long before the poll");
    assert_eq!(assert_aggregate_order(&received), 1);
    assert_outbox_empties(&pool).await;
    assert!(testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await.is_empty(), "none twice");

    finish(stop, relay, &amqp, &exchange).await;
}

/// A statement told its rows are not handed over reads none of the outbox
/// (`outbox_seen` is NULL): handed over all the same, such a row is refused
/// and claimed like any other, so it waits while the outbox is locked, and
/// goes out once, in order, when the lock is gone.
#[sqlx::test(migrations = false)]
async fn a_row_whose_statement_did_not_look_is_claimed_not_handed_over(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let (stop, relay) = start_beside(&options, &exchange, &writer);
    warm_up(&pool, &writer, &exchange, &mut consumer).await;
    assert!(writer.hands_over(), "the relay beside the writer owns partitions");

    let unlooked = message(&exchange, "seq.created", "unlooked", 0);
    let mut statement = outbox::WithEvents::new();
    statement.handing_over(false).caller().push("source AS (SELECT 1 AS one)");
    let appended = commit_statement(&pool, statement, "source", &unlooked).await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox_messages IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    writer.hand_over(&[(appended, &unlooked)]);
    assert!(
        testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await.is_empty(),
        "not handed over: its claim waits for the lock"
    );

    lock.rollback().await.unwrap();
    let received = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "claimed once the lock is gone");
    assert_eq!(received[0].data, b"unlooked:0");
    assert_outbox_empties(&pool).await;
    assert!(testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await.is_empty(), "none twice");

    finish(stop, relay, &amqp, &exchange).await;
}

/// A row whose statement stamps its time ([`outbox::WithEvents::occurred_at`])
/// is stored as given, and published with the time added as the protobuf
/// field, as a protobuf encoder writes it: claimed or handed over alike.
#[sqlx::test(migrations = false)]
async fn a_stamped_row_is_published_with_its_time_claimed_or_handed_over(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let Setup { options, exchange, amqp, mut consumer, writer } = setup(&pool, "seq.#").await;
    let (stop, relay) = start_beside(&options, &exchange, &writer);
    warm_up(&pool, &writer, &exchange, &mut consumer).await;

    let at: chrono::DateTime<Utc> = "2030-01-02T03:04:05.000001Z".parse().unwrap();
    let expected = |payload: &[u8]| {
        let mut bytes = payload.to_vec();
        let timestamp = prost_types::Timestamp { seconds: at.timestamp(), nanos: 1_000 };
        prost::encoding::message::encode(6, &timestamp, &mut bytes);
        bytes
    };
    for (aggregate, hand_over) in [("claimed", false), ("handed", true)] {
        let sent = message(&exchange, "seq.created", aggregate, 0);
        let mut statement = outbox::WithEvents::new();
        statement.occurred_at(6, "SELECT at FROM stamp");
        statement
            .caller()
            .push("stamp AS (SELECT '2030-01-02 03:04:05.000001+00'::timestamptz AS at), source AS (SELECT 1 AS one)");
        let appended = commit_statement(&pool, statement, "source", &sent).await;
        // Nothing has woken the relay yet: the row waits, as stored.
        let stored: (Vec<u8>, chrono::DateTime<Utc>, Option<i16>) =
            sqlx::query_as("SELECT payload, created_at, occurred_at_field FROM outbox_messages WHERE event_id = $1")
                .bind(sent.event_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, (sent.payload.clone(), at, Some(6)), "stored as given, the time and field beside it");
        assert_eq!(appended.created_at, at);
        if hand_over {
            writer.hand_over(&[(appended, &sent)]);
        } else {
            writer.committed(appended);
        }
        let received = testkit::receive(&mut consumer, 1, Duration::from_secs(10)).await;
        assert_eq!(received.len(), 1, "{aggregate}");
        assert_eq!(received[0].data, expected(&sent.payload), "{aggregate}");
        assert_outbox_empties(&pool).await;
    }
    finish(stop, relay, &amqp, &exchange).await;
}
