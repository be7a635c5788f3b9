//! A pool of Postgres connections for one-statement requests, without the
//! round trip sqlx's pool spends on every release.
//!
//! `sqlx::Pool` pings each connection as it comes back (a Sync message and a
//! wait for ReadyForQuery), so a request whose work is one statement pays two
//! round trips, and the server wakes twice. A [`Lane`] hands connections back
//! only when the caller says the statement finished ([`LaneConnection::done`]);
//! a connection dropped any other way (an error, a cancelled request, a
//! panic) is closed instead, so a half-read response is never reused. That
//! is the same guarantee the ping gave, without asking the server.
//!
//! A restart of the server (or `pg_terminate_backend`) kills every session at
//! once, and a connection learns of it only when its next statement fails. A
//! connection whose session is gone is closed, never handed back (see
//! [`crate::pg::is_session_gone`]); and since its idle peers are most likely
//! dead too, each connection that was idle before such a loss is checked
//! with a ping the next time it is checked out, so the retry [`Lane::read`]
//! makes (and every later request) gets a live connection. Between losses no
//! checkout pays that round trip.
//!
//! When no connection is idle, a checkout opens one but takes whichever comes
//! first, that one or a connection another request hands back: under a step
//! in load, setting up a connection (tens of milliseconds on a busy server)
//! would otherwise be added to every request that arrived meanwhile.

mod connection;
mod opening;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::sync::{Notify, Semaphore};

pub use self::connection::LaneConnection;
use self::opening::{Opening, reserve};
use crate::pg::PoolSettings;

/// Connections older than this are closed when handed back, so none lives
/// forever (server-side memory, a moved primary behind a stable address).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Up to `max_connections` connections, `min_connections` of them opened at start.
#[derive(Clone)]
pub struct Lane {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    /// Signalled whenever a connection goes idle or one is closed.
    returned: Notify,
    /// Checkouts: at most `max` connections out at once.
    slots: Arc<Semaphore>,
    /// Connections open or being opened: at most `max`.
    total: AtomicUsize,
    /// Connections found dead so far; an idle connection last known live
    /// before the latest of them is pinged before it is handed out.
    losses: AtomicU64,
    max: usize,
    acquire_timeout: Duration,
}

impl Inner {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn park(&self, idle: Idle) {
        if self.slots.is_closed() {
            // Opened in the background after the lane closed.
            self.forget();
            return;
        }
        self.idle().push(idle);
        self.returned.notify_one();
    }

    /// A connection closed (or never opened): make room for another.
    fn forget(&self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        self.returned.notify_one();
    }

    fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    /// A connection just opened, live as of now.
    fn fresh(&self, conn: PgConnection) -> Idle {
        Idle { conn, opened: Instant::now(), live_at: self.losses() }
    }

    /// `idle` if it is live: checked with a ping when a connection was found
    /// dead since it was last known live. A dead one is closed, and so is
    /// one whose ping is cut short (the checkout timed out or was cancelled).
    async fn live(&self, idle: Idle) -> Option<Idle> {
        let losses = self.losses();
        if idle.live_at >= losses {
            return Some(idle);
        }
        let mut checking = Checking { idle: Some(idle), lane: self };
        let conn = &mut checking.idle.as_mut().expect("present until the check ends").conn;
        if conn.ping().await.is_err() {
            return None;
        }
        let mut idle = checking.idle.take().expect("present until the check ends");
        idle.live_at = losses;
        Some(idle)
    }
}

/// A connection being pinged: closed, and its place freed, unless the ping
/// answers.
struct Checking<'a> {
    idle: Option<Idle>,
    lane: &'a Inner,
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        if self.idle.take().is_some() {
            self.lane.forget();
        }
    }
}

struct Idle {
    conn: PgConnection,
    opened: Instant,
    /// [`Inner::losses`] when the connection was last known live.
    live_at: u64,
}

