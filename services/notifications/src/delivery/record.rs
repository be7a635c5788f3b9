//! Recording attempts' outcomes, many at a time: the attempts, the
//! deliveries' new states and the endpoints' health in one statement, so the
//! dispatcher's senders never wait on the database and a busy endpoint's
//! outcomes share a round trip and a commit.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The most outcomes one statement records.
const MAX_BATCH: usize = 512;

/// One attempt's result, as it is recorded.
#[derive(Debug, Clone)]
pub(crate) struct Attempted {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) duration: Duration,
    pub(crate) status_code: Option<u16>,
    pub(crate) error: String,
    /// `delivered`, `pending` (retried at `next_attempt_at`) or `failed`.
    pub(crate) status: &'static str,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    /// Whether the attempt counts as a failure of the endpoint.
    pub(crate) endpoint_failed: bool,
}

/// An attempt to record: which claim it was and what came of it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) delivery_id: Uuid,
    pub(crate) endpoint_id: Uuid,
    /// The claim's attempt number; a delivery claimed again since is not updated.
    pub(crate) attempt: i32,
    pub(crate) correlation_id: String,
    pub(crate) attempted: Attempted,
}

/// An endpoint just disabled for failing too long.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Disabled {
    pub(crate) endpoint_id: Uuid,
    pub(crate) kind: String,
    pub(crate) url: Option<String>,
    pub(crate) email_address: Option<String>,
    pub(crate) failing_since: DateTime<Utc>,
}

/// Records what arrives on `records` until every sender is gone, each batch
/// being what arrived while the previous one was written. A batch that cannot
/// be recorded is logged: its deliveries come due again after their lease.
pub(crate) async fn run(pool: PgPool, mut records: mpsc::UnboundedReceiver<Record>, disable_after: Duration) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while records.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match record_all(&pool, &batch, disable_after).await {
            Ok((updated, disabled)) => {
                if updated < batch.len() {
                    tracing::info!(
                        stale = batch.len() - updated,
                        "deliveries claimed again elsewhere after their lease ran out; those attempts are recorded only"
                    );
                }
                for endpoint in disabled {
                    tracing::warn!(endpoint_id = %endpoint.endpoint_id, failing_since = %endpoint.failing_since, "endpoint disabled: its deliveries kept failing");
                }
            }
            Err(err) => tracing::warn!(
                error = %err,
                attempts = batch.len(),
                "cannot record delivery attempts; those deliveries come due again after their lease"
            ),
        }
        batch.clear();
    }
}

/// Records the attempts, the deliveries' new states (unless another replica
/// has claimed one since, its lease having run out) and each endpoint's
/// health; an endpoint failing continuously for `disable_after` is disabled,
/// with a notification saying so. Returns how many deliveries were updated
/// and the endpoints disabled.
pub(crate) async fn record_all(
    pool: &PgPool,
    records: &[Record],
    disable_after: Duration,
) -> Result<(usize, Vec<Disabled>), sqlx::Error> {
    let health = Health::of(records);
    let failing: Vec<Uuid> = health.iter().filter(|h| h.since.is_some()).map(|h| h.endpoint_id).collect();
    let statement = sqlx::query_scalar::<_, i64>(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[],
                                  $7::text[], $8::timestamptz[])
                 AS v (delivery_id, attempt, started_at, duration_ms, status_code, error, status, next_attempt_at)
         ), attempts AS (
             INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
             SELECT delivery_id, attempt, started_at, duration_ms, status_code, error FROM v
             ON CONFLICT (delivery_id, attempt) DO NOTHING
         ), health AS (
             UPDATE delivery_endpoints e
             SET failing_since = h.next
             FROM (
                 SELECT h.endpoint_id,
                        CASE WHEN h.since IS NULL THEN NULL
                             WHEN h.recovered THEN h.since
                             ELSE coalesce(e.failing_since, h.since) END AS next
                 FROM unnest($9::uuid[], $10::timestamptz[], $11::bool[]) AS h (endpoint_id, since, recovered)
                 JOIN delivery_endpoints e USING (endpoint_id)
             ) h
             WHERE e.endpoint_id = h.endpoint_id AND e.failing_since IS DISTINCT FROM h.next
         ), updated AS (
             UPDATE deliveries d
             SET status = v.status, next_attempt_at = coalesce(v.next_attempt_at, d.next_attempt_at),
                 claimed_until = NULL, last_error = v.error, last_status_code = coalesce(v.status_code, 0),
                 delivered_at = CASE WHEN v.status = 'delivered' THEN clock_timestamp() END
             FROM v
             WHERE d.delivery_id = v.delivery_id AND d.attempts = v.attempt AND d.status = 'pending'
             RETURNING 1
         )
         SELECT count(*) FROM updated",
    )
    .bind(records.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.started_at).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.duration.as_millis().min(i32::MAX as u128) as i32).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.status_code.map(i32::from)).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.error.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.status).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempted.next_attempt_at).collect::<Vec<_>>())
    .bind(health.iter().map(|h| h.endpoint_id).collect::<Vec<_>>())
    .bind(health.iter().map(|h| h.since).collect::<Vec<_>>())
    .bind(health.iter().map(|h| h.recovered).collect::<Vec<_>>());
    // One round trip and commit, unless an endpoint may be disabled with it.
    let (updated, disabled) = if failing.is_empty() {
        (statement.fetch_one(pool).await?, Vec::new())
    } else {
        let mut tx = pool.begin().await?;
        let updated = statement.fetch_one(&mut *tx).await?;
        let disabled = disable(&mut tx, records, &failing, disable_after).await?;
        tx.commit().await?;
        (updated, disabled)
    };
    Ok((usize::try_from(updated).unwrap_or_default(), disabled))
}

