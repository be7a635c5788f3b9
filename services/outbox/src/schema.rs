//! The outbox's tables (`outbox_messages`, the hourly-partitioned
//! `outbox_archive` and its default partition), versioned in
//! `outbox_schema_version`. A service calls [`apply`] at start, before its
//! own migrations; the hourly archive partitions are the relay's upkeep
//! (see [`crate::maintain_archive_once`]).

use infra::schema::Step;
use sqlx::PgConnection;

/// The table recording which versions of this schema a database has.
pub const VERSION_TABLE: &str = "outbox_schema_version";

/// Serialises replicas applying the schema at once ("outbox" in ASCII).
const LOCK_KEY: i64 = 0x6f75_7462_6f78;

const STEPS: &[Step] = &[
    Step { version: 1, description: "outbox messages and archive", sql: include_str!("../schema/0001_outbox.sql") },
    Step {
        version: 2,
        description: "occurred_at stamped at publish",
        sql: include_str!("../schema/0002_occurred_at_field.sql"),
    },
];

/// The latest schema version this release knows.
pub const VERSION: i32 = STEPS[STEPS.len() - 1].version;

/// Brings the database to the outbox's current schema: idempotent, safe with
/// several processes starting at once. Returns the versions applied now.
/// Takes a connection so the caller's own migrator can run on the same one.
pub async fn apply(conn: &mut PgConnection) -> Result<Vec<i32>, sqlx::Error> {
    infra::schema::apply(conn, VERSION_TABLE, LOCK_KEY, STEPS).await
}
