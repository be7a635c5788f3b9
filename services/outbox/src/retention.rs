//! Archive upkeep: hourly partitions of `outbox_archive` are created ahead of
//! time and dropped whole once older than the retention.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "outbox_archive_p";
const EVERY: Duration = Duration::from_secs(60);

pub(crate) async fn maintain(options: PgConnectOptions, retention: Duration, stop: CancellationToken) {
    loop {
        if let Err(err) = run_once(&options, retention, Utc::now()).await {
            tracing::warn!(error = %err, "outbox archive maintenance failed; retrying in a minute");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Ensures partitions from one hour ago to three hours ahead and drops expired ones.
pub async fn run_once(options: &PgConnectOptions, retention: Duration, now: DateTime<Utc>) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(options).await?;
    sqlx::query("SET lock_timeout = '5s'").execute(&mut conn).await?;
    let hour = now.duration_trunc(TimeDelta::hours(1))?;
    for offset in -1..=3 {
        let start = hour + TimeDelta::hours(offset);
        create_partition(&mut conn, start).await?;
    }
    let cutoff = now - TimeDelta::from_std(retention)?;
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = 'outbox_archive'",
    )
    .fetch_all(&mut conn)
    .await?;
    for name in partitions {
        let Some(start) = partition_start(&name) else { continue };
        if start + TimeDelta::hours(1) <= cutoff {
            sqlx::query(&format!("DROP TABLE IF EXISTS {name}")).execute(&mut conn).await?;
            tracing::info!(partition = %name, "dropped expired outbox archive partition");
        }
    }
    sqlx::query("DELETE FROM outbox_archive_default WHERE published_at < $1").bind(cutoff).execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(())
}

async fn create_partition(conn: &mut PgConnection, start: DateTime<Utc>) -> anyhow::Result<()> {
    let end = start + TimeDelta::hours(1);
    let statement = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF outbox_archive FOR VALUES FROM ('{}') TO ('{}')",
        partition_name(start),
        start.to_rfc3339(),
        end.to_rfc3339()
    );
    match sqlx::query(&statement).execute(&mut *conn).await {
        Ok(_) => Ok(()),
        // Another relay created it at the same moment, or rows for that hour
        // already sit in the default partition: both leave the archive usable.
        Err(sqlx::Error::Database(err)) if matches!(err.code().as_deref(), Some("42P07" | "23505" | "23514")) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn partition_name(start: DateTime<Utc>) -> String {
    format!("{PREFIX}{}", start.format("%Y%m%d%H"))
}

fn partition_start(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(PREFIX)?;
    let parsed = chrono::NaiveDateTime::parse_from_str(&format!("{stamp}0000"), "%Y%m%d%H%M%S").ok()?;
    Some(parsed.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let start = DateTime::parse_from_rfc3339("2026-11-22T03:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(partition_name(start), "outbox_archive_p2026112203");
        assert_eq!(partition_start("outbox_archive_p2026112203"), Some(start));
        assert_eq!(partition_start("outbox_archive_default"), None);
    }
}
