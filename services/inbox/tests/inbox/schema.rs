//! The inbox brings its own schema: once, whoever starts first.

use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn replicas_starting_together_apply_the_schema_once(pool: PgPool) {
    let starts = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { inbox::schema::apply(&mut pool.acquire().await.unwrap()).await })
    });
    let mut all: Vec<i32> =
        futures::future::join_all(starts).await.into_iter().flat_map(|joined| joined.unwrap().unwrap()).collect();
    all.sort();
    assert_eq!(all, (1..=inbox::schema::VERSION).collect::<Vec<_>>(), "each version applied by one replica");
    assert_eq!(
        inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap(),
        Vec::<i32>::new(),
        "a later start changes nothing"
    );
    for table in ["processed_events", "dead_letters"] {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&pool).await.unwrap();
        assert!(exists, "{table}");
    }
}

/// A database whose inbox tables came from a service's own migrations (and
/// hold rows) takes the schema as current without losing a row.
#[sqlx::test(migrations = false)]
async fn tables_made_by_a_services_migrations_are_adopted_with_their_rows(pool: PgPool) {
    sqlx::raw_sql(include_str!("../fixtures/legacy_inbox.sql")).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO processed_events (event_id) VALUES (gen_random_uuid())").execute(&pool).await.unwrap();
    assert_eq!(
        inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap(),
        (1..=inbox::schema::VERSION).collect::<Vec<_>>()
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&pool).await.unwrap();
    assert_eq!(kept, 1);
}
