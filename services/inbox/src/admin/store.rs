//! The `dead_letters` table: what the console lists, groups, shows, replays
//! and purges. Every query filters by state, so a replayed or purged row stays
//! for the record without showing among the waiting ones.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Where a dead letter stands (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Waiting for an operator.
    #[default]
    Dead,
    Replayed,
    Purged,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Replayed => "replayed",
            Self::Purged => "purged",
        }
    }

    pub(crate) fn parse(raw: &str) -> Self {
        match raw {
            "replayed" => Self::Replayed,
            "purged" => Self::Purged,
            _ => Self::Dead,
        }
    }
}

/// Which dead letters a call means; None matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub reason: Option<String>,
    pub message_type: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    pub correlation_id: Option<String>,
    pub state: State,
}

/// The filter as SQL on parameters $1 to $6 (see [`bind_filter`]).
const WHERE: &str = "state = $1
    AND ($2::text IS NULL OR reason = $2)
    AND ($3::text IS NULL OR message_type = $3)
    AND ($4::timestamptz IS NULL OR dead_lettered_at >= $4)
    AND ($5::timestamptz IS NULL OR dead_lettered_at < $5)
    AND ($6::text IS NULL OR correlation_id = $6)";

type PgQueryAs<'q, O> = sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

fn bind_filter<'q, O>(query: PgQueryAs<'q, O>, filter: &'q Filter) -> PgQueryAs<'q, O> {
    query
        .bind(filter.state.as_str())
        .bind(filter.reason.as_deref())
        .bind(filter.message_type.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.correlation_id.as_deref())
}

/// A message taken from the dead-letter queue, before it is stored.
#[derive(Debug, Clone)]
pub(crate) struct NewDeadLetter {
    pub(crate) fingerprint: String,
    pub(crate) message_id: String,
    pub(crate) message_type: String,
    pub(crate) correlation_id: String,
    pub(crate) reason: String,
    pub(crate) error: String,
    pub(crate) attempts: i32,
    pub(crate) source_queue: String,
    pub(crate) dead_lettered_at: DateTime<Utc>,
    pub(crate) headers: serde_json::Value,
    pub(crate) properties: serde_json::Value,
    pub(crate) payload: Vec<u8>,
    /// The `x-replay-of` header: the dead letter it was replayed from.
    pub(crate) replay_of: Option<Uuid>,
}

/// One stored dead letter.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeadLetterRow {
    pub(crate) id: Uuid,
    pub(crate) message_id: String,
    pub(crate) message_type: String,
    pub(crate) correlation_id: String,
    pub(crate) reason: String,
    pub(crate) error: String,
    pub(crate) attempts: i32,
    pub(crate) source_queue: String,
    pub(crate) dead_lettered_at: DateTime<Utc>,
    pub(crate) headers: serde_json::Value,
    pub(crate) properties: serde_json::Value,
    pub(crate) payload: Vec<u8>,
    pub(crate) replay_of: Option<Uuid>,
    pub(crate) state: String,
    pub(crate) replayed_at: Option<DateTime<Utc>>,
    pub(crate) purged_at: Option<DateTime<Utc>>,
    pub(crate) purged_by: Option<String>,
    pub(crate) purge_reason: Option<String>,
}

const COLUMNS: &str = "id, message_id, message_type, correlation_id, reason, error, attempts, source_queue,
    dead_lettered_at, headers, properties, payload, replay_of, state, replayed_at, purged_at, purged_by, purge_reason";

/// Stores one dead letter; a copy already stored (same fingerprint) is not
/// stored again. A replayed copy that failed again counts on the attempts of
/// the dead letter it was replayed from, if that one has the same message id
/// (a forged `x-replay-of` links nothing).
pub(crate) async fn insert(pool: &PgPool, new: &NewDeadLetter) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (id, fingerprint, message_id, message_type, correlation_id, reason, error,
             attempts, source_queue, dead_lettered_at, headers, properties, payload, replay_of)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 + COALESCE(prev.attempts, 0), $9, $10, $11, $12, $13, prev.id
         FROM (SELECT 1) AS one
         LEFT JOIN dead_letters prev ON prev.id = $14 AND prev.message_id = $3
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(&new.fingerprint)
    .bind(&new.message_id)
    .bind(&new.message_type)
    .bind(&new.correlation_id)
    .bind(&new.reason)
    .bind(&new.error)
    .bind(new.attempts)
    .bind(&new.source_queue)
    .bind(new.dead_lettered_at)
    .bind(&new.headers)
    .bind(&new.properties)
    .bind(&new.payload)
    .bind(new.replay_of)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Where a page ends: the last row's time and id (rows go newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

