//! Rows handed from a writer to the relay of the same process at commit, so
//! that at light load an event is published without the relay's claim
//! statement: one database round trip less between a commit and its publish.
//!
//! A handed row may go out ahead of rows the relay has not claimed only when
//! that cannot reorder an aggregate's events. The writer's statement returns
//! the outbox rows its snapshot saw ([`Seen`]), whatever their partition: an
//! event written after another of its aggregate committed sees that one, if
//! it is still pending. The relay publishes a handed row at once only when it
//! has every row seen in flight itself (published, so they go out first) and
//! no claim has reached the handed row's id. Anything else is refused, and a
//! refused row is simply claimed, like a row never handed over: a handover is
//! only ever a shortcut.

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::ownership::PendingRow;

/// The most rows waiting for the relay; beyond it, rows are claimed instead.
const MAX_WAITING: usize = 4_096;

/// The most rows a statement reports having seen; with more, its rows are claimed.
pub(crate) const SEEN_MAX: usize = 8;

/// The newest outbox rows (pending or published and not yet marked) the
/// snapshot of an appending statement held: see [`crate::statement::seen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen {
    ids: [i64; SEEN_MAX],
    len: u8,
    /// More than [`SEEN_MAX`] rows.
    more: bool,
}

impl Seen {
    /// From the ids the statement returned (up to `SEEN_MAX + 1`).
    pub(crate) fn from_ids(found: &[i64]) -> Self {
        let mut seen = Self { more: found.len() > SEEN_MAX, ..Self::default() };
        for (slot, id) in seen.ids.iter_mut().zip(found) {
            *slot = *id;
            seen.len += 1;
        }
        seen
    }

    /// From the statement's `outbox_seen` column: NULL when the statement did
    /// not look (its writer had no relay to hand rows to), and then the rows
    /// are never handed over, only claimed.
    pub(crate) fn of_column(found: Option<&[i64]>) -> Self {
        found.map_or(Self { more: true, ..Self::default() }, Self::from_ids)
    }

    /// Whether every row seen is among `known` (and there were not too many to tell).
    fn all_in(&self, known: &HashSet<i64>) -> bool {
        !self.more && self.ids[..usize::from(self.len)].iter().all(|id| known.contains(id))
    }
}

/// A committed row handed to the relay.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) row: PendingRow,
    pub(crate) partition: i16,
    pub(crate) seen: Seen,
}

/// What writers leave for the relay: rows handed over, and whether something
/// else (a commit not handed over, a NOTIFY, a refused handover) wants a claim.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    waiting: Mutex<VecDeque<Handed>>,
    claim_wanted: AtomicBool,
}

impl Handover {
    /// Queues `rows`; false when the queue is full (they are then claimed).
    pub(crate) fn offer(&self, rows: impl IntoIterator<Item = Handed>) -> bool {
        let mut waiting = self.waiting.lock().expect("handover lock");
        if waiting.len() >= MAX_WAITING {
            return false;
        }
        waiting.extend(rows);
        true
    }

    pub(crate) fn want_claim(&self) {
        self.claim_wanted.store(true, Ordering::Release);
    }

    /// Everything waiting, and whether a claim was wanted; both are reset.
    pub(crate) fn take(&self) -> (Vec<Handed>, bool) {
        let rows = std::mem::take(&mut *self.waiting.lock().expect("handover lock")).into();
        (rows, self.claim_wanted.swap(false, Ordering::AcqRel))
    }

    /// Drops what waits (ownership is changing): a claim takes those rows.
    pub(crate) fn discard(&self) {
        if !std::mem::take(&mut *self.waiting.lock().expect("handover lock")).is_empty() {
            self.want_claim();
        }
    }
}

/// The relay's view when it takes handed rows.
pub(crate) struct Taking<'a> {
    /// Partitions the relay claims from.
    pub(crate) owned: &'a BTreeSet<i16>,
    /// The newest id any claim of this connection returned.
    pub(crate) claimed_up_to: i64,
    /// Rows published and not yet marked.
    pub(crate) outstanding: HashSet<i64>,
    /// Whether the relay takes handed rows at all now (light load, nothing
    /// else in flight, not stopping or about to share partitions).
    pub(crate) open: bool,
}

