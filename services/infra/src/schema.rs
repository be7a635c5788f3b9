//! A library's own schema, versioned in its own table, so every service that
//! uses the library gets the same tables by calling it, with nothing copied
//! into the service's migrations.
//!
//! Steps run in one transaction under an advisory lock: replicas starting
//! together apply each step once, and a failed step leaves nothing behind.

use sqlx::{Connection, Executor, PgConnection};

/// One version of a library's schema: SQL run once, in order.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Brings the database to the last of `steps` (sorted by version), recording
/// each in `table` (created if missing). `lock_key` is the advisory lock that
/// serialises concurrent callers; each library uses its own. Returns the
/// versions applied now (none when the database was current).
pub async fn apply(
    conn: &mut PgConnection,
    table: &str,
    lock_key: i64,
    steps: &[Step],
) -> Result<Vec<i32>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The one-argument form: relays' partition locks use the two-argument
    // form, so the keys cannot collide with theirs.
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock_key).execute(&mut *tx).await?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
         )"
    );
    tx.execute(create.as_str()).await?;
    let current: Option<i32> =
        sqlx::query_scalar(&format!("SELECT max(version) FROM {table}")).fetch_one(&mut *tx).await?;
    let current = current.unwrap_or(0);
    let known = steps.iter().map(|step| step.version).max().unwrap_or(0);
    if current > known {
        // A newer release already upgraded the database; its steps only add,
        // so this release keeps working with what it knows.
        tracing::warn!(table, current, known, "database schema is newer than this release knows");
    }
    let mut applied = Vec::new();
    for step in steps.iter().filter(|step| step.version > current) {
        // Unprepared, so a step may hold several statements.
        tx.execute(step.sql).await?;
        sqlx::query(&format!("INSERT INTO {table} (version, description) VALUES ($1, $2)"))
            .bind(step.version)
            .bind(step.description)
            .execute(&mut *tx)
            .await?;
        applied.push(step.version);
    }
    tx.commit().await?;
    if !applied.is_empty() {
        tracing::info!(table, versions = ?applied, "applied schema");
    }
    Ok(applied)
}
