//! Every row published once and in aggregate order: across relays, from a
//! backlog, under load, and when a row commits late below claimed ids.

use super::*;

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
