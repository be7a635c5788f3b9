//! Health names and what drives them: `liveness` follows the process, the
//! readiness names follow the database through [`watch_database`].

use std::time::Duration;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

/// Health name that follows only the process: SERVING from the moment the
/// server is built until it exits, whatever the database or the broker do.
/// Liveness probes ask it, so an outage of either restarts no pod (readiness,
/// on `""` and the service names, takes the pod out of its Service instead).
pub const LIVENESS: &str = "liveness";

/// Sets every name in `names` to `status`.
pub async fn set_status(reporter: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// Keeps `names` SERVING while the database answers `SELECT 1` on a connection
/// of its own (so a saturated pool cannot fail the probe), NOT_SERVING within
/// `interval + timeout` of losing it, and NOT_SERVING for good once `shutdown` fires.
pub async fn watch_database(
    options: PgConnectOptions,
    reporter: HealthReporter,
    names: Vec<&'static str>,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut conn: Option<PgConnection> = None;
    let mut last: Option<ServingStatus> = None;
    loop {
        let ok = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&options).await?);
            }
            let c = conn.as_mut().expect("connected above");
            sqlx::query("SELECT 1").execute(c).await.map(|_| ())
        })
        .await;
        let status = match ok {
            Ok(Ok(())) => ServingStatus::Serving,
            _ => {
                conn = None;
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            match status {
                ServingStatus::Serving => tracing::info!("database reachable, health SERVING"),
                _ => tracing::warn!("database unreachable, health NOT_SERVING"),
            }
            last = Some(status);
        }
        if !shutdown.is_cancelled() {
            set_status(&reporter, &names, status).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    set_status(&reporter, &names, ServingStatus::NotServing).await;
}
