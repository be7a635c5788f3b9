//! The rebalance plan: what a relay does with its partition locks, given the
//! partitions it claims from and what Postgres's lock table shows.
//!
//! Postgres advisory locks stack: a session that takes a lock it already holds
//! holds it twice, and one unlock then leaves it held. A relay that did so
//! would stop claiming from a partition that no other relay can take: its
//! events would never be published. So the plan never tries a partition that
//! this relay's session holds, releases completely what it gives back, and
//! repairs any difference between what the relay claims from and what its
//! session holds. Pure, so that any sequence of joins, leaves and crashes can
//! be checked (see the tests).

use std::collections::BTreeSet;

use crate::message::PARTITIONS;

/// Partition locks as `pg_locks` shows them, seen from one relay's session.
#[derive(Debug, Default, Clone)]
pub(crate) struct LockTable {
    /// Partitions locked by this session.
    pub(crate) mine: BTreeSet<i16>,
    /// Partitions locked by other sessions.
    pub(crate) others: BTreeSet<i16>,
    /// Live relays (presence locks), this one included.
    pub(crate) relays: usize,
}

/// What one rebalance does, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Locked by this session but not claimed from: released completely.
    pub(crate) repair: Vec<i16>,
    /// Claimed from but not locked by this session: no longer claimed from.
    pub(crate) forget: Vec<i16>,
    /// Owned beyond the share: released completely.
    pub(crate) release: Vec<i16>,
    /// Partitions no other session holds and this one does not claim from
    /// (those to repair are released first), tried in this order until
    /// `wanted` are taken.
    pub(crate) candidates: Vec<i16>,
    pub(crate) wanted: usize,
}

/// How many partitions each of `relays` live relays aims at.
pub(crate) fn share(relays: usize) -> usize {
    (PARTITIONS as usize).div_ceil(relays.max(1))
}

