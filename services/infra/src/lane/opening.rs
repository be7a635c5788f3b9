//! Opening a connection for a checkout, finished in the background when the
//! checkout no longer waits for it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use futures::future::BoxFuture;
use sqlx::PgConnection;

use super::Inner;

/// A connection being opened for a checkout. Should the checkout be served by
/// a connection handed back, run out of time or be cancelled, the opening
/// finishes in the background and the connection waits idle.
pub(super) struct Opening {
    pub(super) connecting: Option<BoxFuture<'static, Result<PgConnection, sqlx::Error>>>,
    pub(super) lane: Arc<Inner>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        let Some(connecting) = self.connecting.take() else { return };
        let lane = Arc::clone(&self.lane);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match connecting.await {
                        Ok(conn) => lane.park(lane.fresh(conn)),
                        Err(_) => lane.forget(),
                    }
                });
            }
            Err(_) => lane.forget(),
        }
    }
}

/// Takes one of `max` places in `total`, if one is free.
pub(super) fn reserve(total: &AtomicUsize, max: usize) -> bool {
    total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < max).then_some(open + 1)).is_ok()
}
