//! A database made by the earlier layout, where the outbox's tables were
//! Orders' own migration 1, starts with this release and keeps working, and
//! a fresh database gets the same outbox schema.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Options, order, spawn_app};

const LEGACY: &str = "tests/fixtures/legacy-migrations";
const OUTBOX_TABLES: &[&str] = &["outbox_messages", "outbox_archive", "outbox_archive_default"];

/// An order and its pending event, written as the earlier release did.
async fn legacy_rows(pool: &PgPool) -> Uuid {
    let (order_id, event_id) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, amount, currency, event_id, correlation_id)
         VALUES ($1, 'c-legacy', 12.5, 'EUR', $2, 'corr-legacy')",
    )
    .bind(order_id)
    .bind(event_id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox_messages (event_id, aggregate_type, aggregate_id, partition, exchange, routing_key,
                                      message_type, content_type, payload)
         VALUES ($1, 'order', $2, $3, 'pulse.events', 'order.created', 'pulse.events.v1.OrderCreated',
                 'application/x-protobuf', '\\x00')",
    )
    .bind(event_id)
    .bind(order_id.to_string())
    .bind(outbox::partition_of(&order_id.to_string()))
    .execute(pool)
    .await
    .unwrap();
    event_id
}

/// Every version of the outbox's schema, as a database brought up to date records them.
fn outbox_versions() -> Vec<i64> {
    (1..=i64::from(outbox::schema::VERSION)).collect()
}

async fn versions(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version::bigint FROM {table} ORDER BY version")).fetch_all(pool).await.unwrap()
}

#[sqlx::test(migrations = "tests/fixtures/legacy-migrations")]
async fn a_database_of_the_earlier_layout_starts_and_relays_old_and_new_events(pool: PgPool) {
    assert_eq!(versions(&pool, "_sqlx_migrations").await, [1, 2, 3], "built from {LEGACY}");
    let legacy_event = legacy_rows(&pool).await;
    let amqp = testkit::amqp_connection().await;
    let mut consumer = testkit::subscribe(&amqp, "pulse.events", "order.created").await;

    let mut app = spawn_app(&pool, Options { relay: true, ..Options::default() }).await;
    assert_eq!(
        versions(&pool, "_sqlx_migrations").await,
        [1, 2, 3, 4, 5],
        "the applied history is kept, the saga's and the database stamp's migrations added"
    );
    assert_eq!(versions(&pool, outbox::schema::VERSION_TABLE).await, outbox_versions());
    let created = app.client.create_order(order("c-new", "3.20", "EUR")).await.unwrap().into_inner();

    let mut wanted = vec![legacy_event.to_string(), created.event_id.clone()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !wanted.is_empty() && tokio::time::Instant::now() < deadline {
        for delivery in testkit::receive(&mut consumer, 1, Duration::from_millis(500)).await {
            let id = delivery.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
            wanted.retain(|w| *w != id);
        }
    }
    assert!(wanted.is_empty(), "not published: {wanted:?}");
    assert_eq!(app.count("orders").await, 2, "the earlier order is kept beside the new one");
    assert!(testkit::eventually(Duration::from_secs(5), || async { app.count("outbox_messages").await == 0 }).await);
    app.stop().await;

    // A second start finds everything current.
    orders::db::migrate(&pool).await.unwrap();
    assert_eq!(versions(&pool, outbox::schema::VERSION_TABLE).await, outbox_versions());
}

#[sqlx::test(migrations = "tests/fixtures/legacy-migrations")]
async fn a_fresh_database_gets_the_outbox_schema_an_upgraded_one_has(pool: PgPool) {
    orders::db::migrate(&pool).await.unwrap();
    let fresh = testkit::schema::Scratch::beside(&pool).await;
    orders::db::migrate(&fresh.pool).await.unwrap();

    let mut tables = OUTBOX_TABLES.to_vec();
    tables.push("orders");
    let upgraded = testkit::schema::shape(&pool, &tables).await;
    assert!(upgraded.iter().any(|line| line.starts_with("outbox_messages | 1 | id")), "{upgraded:#?}");
    assert!(upgraded.iter().any(|line| line.contains("autovacuum_vacuum_threshold=5000")), "{upgraded:#?}");
    assert_eq!(testkit::schema::shape(&fresh.pool, &tables).await, upgraded);
    assert_eq!(
        versions(&fresh.pool, "_sqlx_migrations").await,
        [2, 3, 4, 5],
        "the outbox is no longer Orders' own migration"
    );
    fresh.drop_now().await;
}

#[sqlx::test(migrations = "tests/fixtures/legacy-migrations")]
async fn a_database_with_a_migration_this_release_does_not_know_is_refused(pool: PgPool) {
    // Only the retired version 1 is tolerated; a newer release's migration is not.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let refused = orders::db::migrate(&pool).await.unwrap_err();
    assert!(format!("{refused:#}").contains("does not know: [99]"), "{refused:#}");
}
