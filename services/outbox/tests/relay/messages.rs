//! What a published message carries, and rows that cannot be routed or were
//! rolled back.

use super::*;

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