/// Disables the endpoints among `failing` that have failed for `disable_after`,
/// each with a notification saying so.
async fn disable(
    tx: &mut sqlx::PgConnection,
    records: &[Record],
    failing: &[Uuid],
    disable_after: Duration,
) -> Result<Vec<Disabled>, sqlx::Error> {
    let disabled: Vec<Disabled> = sqlx::query_as(
        "UPDATE delivery_endpoints
         SET enabled = false,
             disabled_reason = 'disabled after its deliveries failed continuously since '
                 || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         WHERE endpoint_id = ANY ($1) AND enabled AND failing_since <= now() - $2
         RETURNING endpoint_id, kind, url, email_address, failing_since",
    )
    .bind(failing)
    .bind(disable_after)
    .fetch_all(&mut *tx)
    .await?;
    for endpoint in &disabled {
        let target = endpoint.url.as_deref().or(endpoint.email_address.as_deref()).unwrap_or_default();
        let message = format!(
            "Delivery endpoint {} ({} {target}) was disabled: its deliveries failed continuously since {}",
            endpoint.endpoint_id,
            endpoint.kind,
            endpoint.failing_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let correlation_id = records
            .iter()
            .rev()
            .find(|r| r.endpoint_id == endpoint.endpoint_id)
            .map_or("", |r| r.correlation_id.as_str());
        sqlx::query(
            "INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::nil())
        .bind(Uuid::new_v4())
        .bind(message)
        .bind(correlation_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(disabled)
}

/// What a batch says of one endpoint's health, its attempts taken in the order they started.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    endpoint_id: Uuid,
    /// When the failures after its last success began; None: the last attempt succeeded.
    since: Option<DateTime<Utc>>,
    /// Whether an attempt succeeded before those failures, ending any earlier failing run.
    recovered: bool,
}

impl Health {
    /// Endpoints whose attempts in `records` all neither failed nor succeeded
    /// (a delivery the endpoint is not blamed for) are left out.
    fn of(records: &[Record]) -> Vec<Health> {
        let mut by_endpoint: HashMap<Uuid, Vec<&Record>> = HashMap::new();
        for record in records {
            by_endpoint.entry(record.endpoint_id).or_default().push(record);
        }
        let mut health: Vec<Health> = by_endpoint
            .into_iter()
            .filter_map(|(endpoint_id, mut attempts)| {
                attempts.sort_by_key(|r| r.attempted.started_at);
                let last_success = attempts.iter().rposition(|r| r.attempted.status == "delivered");
                let after = last_success.map_or(0, |i| i + 1);
                let since =
                    attempts[after..].iter().find(|r| r.attempted.endpoint_failed).map(|r| r.attempted.started_at);
                (since.is_some() || last_success.is_some()).then_some(Health {
                    endpoint_id,
                    since,
                    recovered: last_success.is_some(),
                })
            })
            .collect();
        // A stable order, so concurrent batches lock endpoints alike.
        health.sort_by_key(|h| h.endpoint_id);
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(endpoint: u128, at_ms: i64, status: &'static str, endpoint_failed: bool) -> Record {
        Record {
            delivery_id: Uuid::now_v7(),
            endpoint_id: Uuid::from_u128(endpoint),
            attempt: 1,
            correlation_id: String::new(),
            attempted: Attempted {
                started_at: DateTime::from_timestamp_millis(at_ms).expect("a time"),
                duration: Duration::ZERO,
                status_code: None,
                error: String::new(),
                status,
                next_attempt_at: None,
                endpoint_failed,
            },
        }
    }

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(ms)
    }

    #[test]
    fn the_last_attempt_decides_and_a_failing_run_starts_after_the_last_success() {
        let records = [
            // 1: failed, then succeeded: healthy again.
            record(1, 10, "pending", true),
            record(1, 20, "delivered", false),
            // 2: succeeded, then failed twice (out of order): failing since 30, a fresh run.
            record(2, 40, "failed", true),
            record(2, 10, "delivered", false),
            record(2, 30, "pending", true),
            // 3: only failures: failing since 5 unless it already was.
            record(3, 15, "pending", true),
            record(3, 5, "pending", true),
            // 4: a refusal the endpoint is not blamed for: not touched.
            record(4, 5, "failed", false),
        ];
        assert_eq!(
            Health::of(&records),
            vec![
                Health { endpoint_id: Uuid::from_u128(1), since: None, recovered: true },
                Health { endpoint_id: Uuid::from_u128(2), since: at(30), recovered: true },
                Health { endpoint_id: Uuid::from_u128(3), since: at(5), recovered: false },
            ]
        );
    }
}