/// The plan for a relay that claims from `owned`, facing `table`. `start` is
/// where it begins looking for free partitions, so that relays joining
/// together do not all try partition 0 first.
pub(crate) fn plan(owned: &BTreeSet<i16>, table: &LockTable, start: i16) -> Plan {
    let held: BTreeSet<i16> = owned.intersection(&table.mine).copied().collect();
    let share = share(table.relays);
    let wanted = share.saturating_sub(held.len());
    let candidates = if wanted == 0 {
        Vec::new()
    } else {
        (0..PARTITIONS)
            .map(|i| (start.rem_euclid(PARTITIONS) + i) % PARTITIONS)
            .filter(|p| !held.contains(p) && !table.others.contains(p))
            .collect()
    };
    Plan {
        repair: table.mine.difference(owned).copied().collect(),
        forget: owned.difference(&table.mine).copied().collect(),
        release: held.iter().rev().take(held.len().saturating_sub(share)).copied().collect(),
        candidates,
        wanted,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Postgres's advisory locks, as far as relays use them: a holder and how
    /// many times it took the lock.
    #[derive(Default)]
    struct Locks(BTreeMap<i16, (usize, u32)>);

    impl Locks {
        fn try_lock(&mut self, relay: usize, partition: i16) -> bool {
            match self.0.get_mut(&partition) {
                None => {
                    self.0.insert(partition, (relay, 1));
                    true
                }
                Some((holder, count)) if *holder == relay => {
                    *count += 1;
                    true
                }
                Some(_) => false,
            }
        }

        fn release_completely(&mut self, relay: usize, partition: i16) {
            if self.0.get(&partition).is_some_and(|(holder, _)| *holder == relay) {
                self.0.remove(&partition);
            }
        }

        fn drop_session(&mut self, relay: usize) {
            self.0.retain(|_, (holder, _)| *holder != relay);
        }

        fn table(&self, relay: usize, relays: usize) -> LockTable {
            let (mine, others) = self.0.iter().partition::<Vec<_>, _>(|(_, (holder, _))| *holder == relay);
            LockTable {
                mine: mine.into_iter().map(|(p, _)| *p).collect(),
                others: others.into_iter().map(|(p, _)| *p).collect(),
                relays,
            }
        }
    }

    /// Relays as the relay loop drives them: each claims from `owned`.
    #[derive(Default)]
    struct Cluster {
        locks: Locks,
        relays: BTreeMap<usize, (BTreeSet<i16>, i16)>,
        next_id: usize,
    }

    impl Cluster {
        fn join(&mut self, start: i16) {
            self.relays.insert(self.next_id, (BTreeSet::new(), start));
            self.next_id += 1;
        }

        /// A leave and a crash look the same to Postgres: the session ends.
        fn leave(&mut self, pick: usize) {
            if let Some(&relay) = self.relays.keys().nth(pick % self.relays.len().max(1)) {
                self.relays.remove(&relay);
                self.locks.drop_session(relay);
            }
        }

        /// The lock is still held, but the relay no longer claims from it: what
        /// a stacked lock released once leaves behind.
        fn leak(&mut self, pick: usize) {
            let count = self.relays.len().max(1);
            if let Some((_, (owned, _))) = self.relays.iter_mut().nth(pick % count)
                && let Some(&p) = owned.iter().next()
            {
                owned.remove(&p);
            }
        }

        fn rebalance(&mut self, pick: usize) {
            let Some(&relay) = self.relays.keys().nth(pick % self.relays.len().max(1)) else { return };
            let count = self.relays.len();
            let (owned, start) = self.relays.get_mut(&relay).unwrap();
            let plan = plan(owned, &self.locks.table(relay, count), *start);
            for p in plan.repair.iter().chain(&plan.release) {
                self.locks.release_completely(relay, *p);
                owned.remove(p);
            }
            for p in &plan.forget {
                owned.remove(p);
            }
            let mut taken = 0;
            for p in plan.candidates {
                if taken == plan.wanted {
                    break;
                }
                assert!(!owned.contains(&p), "tried partition {p}, which it claims from");
                if self.locks.try_lock(relay, p) {
                    assert_eq!(self.locks.0[&p].1, 1, "partition {p} locked twice by one relay");
                    owned.insert(p);
                    taken += 1;
                }
            }
        }

        /// At every moment: no partition is claimed from by two relays.
        fn assert_disjoint(&self) {
            let mut seen = BTreeSet::new();
            for (owned, _) in self.relays.values() {
                for p in owned {
                    assert!(seen.insert(*p), "partition {p} claimed from by two relays");
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join(i16),
        Leave(usize),
        Leak(usize),
        Rebalance(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => any::<i16>().prop_map(Step::Join),
            1 => any::<usize>().prop_map(Step::Leave),
            1 => any::<usize>().prop_map(Step::Leak),
            3 => any::<usize>().prop_map(Step::Rebalance),
        ]
    }

    proptest! {
        /// Any sequence of joins, leaves, crashes and leaked locks, followed by
        /// a few rounds of rebalancing, ends with every partition owned by
        /// exactly one relay, locked by that relay's session once, and each
        /// relay within one of its share.
        #[test]
        fn any_history_ends_with_every_partition_owned_exactly_once(
            steps in proptest::collection::vec(step(), 0..60),
            survivors in 1usize..6,
        ) {
            let mut cluster = Cluster::default();
            for step in steps {
                match step {
                    Step::Join(start) => cluster.join(start),
                    Step::Leave(pick) => cluster.leave(pick),
                    Step::Leak(pick) => cluster.leak(pick),
                    Step::Rebalance(pick) => cluster.rebalance(pick),
                }
                cluster.assert_disjoint();
            }
            while cluster.relays.len() < survivors {
                cluster.join(cluster.next_id as i16 * 17);
            }
            // Each relay rebalances in turn: one round to give back, one to take.
            for _ in 0..3 {
                for pick in 0..cluster.relays.len() {
                    cluster.rebalance(pick);
                    cluster.assert_disjoint();
                }
            }
            let mut claimed = BTreeSet::new();
            for (relay, (owned, _)) in &cluster.relays {
                let locked = cluster.locks.table(*relay, cluster.relays.len()).mine;
                prop_assert_eq!(owned, &locked, "relay {} claims from what its session holds", relay);
                prop_assert!(owned.len() <= share(cluster.relays.len()));
                claimed.extend(owned.iter().copied());
            }
            prop_assert_eq!(claimed.len(), PARTITIONS as usize, "every partition has an owner");
            prop_assert!(cluster.locks.0.values().all(|(_, count)| *count == 1));
        }
    }

    #[test]
    fn a_relay_never_tries_what_its_session_holds() {
        let owned: BTreeSet<i16> = (0..10).collect();
        let table = LockTable { mine: (0..12).collect(), others: (40..64).collect(), relays: 2 };
        let plan = plan(&owned, &table, 0);
        assert_eq!(plan.repair, vec![10, 11], "held but not claimed from: released");
        assert!(plan.forget.is_empty());
        assert_eq!(plan.wanted, 22);
        assert!(plan.candidates.iter().all(|p| (10..40).contains(p)), "{:?}", plan.candidates);
    }

    #[test]
    fn a_relay_over_its_share_gives_back_its_highest() {
        let owned: BTreeSet<i16> = (0..64).collect();
        let table = LockTable { mine: owned.clone(), others: BTreeSet::new(), relays: 3 };
        let plan = plan(&owned, &table, 5);
        assert_eq!(plan.release, (22..64).rev().collect::<Vec<i16>>());
        assert_eq!(plan.wanted, 0);
        assert!(plan.candidates.is_empty());
    }

    #[test]
    fn a_partition_whose_lock_is_gone_is_no_longer_claimed_from() {
        let owned: BTreeSet<i16> = [1, 2, 3].into();
        let table = LockTable { mine: [1, 3].into(), others: [2].into(), relays: 2 };
        let plan = plan(&owned, &table, 60);
        assert_eq!(plan.forget, vec![2]);
        assert_eq!(plan.candidates.first(), Some(&60), "free partitions from the relay's own start");
        assert!(!plan.candidates.contains(&2));
    }
}
