//! The outbox brings its own schema: once, whoever starts first.

use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn replicas_starting_together_apply_the_schema_once(pool: PgPool) {
    let starts = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { outbox::schema::apply(&mut pool.acquire().await.unwrap()).await })
    });
    let applied: Vec<Vec<i32>> =
        futures::future::join_all(starts).await.into_iter().map(|joined| joined.unwrap().unwrap()).collect();
    let mut all: Vec<i32> = applied.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, (1..=outbox::schema::VERSION).collect::<Vec<_>>(), "each version applied by one replica");

    let recorded: Vec<i32> = sqlx::query_scalar("SELECT version FROM outbox_schema_version ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, all);
    assert_eq!(
        outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap(),
        Vec::<i32>::new(),
        "a later start changes nothing"
    );
    for table in ["outbox_messages", "outbox_archive", "outbox_archive_default"] {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&pool).await.unwrap();
        assert!(exists, "{table}");
    }
}
