//! The durable timer sweep: every tick, sagas whose step deadline or
//! compensation re-send time has passed are taken (`FOR UPDATE SKIP LOCKED`,
//! a bounded batch, so several replicas share them without waiting on each
//! other) and moved on in one transaction each batch. Each tick also samples
//! the saga gauges.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use telemetry::tracecontext::TraceParent;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    state::Input,
    store::{Applied, Request, Store},
};

/// Sagas one sweep moves on at most, in one transaction.
pub const BATCH: i64 = 100;

/// Runs the sweep every `interval` until `stop`.
pub async fn run(pool: PgPool, store: Store, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A full batch means more are due: sweep again at once.
        loop {
            match sweep(&pool, &store).await {
                Ok(moved) if moved as i64 >= BATCH && !stop.is_cancelled() => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "saga timer sweep failed; retrying next tick");
                    break;
                }
            }
        }
        if let Err(err) = sample(&pool, &store).await {
            tracing::debug!(error = %err, "saga gauges not sampled");
        }
    }
}

/// Moves on every saga due (at most [`BATCH`]); returns how many were due.
pub async fn sweep(pool: &PgPool, store: &Store) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Vec<(Uuid, bool, bool)> = sqlx::query_as(
        "SELECT order_id, COALESCE(deadline_at <= now(), false), COALESCE(resend_at <= now(), false) FROM sagas \
         WHERE deadline_at <= now() OR resend_at <= now() \
         ORDER BY LEAST(deadline_at, resend_at) LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let traceparent = TraceParent::new_root().to_string();
    let fired: Vec<Request<'_>> = due
        .iter()
        .flat_map(|(order_id, deadline, resend)| {
            [(*deadline, &Input::DeadlinePassed), (*resend, &Input::ResendDue)]
                .into_iter()
                .filter(|(due, _)| *due)
                .map(|(_, input)| Request { order_id: *order_id, input, traceparent: &traceparent })
        })
        .collect();
    let applied = store.apply_all(&mut tx, &fired).await?;
    for (Request { order_id, input, .. }, applied) in fired.iter().zip(applied) {
        match applied {
            Applied::Moved(effects) => tracing::info!(%order_id, ?input, ?effects, "saga timer fired"),
            Applied::Ignored(reason) => tracing::debug!(%order_id, %reason, "saga timer changed nothing"),
            Applied::UnknownOrder => {}
        }
    }
    tx.commit().await?;
    Ok(due.len())
}

/// Samples the gauges: sagas running, the oldest one's age, timers due.
async fn sample(pool: &PgPool, store: &Store) -> Result<(), sqlx::Error> {
    let (running, oldest, due): (i64, Option<DateTime<Utc>>, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sagas WHERE ended_at IS NULL), \
                (SELECT min(started_at) FROM sagas WHERE ended_at IS NULL), \
                (SELECT count(*) FROM sagas WHERE deadline_at <= now()) \
                + (SELECT count(*) FROM sagas WHERE resend_at <= now())",
    )
    .fetch_one(pool)
    .await?;
    let age = oldest.map_or(0.0, |at| (Utc::now() - at).to_std().unwrap_or_default().as_secs_f64());
    store.metrics.sampled(running, age, due);
    Ok(())
}
