//! Delivery channels: notifications delivered to webhook endpoints (an HTTP
//! POST signed as Standard Webhooks specify) and by email (SMTP). The
//! deliveries are written with their notification ([`crate::db::insert`]);
//! the [`dispatcher`] sends them and retries; [`grpc`] serves
//! `pulse.notifications.v1.DeliveryService`.

mod attempt;
mod claim;
pub mod config;
pub(crate) mod db;
mod dispatcher;
mod email;
mod endpoints;
pub(crate) mod grpc;
mod handoff;
mod metrics;
mod page;
mod record;
pub mod secret;
mod validate;
mod webhook;

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgConnectOptions};
use telemetry::metrics::Registry;
use tokio_util::sync::CancellationToken;

pub(crate) use claim::Claimed;
pub use config::DeliveryConfig;
pub(crate) use handoff::Handoff;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted (2xx, or the mail taken by SMTP).
    Delivered { status_code: Option<u16> },
    /// Worth another attempt (timeout, connection error, 408, 429, 5xx, SMTP 4xx).
    Retry { status_code: Option<u16>, error: String, retry_after: Option<Duration> },
    /// Refused for good (other 4xx, SMTP 5xx, a private address).
    Failed { status_code: Option<u16>, error: String },
}

impl Outcome {
    pub(crate) fn retry(status_code: Option<u16>, error: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self::Retry { status_code, error: error.into(), retry_after }
    }

    pub(crate) fn failed(status_code: Option<u16>, error: impl Into<String>) -> Self {
        Self::Failed { status_code, error: error.into() }
    }
}

/// Starts the dispatcher in the background, on connections of its own made
/// with `listen_options`; it stops when `pool` is closed (the service's last
/// step when it stops), giving back what it claimed and did not send and
/// letting the attempts in flight finish first. A delivery whose outcome
/// cannot be recorded then comes due again after its lease, as after a crash.
/// Returns the consumer's shortcut to it.
pub(crate) fn spawn(
    pool: PgPool,
    listen_options: PgConnectOptions,
    config: DeliveryConfig,
    registry: &Registry,
) -> anyhow::Result<Handoff> {
    let metrics = metrics::DeliveryMetrics::new(registry);
    let dispatcher = Arc::new(dispatcher::Dispatcher::new(listen_options, config, metrics)?);
    let (handoff, handed) = handoff::channel(dispatcher.lease());
    let stop = CancellationToken::new();
    let closing = pool;
    let stop_on_close = stop.clone();
    tokio::spawn(async move {
        closing.close_event().await;
        stop_on_close.cancel();
    });
    tokio::spawn(dispatcher.run(handed, stop));
    Ok(handoff)
}
