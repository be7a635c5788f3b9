//! The relay's upkeep of its tables: vacuuming the outbox, archive partitions.

use super::*;

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
