//! Forgetting processed event ids once no copy of their event can still arrive.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement: small enough never to hold locks for long.
const PRUNE_BATCH: i64 = 1000;

/// Deletes ids recorded longer than `older_than` ago, in small batches.
/// Returns how many went.
pub async fn prune_processed_events(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let cutoff =
        chrono::TimeDelta::from_std(older_than).ok().and_then(|age| chrono::Utc::now().checked_sub_signed(age));
    let Some(cutoff) = cutoff else { return Ok(0) };
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM processed_events WHERE event_id IN (
                 SELECT event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Prunes every `interval` until `stop` fires.
pub(crate) async fn run(pool: PgPool, window: Duration, interval: Duration, stop: CancellationToken) {
    loop {
        match prune_processed_events(&pool, window).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned processed event ids"),
            Err(err) => tracing::warn!(error = %err, "cannot prune processed event ids"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
