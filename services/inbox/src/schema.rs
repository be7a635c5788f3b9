//! The inbox's tables (`processed_events`, `dead_letters`), versioned in
//! `inbox_schema_version`. A service calls [`apply`] at start, before its own
//! migrations.

use infra::schema::Step;
use sqlx::PgConnection;

/// The table recording which versions of this schema a database has.
pub const VERSION_TABLE: &str = "inbox_schema_version";

/// Serialises replicas applying the schema at once ("inbox" in ASCII).
const LOCK_KEY: i64 = 0x69_6e62_6f78;

const STEPS: &[Step] = &[
    Step { version: 1, description: "processed events", sql: include_str!("../schema/0001_processed_events.sql") },
    Step { version: 2, description: "dead letters", sql: include_str!("../schema/0002_dead_letters.sql") },
];

/// The latest schema version this release knows.
pub const VERSION: i32 = STEPS[STEPS.len() - 1].version;

/// Brings the database to the inbox's current schema: idempotent, safe with
/// several processes starting at once. Returns the versions applied now.
/// Takes a connection so the caller's own migrator can run on the same one.
pub async fn apply(conn: &mut PgConnection) -> Result<Vec<i32>, sqlx::Error> {
    infra::schema::apply(conn, VERSION_TABLE, LOCK_KEY, STEPS).await
}
