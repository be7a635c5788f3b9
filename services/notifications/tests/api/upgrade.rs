//! A database made by the earlier layout, where the inbox's tables were
//! Notifications' own migrations 1 and 3, starts with this release and keeps
//! working, and a fresh database gets the same inbox schema.

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use crate::helpers::*;

const INBOX_TABLES: &[&str] = &["processed_events", "dead_letters", "notifications"];

async fn versions(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version::bigint FROM {table} ORDER BY version")).fetch_all(pool).await.unwrap()
}

#[sqlx::test(migrations = "tests/fixtures/legacy-migrations")]
async fn a_database_of_the_earlier_layout_starts_and_keeps_deduplicating(_: PgPoolOptions, db: PgConnectOptions) {
    let pool = pool(&db).await;
    assert_eq!(versions(&pool, "_sqlx_migrations").await, [1, 2, 3]);
    let config = test_config(&database_url(&db), &testkit::amqp_url());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    // An event the earlier release already applied.
    let (old_id, old_event) = order_created("corr-legacy");
    sqlx::query("INSERT INTO processed_events (event_id) VALUES ($1)").bind(old_id).execute(&pool).await.unwrap();

    let mut app = spawn_app(config).await;
    assert_eq!(versions(&pool, "_sqlx_migrations").await, [1, 2, 3, 4], "the applied history is kept");
    assert_eq!(versions(&pool, inbox::schema::VERSION_TABLE).await, [1, 2]);
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (new_id, new_event) = order_created("corr-new");
    broker.publish(&topology.exchange, old_id, &old_event).await;
    broker.publish(&topology.exchange, new_id, &new_event).await;

    let app_ref = &app;
    let order_id = new_event.order_id.as_str();
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;
    assert!(app.list(&old_event.order_id).await.unwrap().is_empty(), "the earlier dedup record still holds");
    let processed: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM processed_events ORDER BY processed_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(processed, [old_id, new_id]);
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = "tests/fixtures/legacy-migrations")]
async fn a_fresh_database_gets_the_inbox_schema_an_upgraded_one_has(pool: PgPool) {
    notifications::migrate(&pool).await.unwrap();
    let fresh = testkit::schema::Scratch::beside(&pool).await;
    notifications::migrate(&fresh.pool).await.unwrap();

    let upgraded = testkit::schema::shape(&pool, INBOX_TABLES).await;
    assert!(upgraded.iter().any(|line| line.starts_with("dead_letters | 1 | id")), "{upgraded:#?}");
    assert_eq!(testkit::schema::shape(&fresh.pool, INBOX_TABLES).await, upgraded);
    assert_eq!(versions(&fresh.pool, "_sqlx_migrations").await, [2, 4], "the inbox is no longer Notifications' own");
    assert_eq!(versions(&fresh.pool, inbox::schema::VERSION_TABLE).await, [1, 2]);
    fresh.drop_now().await;
}