impl Cursor {
    pub(crate) fn encode(self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.id)
    }

    pub(crate) fn decode(token: &str) -> Option<Self> {
        let (micros, id) = token.split_once('.')?;
        Some(Self { at: DateTime::from_timestamp_micros(micros.parse().ok()?)?, id: Uuid::parse_str(id).ok()? })
    }
}

/// One page of the filter, newest first, after `after`.
pub(crate) async fn list(
    pool: &PgPool,
    filter: &Filter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE {WHERE}
           AND ($7::timestamptz IS NULL OR (dead_lettered_at, id) < ($7, $8))
         ORDER BY dead_lettered_at DESC, id DESC LIMIT $9"
    );
    bind_filter(sqlx::query_as(&sql), filter)
        .bind(after.map(|c| c.at))
        .bind(after.map(|c| c.id))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Counts by reason and message type.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Group {
    pub(crate) reason: String,
    pub(crate) message_type: String,
    pub(crate) count: i64,
    pub(crate) oldest: DateTime<Utc>,
    pub(crate) newest: DateTime<Utc>,
}

/// The filter's rows counted by reason and message type, largest group first.
pub(crate) async fn groups(pool: &PgPool, filter: &Filter) -> Result<Vec<Group>, sqlx::Error> {
    let sql = format!(
        "SELECT reason, message_type, count(*) AS count, min(dead_lettered_at) AS oldest,
                max(dead_lettered_at) AS newest
         FROM dead_letters WHERE {WHERE}
         GROUP BY reason, message_type ORDER BY count DESC, reason, message_type"
    );
    bind_filter(sqlx::query_as(&sql), filter).fetch_all(pool).await
}

pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DeadLetterRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1")).bind(id).fetch_optional(pool).await
}

/// The dead letter `id` and the ones it was replayed from, oldest first.
pub(crate) async fn history(pool: &PgPool, id: Uuid) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    let sql = format!(
        "WITH RECURSIVE chain AS (
             SELECT *, 0 AS depth FROM dead_letters WHERE id = $1
             UNION ALL
             SELECT d.*, chain.depth + 1 FROM dead_letters d JOIN chain ON d.id = chain.replay_of
             WHERE chain.depth < 100
         )
         SELECT {COLUMNS} FROM chain ORDER BY depth DESC"
    );
    sqlx::query_as(&sql).bind(id).fetch_all(pool).await
}

/// The waiting dead letters a replay or purge means: `ids` when given (those
/// still waiting), else the filter's oldest first, at most `limit`.
pub(crate) async fn select(pool: &PgPool, ids: &[Uuid], filter: &Filter, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = if ids.is_empty() {
        let sql = format!("SELECT id FROM dead_letters WHERE {WHERE} ORDER BY dead_lettered_at, id LIMIT $7");
        bind_filter(sqlx::query_as(&sql), filter).bind(limit).fetch_all(pool).await?
    } else {
        sqlx::query_as(
            "SELECT id FROM dead_letters WHERE id = ANY($1) AND state = 'dead' ORDER BY dead_lettered_at, id",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?
    };
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Locks one waiting dead letter for replay inside `tx`; None when it is no
/// longer waiting or another replay holds it.
pub(crate) async fn lock_waiting(tx: &mut PgConnection, id: Uuid) -> Result<Option<DeadLetterRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE id = $1 AND state = 'dead' FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(tx)
    .await
}

pub(crate) async fn mark_replayed(tx: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET state = 'replayed', replayed_at = clock_timestamp() WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Marks the waiting ones among `ids` purged, with who and why; returns those marked.
pub(crate) async fn purge(pool: &PgPool, ids: &[Uuid], by: &str, reason: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "UPDATE dead_letters SET state = 'purged', purged_at = clock_timestamp(), purged_by = $2, purge_reason = $3
         WHERE id = ANY($1) AND state = 'dead' RETURNING id",
    )
    .bind(ids)
    .bind(by)
    .bind(reason)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor { at: DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap(), id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("nonsense"), None);
        assert_eq!(Cursor::decode("12.not-a-uuid"), None);
    }
}
