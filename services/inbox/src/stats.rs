//! Counters of what the consumer did, for tests, logs and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals since start; shared, cheap to update.
#[derive(Debug, Default)]
pub struct InboxStats {
    processed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    reconnects: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Events applied and committed.
    pub processed: u64,
    /// Copies acknowledged without effect because their event was already applied.
    pub duplicates: u64,
    /// Copies parked in a retry tier.
    pub retried: u64,
    /// Copies moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Broker sessions started after the first one.
    pub reconnects: u64,
}

impl InboxStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            processed: self.processed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_processed(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_forwarded(&self, retried: usize, dead_lettered: usize) {
        self.retried.fetch_add(retried as u64, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead_lettered as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
