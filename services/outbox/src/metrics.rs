//! The relay's instruments and the sampler that measures the backlog.

use std::{sync::LazyLock, time::Duration};

use chrono::Utc;
use infra::backoff::Backoff;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use telemetry::metrics::{self, Gauge, Histogram, IntCounterVec, IntGauge, Name, Registry};
use tokio_util::sync::CancellationToken;

use crate::{
    message::PARTITIONS,
    ownership::{PARTITION_CLASS, PRESENCE_CLASS, PendingRow},
};

/// How often the backlog is measured (one `count(*)` and `min(created_at)` on
/// `outbox_messages`, which holds only pending rows, so it is as cheap as the backlog is small).
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The backlog, and the relays and partition locks of this database.
static SAMPLE: LazyLock<String> = LazyLock::new(|| {
    let locks = "FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    format!(
        "SELECT count(*), \
         COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8, \
         (SELECT count(DISTINCT objid) {locks} AND classid = {PARTITION_CLASS} AND objid < {PARTITIONS}), \
         (SELECT count(*) {locks} AND classid = {PRESENCE_CLASS}) \
         FROM outbox_messages"
    )
});

#[derive(Clone)]
pub(crate) struct RelayMetrics {
    pending: IntGauge,
    oldest_age: Gauge,
    commit_to_confirm: Histogram,
    failures: IntCounterVec,
    retries: IntCounterVec,
    batch_size: Histogram,
    owned_partitions: IntGauge,
    unowned_partitions: IntGauge,
    relays: IntGauge,
}

impl RelayMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        Self {
            pending: metrics::gauge(
                registry,
                Name { prometheus: "outbox_pending_messages", otel: "outbox.pending", unit: "{message}" },
                "Rows waiting in the outbox",
            ),
            oldest_age: metrics::float_gauge(
                registry,
                Name { prometheus: "outbox_oldest_pending_age_seconds", otel: "outbox.oldest_pending.age", unit: "s" },
                "Age of the oldest pending outbox row",
            ),
            commit_to_confirm: metrics::histogram(
                registry,
                Name {
                    prometheus: "outbox_commit_to_confirm_duration_seconds",
                    otel: "outbox.commit_to_confirm.duration",
                    unit: "s",
                },
                "From the row's commit (created_at) to the broker's confirm",
                metrics::LATENCY_BUCKETS,
            ),
            failures: metrics::counter_vec(
                registry,
                Name { prometheus: "outbox_publish_failures", otel: "outbox.publish.failures", unit: "{message}" },
                "Messages the broker did not confirm: rejected (nack or unroutable) or unconfirmed (channel lost)",
                &["reason"],
                &[&["rejected"], &["unconfirmed"]],
            ),
            retries: metrics::counter_vec(
                registry,
                Name { prometheus: "outbox_publish_retries", otel: "outbox.publish.retries", unit: "{retry}" },
                "Times the relay backed off before trying again, by cause",
                &["cause"],
                &[&["broker_unreachable"], &["database_unreachable"], &["channel_broken"], &["rejected"]],
            ),
            batch_size: metrics::histogram(
                registry,
                Name { prometheus: "outbox_batch_size_messages", otel: "outbox.batch.size", unit: "{message}" },
                "Rows claimed and published together",
                metrics::SIZE_BUCKETS,
            ),
            owned_partitions: metrics::gauge(
                registry,
                Name { prometheus: "outbox_owned_partitions", otel: "outbox.partitions.owned", unit: "{partition}" },
                "Outbox partitions this relay owns",
            ),
            unowned_partitions: metrics::gauge(
                registry,
                Name {
                    prometheus: "outbox_unowned_partitions",
                    otel: "outbox.partitions.unowned",
                    unit: "{partition}",
                },
                "Outbox partitions no relay of this database holds (their events wait until one takes them)",
            ),
            relays: metrics::gauge(
                registry,
                Name { prometheus: "outbox_relays", otel: "outbox.relays", unit: "{relay}" },
                "Relays holding partitions of this database, this one included",
            ),
        }
    }

    pub(crate) fn batch(&self, rows: usize) {
        self.batch_size.observe(rows as f64);
    }

    pub(crate) fn confirmed(&self, row: &PendingRow) {
        let elapsed = (Utc::now() - row.created_at).to_std().unwrap_or_default();
        self.commit_to_confirm.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn failed(&self, reason: &str, rows: usize) {
        if rows > 0 {
            self.failures.with_label_values(&[reason]).inc_by(rows as u64);
        }
    }

    pub(crate) fn retry(&self, cause: &str) {
        self.retries.with_label_values(&[cause]).inc();
    }

    pub(crate) fn owned(&self, partitions: usize) {
        self.owned_partitions.set(partitions as i64);
    }

    /// Measures the backlog every [`SAMPLE_INTERVAL`] on a connection of its
    /// own (so it keeps measuring while the relay waits for the broker) until `stop`.
    pub(crate) async fn sample(self, options: PgConnectOptions, stop: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        let mut backoff = Backoff::new(SAMPLE_INTERVAL, Duration::from_secs(10));
        while !stop.is_cancelled() {
            let sampled = async {
                if conn.is_none() {
                    conn = Some(PgConnection::connect_with(&options).await?);
                }
                let c = conn.as_mut().expect("connected above");
                sqlx::query_as::<_, (i64, f64, i64, i64)>(&SAMPLE).fetch_one(c).await
            }
            .await;
            let delay = match sampled {
                Ok((pending, age, locked, relays)) => {
                    self.pending.set(pending);
                    self.unowned_partitions.set(i64::from(PARTITIONS) - locked);
                    self.relays.set(relays);
                    self.oldest_age.set(age.max(0.0));
                    backoff.reset();
                    SAMPLE_INTERVAL
                }
                Err(err) => {
                    tracing::debug!(error = %err, "outbox backlog not measured");
                    conn = None;
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
    }
}
