//! Vacuuming `outbox_messages` as the relay empties it.
//!
//! Every published row is deleted, so the table's dead rows grow by the
//! event rate. Autovacuum visits a database at most once per
//! `autovacuum_naptime` (a minute by default) and may be off altogether: in
//! between, each claim that starts low in the table, and the backlog gauge's
//! count, walk every dead row. At 3,000 events a second, with autovacuum off,
//! the table grew to 87 MB of dead rows in 90 seconds, and Postgres's CPU per
//! event rose by half. So a relay vacuums the table itself, on a connection of
//! its own, once it has deleted enough rows.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

/// How often the count of deleted rows is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Rows the relay deleted since its last vacuum; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deleted(Arc<AtomicU64>);

impl Deleted {
    pub(crate) fn add(&self, rows: u64) {
        self.0.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Vacuums `outbox_messages` whenever at least `every` rows were deleted since
/// the last time, until `stop`. `SKIP_LOCKED`: while another relay's vacuum
/// runs, this one skips its turn instead of queueing behind it.
pub(crate) async fn maintain(options: PgConnectOptions, deleted: Deleted, every: u64, stop: CancellationToken) {
    let mut conn: Option<PgConnection> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let pending = deleted.0.load(Ordering::Relaxed);
        if pending < every {
            continue;
        }
        let started = std::time::Instant::now();
        let vacuumed = async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&options).await?);
            }
            let conn = conn.as_mut().expect("connected above");
            sqlx::query("VACUUM (SKIP_LOCKED) outbox_messages").execute(conn).await
        }
        .await;
        match vacuumed {
            Ok(_) => {
                deleted.0.fetch_sub(pending, Ordering::Relaxed);
                tracing::debug!(
                    rows = pending,
                    vacuum_us = started.elapsed().as_micros() as u64,
                    "vacuumed the outbox"
                );
            }
            Err(err) => {
                // Tried again in a second, on a new connection; the rows stay counted.
                tracing::warn!(error = %err, "cannot vacuum the outbox");
                conn = None;
            }
        }
    }
}