/// Splits `handed` into the rows to publish now, in id order, and whether
/// any row was refused (and must be claimed). Rows of partitions the relay
/// does not own are left to their owner, which the writer has woken.
pub(crate) fn accept(mut handed: Vec<Handed>, mut taking: Taking<'_>) -> (Vec<PendingRow>, bool) {
    handed.sort_by_key(|h| h.row.id);
    let mut accepted = Vec::new();
    let mut refused = false;
    for h in handed {
        if !taking.owned.contains(&h.partition) {
            continue;
        }
        // After one refusal, later rows would overtake it: all go to the claim.
        let known = h.seen.all_in(&taking.outstanding);
        if refused || !taking.open || h.row.id <= taking.claimed_up_to || !known {
            refused = true;
            continue;
        }
        taking.claimed_up_to = h.row.id;
        taking.outstanding.insert(h.row.id);
        accepted.push(h.row);
    }
    (accepted, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(id: i64, partition: i16, seen: &[i64]) -> Handed {
        Handed { row: PendingRow::blank(id), partition, seen: Seen::from_ids(seen) }
    }

    fn ids(rows: &[PendingRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    fn taking<'a>(owned: &'a BTreeSet<i16>, claimed_up_to: i64, outstanding: &[i64]) -> Taking<'a> {
        Taking { owned, claimed_up_to, outstanding: outstanding.iter().copied().collect(), open: true }
    }

    #[test]
    fn a_row_with_nothing_before_it_goes_out_and_so_do_the_rest_of_its_statement() {
        let owned = BTreeSet::from([1, 2]);
        let (rows, refused) = accept(vec![handed(12, 2, &[]), handed(11, 1, &[])], taking(&owned, 10, &[]));
        assert_eq!(ids(&rows), [11, 12]);
        assert!(!refused);
    }

    #[test]
    fn a_statement_that_did_not_look_lets_nothing_through() {
        let known: HashSet<i64> = [1, 2].into_iter().collect();
        assert!(Seen::of_column(Some(&[])).all_in(&known), "it looked and saw nothing");
        assert!(Seen::of_column(Some(&[2, 1])).all_in(&known));
        assert!(!Seen::of_column(None).all_in(&known), "it did not look");
        assert!(!Seen::of_column(None).all_in(&HashSet::new()));
    }

    #[test]
    fn rows_seen_in_flight_let_a_row_through_but_one_not_claimed_does_not() {
        let owned = BTreeSet::from([1]);
        let (rows, refused) = accept(vec![handed(20, 1, &[19, 17])], taking(&owned, 19, &[17, 19]));
        assert_eq!(ids(&rows), [20]);
        assert!(!refused);
        // Row 18 committed after the claim that took 19, and before 20 was
        // written: 20 may be the next event of 18's aggregate, so it waits.
        let (rows, refused) = accept(vec![handed(20, 1, &[19, 18, 17])], taking(&owned, 19, &[17, 19]));
        assert!(rows.is_empty());
        assert!(refused);
        // Too many rows seen to tell.
        let many: Vec<i64> = (1..=SEEN_MAX as i64 + 1).rev().collect();
        let (rows, refused) = accept(vec![handed(20, 1, &many)], taking(&owned, 19, &many));
        assert!(rows.is_empty());
        assert!(refused);
    }

    #[test]
    fn a_row_a_claim_already_reached_is_not_published_twice() {
        let owned = BTreeSet::from([1]);
        let (rows, refused) = accept(vec![handed(20, 1, &[])], taking(&owned, 20, &[]));
        assert!(rows.is_empty());
        assert!(refused);
    }

    #[test]
    fn after_a_refusal_no_later_row_overtakes_it() {
        let owned = BTreeSet::from([1]);
        // 30 is refused (25, which it saw, is unknown); 31, from a later statement
        // that saw 30 handed, must not go out before 30 is claimed.
        let (rows, refused) = accept(vec![handed(31, 1, &[30]), handed(30, 1, &[25])], taking(&owned, 0, &[]));
        assert!(rows.is_empty());
        assert!(refused);
    }

    #[test]
    fn rows_of_other_partitions_are_left_to_their_owner_and_a_closed_relay_takes_none() {
        let owned = BTreeSet::from([1]);
        let (rows, refused) = accept(vec![handed(5, 7, &[]), handed(6, 1, &[])], taking(&owned, 0, &[]));
        assert_eq!(ids(&rows), [6]);
        assert!(!refused);
        let closed = Taking { open: false, ..taking(&owned, 0, &[]) };
        let (rows, refused) = accept(vec![handed(6, 1, &[])], closed);
        assert!(rows.is_empty());
        assert!(refused);
    }

    #[test]
    fn a_full_queue_refuses_and_discarding_asks_for_a_claim() {
        let handover = Handover::default();
        assert!(handover.offer((0..MAX_WAITING as i64).map(|id| handed(id, 0, &[]))));
        assert!(!handover.offer([handed(1, 0, &[])]));
        handover.discard();
        let (rows, wanted) = handover.take();
        assert!(rows.is_empty());
        assert!(wanted);
    }
}
