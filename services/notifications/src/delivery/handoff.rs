//! The consumer's shortcut to its own replica's dispatcher. The statement that
//! writes notifications and their deliveries ([`crate::db::insert`]) also
//! claims the deliveries of endpoints the dispatcher has room for, under the
//! usual lease, and once the consumer's transaction commits they are handed
//! over in memory: no wake-up through Postgres and no claim statement before
//! the first attempt. A handover that never happens (a crash, a stopping
//! dispatcher) costs time, not deliveries: the lease runs out and any replica
//! claims them again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::claim::Claimed;

/// Events whose claimed deliveries may wait for their commit at most; past it
/// (transactions that rolled back and were not applied again) the waiting
/// ones are dropped, to come due after their lease.
const MAX_WAITING: usize = 4096;

/// What the consumer may claim for the dispatcher.
#[derive(Debug, Default)]
struct Room {
    /// Whether the dispatcher takes deliveries at all (it is running and holds
    /// fewer than its limit).
    open: bool,
    /// Endpoints it has no room for: their circuit is open or their queue is full.
    refused: Vec<Uuid>,
}

/// The consumer's side: what to claim, and the claims waiting for their commit.
#[derive(Debug, Clone)]
pub(crate) struct Handoff {
    lease: Duration,
    room: Arc<Mutex<Room>>,
    waiting: Arc<Mutex<HashMap<Uuid, Vec<Claimed>>>>,
    dispatcher: mpsc::UnboundedSender<Vec<Claimed>>,
}

/// The dispatcher's side: the claims handed over, and the room it reports.
pub(crate) struct Receiver {
    room: Arc<Mutex<Room>>,
    pub(crate) handed: mpsc::UnboundedReceiver<Vec<Claimed>>,
}

/// A handoff whose claims last `lease`, and the dispatcher's end of it.
pub(crate) fn channel(lease: Duration) -> (Handoff, Receiver) {
    let (dispatcher, handed) = mpsc::unbounded_channel();
    let room = Arc::new(Mutex::new(Room::default()));
    let handoff = Handoff { lease, room: Arc::clone(&room), waiting: Arc::default(), dispatcher };
    (handoff, Receiver { room, handed })
}

impl Handoff {
    /// The lease to claim under and the endpoints not to claim for; None
    /// when the dispatcher takes nothing now.
    pub(crate) fn claim(&self) -> Option<(Duration, Vec<Uuid>)> {
        let room = self.room.lock().expect("handoff room");
        room.open.then(|| (self.lease, room.refused.clone()))
    }

    /// Keeps what the transaction applying `event_id` claimed until it commits;
    /// an event applied again (after a rollback) replaces what it claimed before.
    pub(crate) fn written(&self, event_id: Uuid, claimed: Vec<Claimed>) {
        let mut waiting = self.waiting.lock().expect("handoff waiting");
        if claimed.is_empty() {
            waiting.remove(&event_id);
            return;
        }
        if waiting.len() >= MAX_WAITING {
            tracing::debug!(
                dropped = waiting.len(),
                "claimed deliveries of uncommitted events dropped; they come due after their lease"
            );
            waiting.clear();
        }
        waiting.insert(event_id, claimed);
    }

    /// Hands what the committed events claimed to the dispatcher.
    pub(crate) fn committed(&self, event_ids: impl Iterator<Item = Uuid>) {
        let claimed: Vec<Claimed> = {
            let mut waiting = self.waiting.lock().expect("handoff waiting");
            if waiting.is_empty() {
                return;
            }
            event_ids.filter_map(|id| waiting.remove(&id)).flatten().collect()
        };
        if !claimed.is_empty() && self.dispatcher.send(claimed).is_err() {
            tracing::debug!("the dispatcher has stopped; the claimed deliveries come due after their lease");
        }
    }
}

impl Receiver {
    /// Reports the room the dispatcher has: none while `open` is false, and
    /// none for the `refused` endpoints.
    pub(crate) fn report(&self, open: bool, refused: Vec<Uuid>) {
        let mut room = self.room.lock().expect("handoff room");
        room.open = open;
        room.refused = refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(endpoint_id: Uuid) -> Claimed {
        Claimed::of_endpoint(endpoint_id)
    }

    #[test]
    fn nothing_is_claimed_until_the_dispatcher_reports_room() {
        let (handoff, receiver) = channel(Duration::from_secs(15));
        assert!(handoff.claim().is_none());
        let slow = Uuid::new_v4();
        receiver.report(true, vec![slow]);
        assert_eq!(handoff.claim(), Some((Duration::from_secs(15), vec![slow])));
        receiver.report(false, Vec::new());
        assert!(handoff.claim().is_none());
    }

    #[test]
    fn only_committed_events_hand_over_their_latest_claims() {
        let (handoff, mut receiver) = channel(Duration::from_secs(15));
        let (a, b, endpoint) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        handoff.written(a, vec![claimed(endpoint)]);
        // Applied again after the rollback: the new claim replaces the old.
        let again = claimed(endpoint);
        handoff.written(a, vec![again.clone()]);
        handoff.written(b, vec![claimed(endpoint)]);
        handoff.committed([a].into_iter());
        let handed = receiver.handed.try_recv().unwrap();
        assert_eq!(handed.iter().map(|c| c.delivery_id).collect::<Vec<_>>(), vec![again.delivery_id]);
        assert!(receiver.handed.try_recv().is_err(), "b has not committed");
        // An event applied again that claimed nothing leaves nothing to hand over.
        handoff.written(b, Vec::new());
        handoff.committed([b].into_iter());
        assert!(receiver.handed.try_recv().is_err());
    }
}
