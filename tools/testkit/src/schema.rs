//! Schema comparisons for upgrade tests: a scratch database beside a test's
//! own, and a table's shape as Postgres describes it.

use sqlx::PgPool;

/// A database created beside `pool`'s, dropped by [`Scratch::drop_now`].
pub struct Scratch {
    pub pool: PgPool,
    name: String,
    admin: PgPool,
}

impl Scratch {
    /// Creates an empty database on `pool`'s server.
    pub async fn beside(pool: &PgPool) -> Self {
        // Test databases' own names are near Postgres's 63-byte limit: no suffix fits.
        let name = crate::unique("fresh").replace('.', "_");
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(pool).await.unwrap();
        let options = pool.connect_options().as_ref().clone().database(&name);
        let scratch = PgPool::connect_with(options).await.expect("connect to the scratch database");
        Self { pool: scratch, name, admin: pool.clone() }
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name)).execute(&self.admin).await.unwrap();
    }
}

/// Every column of `tables` (name, position, type, nullability, default,
/// identity), then every index and storage option: what two databases must
/// agree on to hold the same schema.
pub async fn shape(pool: &PgPool, tables: &[&str]) -> Vec<String> {
    let tables: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let mut shape: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' | ', table_name, ordinal_position, column_name, data_type, is_nullable,
                          column_default, is_identity)
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = ANY($1)
         ORDER BY table_name, ordinal_position",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await
    .unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1) ORDER BY indexname",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await
    .unwrap();
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' | ', relname, relkind, array_to_string(reloptions, ','))
         FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname = ANY($1) ORDER BY relname",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await
    .unwrap();
    shape.extend(indexes);
    shape.extend(options);
    shape
}