impl Lane {
    /// Opens the minimum of connections; fails if the first cannot be opened.
    pub async fn open(options: PgConnectOptions, settings: &PoolSettings) -> Result<Self, sqlx::Error> {
        let max = settings.max_connections.max(1) as usize;
        let lane = Self {
            inner: Arc::new(Inner {
                options,
                idle: Mutex::new(Vec::with_capacity(max)),
                returned: Notify::new(),
                slots: Arc::new(Semaphore::new(max)),
                total: AtomicUsize::new(0),
                losses: AtomicU64::new(0),
                max,
                acquire_timeout: settings.acquire_timeout,
            }),
        };
        for _ in 0..(settings.min_connections as usize).min(max) {
            let conn = PgConnection::connect_with(&lane.inner.options).await?;
            lane.inner.total.fetch_add(1, Ordering::AcqRel);
            lane.inner.park(lane.inner.fresh(conn));
        }
        Ok(lane)
    }

    /// Where the connections lead.
    pub fn options(&self) -> &PgConnectOptions {
        &self.inner.options
    }

    /// An idle connection, or a new one while fewer than `max_connections` are
    /// out. Waits at most the acquire timeout: `PoolTimedOut` after that.
    pub async fn acquire(&self) -> Result<LaneConnection, sqlx::Error> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.acquire_timeout;
        let slot = tokio::time::timeout_at(deadline, Arc::clone(&inner.slots).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let mut opening = Opening { connecting: None, lane: Arc::clone(inner) };
        let outcome = loop {
            // Registered before looking, so a connection handed back in
            // between still wakes us.
            let returned = inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let popped = inner.idle().pop();
            if let Some(idle) = popped {
                match tokio::time::timeout_at(deadline, inner.live(idle)).await {
                    Ok(Some(idle)) => break Ok(idle),
                    // Dead: closed, so there is room to open another.
                    Ok(None) => continue,
                    // The ping was cut short: the connection is closed.
                    Err(_) => break Err(sqlx::Error::PoolTimedOut),
                }
            }
            if opening.connecting.is_none() && reserve(&inner.total, inner.max) {
                let options = inner.options.clone();
                opening.connecting = Some(Box::pin(async move { PgConnection::connect_with(&options).await }));
            }
            let connect = async {
                match opening.connecting.as_mut() {
                    Some(connecting) => connecting.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                opened = connect => {
                    opening.connecting = None;
                    break opened.map(|conn| inner.fresh(conn)).inspect_err(|_| inner.forget());
                }
                _ = &mut returned => {}
                _ = tokio::time::sleep_until(deadline) => break Err(sqlx::Error::PoolTimedOut),
            }
        };
        drop(opening);
        Ok(LaneConnection { idle: Some(outcome?), lane: Arc::clone(inner), _slot: slot })
    }

    /// Runs `statement` on a connection and hands the connection back; if the
    /// connection's session turns out to be gone (see
    /// [`crate::pg::is_session_gone`]), runs it once more on a live one, so a
    /// restart of the server costs the caller a reconnection, not an error.
    /// Only for statements that may run twice, such as reads.
    pub async fn read<T, F>(&self, mut statement: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut conn = self.acquire().await?;
        let result = statement(&mut conn).await;
        let gone = result.as_ref().is_err_and(crate::pg::is_session_gone);
        conn.settle(&result);
        if !gone {
            return result;
        }
        let mut conn = self.acquire().await?;
        let result = statement(&mut conn).await;
        conn.settle(&result);
        result
    }

    /// Connections found dead so far (their session had ended).
    pub fn losses(&self) -> u64 {
        self.inner.losses()
    }

    /// Connections open and idle right now.
    pub fn idle_count(&self) -> usize {
        self.inner.idle().len()
    }

    /// Connections open, or being opened, right now.
    pub fn size(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }

    /// Closes the idle connections and refuses new checkouts; connections
    /// still out are closed as they come back.
    pub async fn close(&self) {
        self.inner.slots.close();
        let idle = std::mem::take(&mut *self.inner.idle());
        for Idle { conn, .. } in idle {
            self.inner.forget();
            let _ = conn.close().await;
        }
    }
}
