//! The relay's two connections, broker first: partitions are held only while
//! they can be published. Losing either drops what is in flight (rows
//! published without a mark stay pending and go out again).

use std::{collections::VecDeque, time::Duration};

use infra::backoff::Backoff;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Relay, batch::Batch, plan::Plan};
use crate::{message::LocalRelay, ownership::Ownership, publisher::Publisher};

#[derive(Default)]
pub(super) struct Links {
    pub(super) db: Option<Ownership>,
    pub(super) broker: Option<Publisher>,
}

/// The database failed mid-pass: the relay drops the connection, and with it
/// its partitions, and connects again.
pub(super) enum Lost {
    Sharing(sqlx::Error),
    Claiming(sqlx::Error),
    /// Confirmed but not marked: they will be published again (at least once).
    Marking {
        err: sqlx::Error,
        rows: usize,
    },
}

impl Relay {
    /// Connects whichever side is down; false when one could not be reached
    /// (after a backoff delay, or once `shutdown` fires).
    pub(super) async fn connect(
        &self,
        links: &mut Links,
        in_flight: &mut VecDeque<Batch>,
        plan: &mut Plan,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        if links.broker.as_ref().is_some_and(|b| !b.is_connected()) {
            links.broker = None;
        }
        if links.broker.is_none() {
            in_flight.clear();
            let config = &self.config;
            match Publisher::connect(config.amqp_url.expose_secret(), &config.app_id, &config.exchanges).await {
                Ok(publisher) => {
                    tracing::info!("relay connected to the broker");
                    links.broker = Some(publisher);
                }
                Err(err) => {
                    // A relay that cannot reach the broker lets its peers take its partitions.
                    if let Some(ownership) = links.db.take() {
                        ownership.close().await;
                    }
                    self.report(false, false, 0);
                    tracing::warn!(error = format!("{err:#}"), "relay cannot reach the broker; events stay pending");
                    self.metrics.retry("broker_unreachable");
                    sleep_or_stop(backoff.next_delay(), shutdown).await;
                    return false;
                }
            }
        }
        if links.db.is_none() {
            in_flight.clear();
            self.local.set_owned([]);
            self.local.handover.discard();
            match Ownership::connect(&self.options, self.local.clone()).await {
                Ok(ownership) => {
                    tracing::info!(relay = ownership.instance(), "relay connected to the database");
                    links.db = Some(ownership);
                    plan.connected(Instant::now());
                }
                Err(err) => {
                    self.report(false, true, 0);
                    tracing::warn!(error = %err, "relay cannot reach the database");
                    self.metrics.retry("database_unreachable");
                    sleep_or_stop(backoff.next_delay(), shutdown).await;
                    return false;
                }
            }
        }
        true
    }

    /// Drops the database connection after `lost`; the next pass connects again.
    pub(super) fn lost_database(&self, links: &mut Links, lost: Lost) {
        match lost {
            Lost::Sharing(err) => tracing::warn!(error = %err, "relay lost the database while sharing partitions"),
            Lost::Claiming(err) => tracing::warn!(error = %err, "relay lost the database while claiming"),
            Lost::Marking { err, rows } => {
                tracing::warn!(error = %err, rows, "relay could not mark confirmed rows");
            }
        }
        links.db = None;
    }

    /// The broker channel broke for `reason`: unconfirmed rows stay pending,
    /// and the broker is connected again after a backoff delay.
    pub(super) async fn lost_broker(
        &self,
        links: &mut Links,
        in_flight: &mut VecDeque<Batch>,
        reason: &str,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) {
        tracing::warn!(reason = %reason, "relay lost the broker channel; unconfirmed rows stay pending");
        if let Some(publisher) = links.broker.take() {
            publisher.close().await;
        }
        in_flight.clear();
        self.report(true, false, links.db.as_ref().map_or(0, Ownership::owned));
        self.metrics.retry("channel_broken");
        sleep_or_stop(backoff.next_delay(), shutdown).await;
    }

    /// Closes both connections, giving every partition back.
    pub(super) async fn disconnect(&self, links: Links) {
        if let Some(publisher) = links.broker {
            publisher.close().await;
        }
        self.local.set_owned([]);
        if let Some(ownership) = links.db {
            ownership.close().await;
        }
    }
}

pub(super) async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Turns NOTIFYs on `channel` into wake-ups; a reconnect also wakes the relay
/// since notifications may have been missed meanwhile.
pub(super) async fn listen(options: PgConnectOptions, channel: String, local: LocalRelay, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let connected = async {
            let mut listener = PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(options.clone())).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(error = %err, "outbox listener cannot connect");
                sleep_or_stop(backoff.next_delay(), &stop).await;
                continue;
            }
        };
        backoff.reset();
        local.wake();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => local.wake(),
                    // None: the connection dropped and will be re-established.
                    Ok(None) => local.wake(),
                    Err(err) => {
                        tracing::debug!(error = %err, "outbox listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}
