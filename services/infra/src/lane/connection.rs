//! The connection a checkout hands out, and how it goes back.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, atomic::Ordering},
};

use sqlx::{Connection, PgConnection};
use tokio::sync::OwnedSemaphorePermit;

use super::{Idle, Inner, MAX_LIFETIME};

/// A connection out of a [`Lane`]. Call [`Self::done`] once its statement has
/// completed (successfully or with an error the server reported) to hand it back;
/// dropped without that, it is closed.
pub struct LaneConnection {
    pub(super) idle: Option<Idle>,
    pub(super) lane: Arc<Inner>,
    pub(super) _slot: OwnedSemaphorePermit,
}

impl LaneConnection {
    /// Hands the connection back after a statement that returned `result`:
    /// kept when it succeeded or the server rejected the statement (the
    /// exchange then ended cleanly), closed after any other error (I/O,
    /// protocol, decoding) and after the server ended the session (`57P01`
    /// and the like arrive as database errors, but the backend is gone). A
    /// session found gone makes the lane check its idle connections before
    /// handing them out again.
    pub fn settle<T>(self, result: &Result<T, sqlx::Error>) {
        match result {
            Err(err) if crate::pg::is_session_gone(err) => {
                self.lane.losses.fetch_add(1, Ordering::AcqRel);
            }
            Ok(_) | Err(sqlx::Error::Database(_)) => self.done(),
            // Dropped: closed.
            Err(_) => {}
        }
    }

    /// Hands the connection back for the next request, unless it is inside a
    /// transaction, the lane is closing or the connection has lived its time.
    pub fn done(mut self) {
        let Some(idle) = self.idle.take() else { return };
        let reusable =
            !idle.conn.is_in_transaction() && !self.lane.slots.is_closed() && idle.opened.elapsed() < MAX_LIFETIME;
        if reusable {
            self.lane.park(idle);
            return;
        }
        self.lane.forget();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Its last response was read in full: say goodbye properly.
            runtime.spawn(async move {
                let _ = idle.conn.close().await;
            });
        }
    }
}

impl Drop for LaneConnection {
    fn drop(&mut self) {
        // Not handed back: the connection closes with it.
        if self.idle.take().is_some() {
            self.lane.forget();
        }
    }
}

impl Deref for LaneConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.idle.as_ref().expect("present until done or dropped").conn
    }
}

impl DerefMut for LaneConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.idle.as_mut().expect("present until done or dropped").conn
    }
}
