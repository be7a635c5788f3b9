//! End-to-end latency from one clock: the order row's and the notification
//! row's `clock_timestamp()` defaults, both written by the same Postgres server.
//!
//! With `BENCH_LATENCY_DUMP=PATH`, every measured order is also appended to
//! PATH as `order created_at (µs since the epoch),latency µs`, to see where in
//! a window the tail sits.

use std::io::Write;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Microseconds from order commit to notification commit, for `ids`.
pub(crate) async fn order_to_notification(
    orders_url: &str,
    notifications_url: &str,
    ids: &[Uuid],
) -> anyhow::Result<Histogram<u64>> {
    let mut orders = PgConnection::connect(orders_url).await?;
    let mut notifications = PgConnection::connect(notifications_url).await?;
    let created: HashMap<Uuid, DateTime<Utc>> =
        sqlx::query_as("SELECT order_id, created_at FROM orders WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut orders)
            .await?
            .into_iter()
            .collect();
    let notified: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT order_id, created_at FROM notifications WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut notifications)
            .await?;
    let mut histogram = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let dump_to = std::env::var("BENCH_LATENCY_DUMP").ok();
    let mut dump = Vec::new();
    for (order_id, at) in notified {
        if let Some(start) = created.get(&order_id) {
            let micros = (at - *start).num_microseconds().unwrap_or(i64::MAX).max(1) as u64;
            histogram.saturating_record(micros);
            if dump_to.is_some() {
                writeln!(dump, "{},{micros}", start.timestamp_micros())?;
            }
        }
    }
    if let Some(path) = dump_to {
        std::fs::OpenOptions::new().append(true).create(true).open(&path)?.write_all(&dump)?;
    }
    Ok(histogram)
}

/// Microseconds from order commit to the commit that completed it, for the
/// COMPLETED orders among `ids` (both stamps from the orders database), and
/// how many of `ids` ended otherwise.
pub(crate) async fn order_to_completed(orders_url: &str, ids: &[Uuid]) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut orders = PgConnection::connect(orders_url).await?;
    let rows: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT status, created_at, updated_at FROM orders WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut orders)
            .await?;
    let mut histogram = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let mut other = 0;
    for (status, created, updated) in rows {
        match (status.as_str(), updated) {
            ("COMPLETED", Some(updated)) => {
                histogram.saturating_record((updated - created).num_microseconds().unwrap_or(i64::MAX).max(1) as u64);
            }
            _ => other += 1,
        }
    }
    Ok((histogram, other))
}

/// Microseconds from order commit (the orders database's clock) to the
/// moment in `arrived` (this machine's clock, which that database shares),
/// for the orders in `arrived`.
pub(crate) async fn order_to_arrival(
    orders_url: &str,
    arrived: &HashMap<Uuid, DateTime<Utc>>,
) -> anyhow::Result<Histogram<u64>> {
    let ids: Vec<Uuid> = arrived.keys().copied().collect();
    let mut orders = PgConnection::connect(orders_url).await?;
    let created: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT order_id, created_at FROM orders WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut orders)
            .await?;
    let mut histogram = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    for (order_id, start) in created {
        if let Some(at) = arrived.get(&order_id) {
            histogram.saturating_record((*at - start).num_microseconds().unwrap_or(i64::MAX).max(1) as u64);
        }
    }
    Ok(histogram)
}
