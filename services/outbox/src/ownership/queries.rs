//! The statements that claim pending rows and mark published ones.

use std::collections::BTreeSet;

use sqlx::PgConnection;

use super::{Claim, PendingRow};

pub(super) async fn claim_on(
    conn: &mut PgConnection,
    owned: &BTreeSet<i16>,
    claim: &Claim,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    let owned: Vec<i16> = owned.iter().copied().collect();
    let sql = if claim.exclude.is_empty() {
        "SELECT id, event_id, aggregate_id, exchange, routing_key, message_type, content_type, payload,
                headers, created_at, occurred_at_field
         FROM outbox_messages
         WHERE partition = ANY($1) AND id > $3
         ORDER BY id
         LIMIT $2"
    } else {
        "SELECT id, event_id, aggregate_id, exchange, routing_key, message_type, content_type, payload,
                headers, created_at, occurred_at_field
         FROM outbox_messages
         WHERE partition = ANY($1) AND id > $3 AND NOT (id = ANY($4))
         ORDER BY id
         LIMIT $2"
    };
    let mut query = sqlx::query_as(sql).bind(owned).bind(claim.limit).bind(claim.after);
    if !claim.exclude.is_empty() {
        query = query.bind(&claim.exclude);
    }
    Ok(query.fetch_all(conn).await?.into_iter().map(PendingRow::stamped).collect())
}

pub(super) async fn mark_on(conn: &mut PgConnection, ids: &[i64], archive: bool) -> Result<u64, sqlx::Error> {
    let sql = if archive {
        "WITH done AS (DELETE FROM outbox_messages WHERE id = ANY($1) RETURNING *)
         INSERT INTO outbox_archive (id, event_id, aggregate_type, aggregate_id, exchange, routing_key,
             message_type, content_type, payload, headers, created_at, attempts, published_at,
             occurred_at_field)
         SELECT id, event_id, aggregate_type, aggregate_id, exchange, routing_key,
             message_type, content_type, payload, headers, created_at, attempts + 1, now(),
             occurred_at_field
         FROM done"
    } else {
        "DELETE FROM outbox_messages WHERE id = ANY($1)"
    };
    Ok(sqlx::query(sql).bind(ids).execute(conn).await?.rows_affected())
}
