//! What the relay does next, decided from its state and the time alone (every
//! decision takes `now`): no database, no broker, so each rule is unit-tested.

use std::time::Duration;

use infra::rate::ArrivalRate;
use tokio::time::Instant;

use super::RelayConfig;
use crate::ownership::{Claim, PendingRow};

/// How often a relay claims from the start of the outbox rather than near
/// the newest row it has claimed: the longest a row that committed late, far
/// below ids already claimed, waits.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How far below the newest id it has claimed a relay with nothing in flight
/// looks again, for rows that committed after rows with higher ids (ids are
/// taken at insert, rows become visible at commit). Looking from the start
/// instead would walk every row deleted since the last vacuum, each claim: at
/// a few thousand events a second, tens of thousands of dead index entries.
const LOOKBACK_IDS: i64 = 1_000;

/// The relay's next move once both connections are up and partitions shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Claim now, or once rows have gathered until the given time.
    Claim {
        gather_until: Option<Instant>,
    },
    Wait(Wait),
}

/// How the relay waits when it does not claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Nothing in flight: for a wake-up, at most this long (the poll, or until the next rebalance).
    Idle(Duration),
    /// For the oldest batch's confirms; `early`: a wake-up meanwhile claims beside them.
    Settle { early: bool },
}

/// How the relay carries on after a batch settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// All went well: the next failure backs off from the shortest delay.
    Reset,
    /// Refused rows come back in the next claim: back off rather than spin on them.
    BackOff,
    /// The broker channel broke: back off and reconnect to the broker.
    Reconnect,
}

/// After a settled batch: a broken channel outweighs refused rows.
pub(super) fn recovery(broken: bool, rejected: bool) -> Recovery {
    match (broken, rejected) {
        (true, _) => Recovery::Reconnect,
        (false, true) => Recovery::BackOff,
        (false, false) => Recovery::Reset,
    }
}

/// The relay's claim state, on one database connection.
#[derive(Debug)]
pub(super) struct Plan {
    batch_size: i64,
    pipeline_depth: usize,
    gather: Duration,
    gather_from_rate: f64,
    poll_interval: Duration,
    rebalance_interval: Duration,
    next_rebalance: Instant,
    next_sweep: Instant,
    /// The newest id claimed on this connection with these partitions.
    claimed_up_to: i64,
    /// Whether the last claim came back full: only a backlog is worth
    /// claiming ahead of the confirms. Caught up, the relay claims again once
    /// its batch is confirmed, so rows committed meanwhile go out together
    /// (fewer, fuller batches for the database and the broker at steady load).
    backlog: bool,
    /// While rows gather after a claim: no claim before this.
    gather_until: Option<Instant>,
    /// A commit woke the relay while a batch was in flight: its rows are
    /// claimed and published at once instead of after that batch's confirms,
    /// which at light load would add a whole confirm to their latency.
    woken: bool,
    arrivals: ArrivalRate,
}

impl Plan {
    pub(super) fn new(config: &RelayConfig, now: Instant) -> Self {
        Self {
            batch_size: config.batch_size,
            pipeline_depth: config.pipeline_depth,
            gather: config.gather,
            gather_from_rate: config.gather_from_rate,
            poll_interval: config.poll_interval,
            rebalance_interval: config.rebalance_interval,
            next_rebalance: now,
            next_sweep: now,
            claimed_up_to: 0,
            backlog: false,
            gather_until: None,
            woken: false,
            arrivals: ArrivalRate::default(),
        }
    }

    /// A new database connection, with nothing in flight: partitions are
    /// shared at once, and their rows looked for from the start.
    pub(super) fn connected(&mut self, now: Instant) {
        self.next_rebalance = now;
        self.claimed_up_to = 0;
        self.backlog = false;
        self.gather_until = None;
        self.woken = false;
    }

    pub(super) fn rebalance_due(&self, now: Instant) -> bool {
        now >= self.next_rebalance
    }

    /// Partitions were shared; `short` of our share, look again soon: a peer is giving partitions back.
    pub(super) fn rebalanced(&mut self, short: bool, now: Instant) {
        // A partition taken over may hold rows far below: look from the start.
        self.claimed_up_to = 0;
        let wait = if short { self.rebalance_interval / 8 } else { self.rebalance_interval };
        self.next_rebalance = now + wait;
    }

    /// With `in_flight` batches awaiting confirms: claim while the pipeline
    /// is empty, a backlog remains or a wake-up came, and there is room;
    /// otherwise wait. `may_claim` is false while stopping or a rebalance waits.
    pub(super) fn step(&mut self, now: Instant, in_flight: usize, may_claim: bool) -> Step {
        if may_claim && in_flight < self.pipeline_depth && (in_flight == 0 || self.backlog || self.woken) {
            self.woken = false;
            return Step::Claim { gather_until: self.gather_until.take().filter(|until| *until > now) };
        }
        Step::Wait(self.wait(now, in_flight, may_claim))
    }

    /// How to wait: idle with nothing in flight, else on the oldest batch.
    /// With room for another batch and no rows gathering, a wake-up claims
    /// alongside the oldest batch's confirms instead of after them.
    pub(super) fn wait(&self, now: Instant, in_flight: usize, may_claim: bool) -> Wait {
        if in_flight == 0 {
            return Wait::Idle(self.poll_interval.min(self.next_rebalance.saturating_duration_since(now)));
        }
        let early = may_claim && in_flight < self.pipeline_depth && self.gather_until.is_none_or(|until| until <= now);
        Wait::Settle { early }
    }

    /// A wake-up came while waiting early on a batch's confirms.
    pub(super) fn woken(&mut self) {
        self.woken = true;
    }

    /// Whether to claim while a settled batch is marked, `in_flight` others
    /// left: as after an empty pipeline or a full claim, and not while rows
    /// gather (those are claimed at the next step, in time).
    pub(super) fn claim_beside(&self, now: Instant, in_flight: usize, may_claim: bool, broken: bool) -> bool {
        let gathering = self.gather_until.is_some_and(|until| until > now);
        may_claim && !broken && (in_flight == 0 || self.backlog) && !gathering
    }

    /// The rows to claim after those published and not yet marked: `in_flight`
    /// and `settling` (a settled batch being marked). With batches in flight,
    /// the rows after the newest of them; with none, the rows from
    /// [`LOOKBACK_IDS`] below the newest claimed on; once every [`SWEEP_INTERVAL`],
    /// every pending row. Outstanding rows are left out of the last two. Short
    /// of a backlog, batches in flight are small and the claim looks back as
    /// with none: rows of a transaction that committed after a later one's
    /// (ids are taken before commit) are not left for the sweep.
    pub(super) fn claim(&mut self, now: Instant, in_flight: &[&[PendingRow]], settling: &[PendingRow]) -> Claim {
        let outstanding = || in_flight.iter().copied().chain([settling]);
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
        }
        if sweep || in_flight.is_empty() || !self.backlog {
            let after = if sweep { 0 } else { self.claimed_up_to.saturating_sub(LOOKBACK_IDS).max(0) };
            let exclude = outstanding().flat_map(|rows| rows.iter().map(|r| r.id)).filter(|id| *id > after).collect();
            Claim { limit: self.batch_size, after, exclude }
        } else {
            // Rows are claimed in id order: a batch's last row is its highest.
            let after = outstanding().filter_map(|rows| rows.last()).map(|r| r.id).max().unwrap_or(0);
            Claim { limit: self.batch_size, after, exclude: Vec::new() }
        }
    }

    /// The newest id claimed (or taken from a handover) on this connection.
    pub(super) fn claimed_up_to(&self) -> i64 {
        self.claimed_up_to
    }

    /// Whether events arrive slowly enough that the relay takes rows handed
    /// over at commit; under heavier load it claims them, gathered into
    /// fuller batches.
    pub(super) fn light(&self, now: Instant) -> bool {
        self.arrivals.at(now) < self.gather_from_rate
    }

    /// Rows (in id order) handed over at commit were taken at `now`.
    pub(super) fn handed(&mut self, rows: &[PendingRow], now: Instant) {
        self.claimed_up_to = rows.last().map_or(self.claimed_up_to, |row| row.id.max(self.claimed_up_to));
        self.arrivals.update(rows.len(), now);
    }

    /// `claim`, started at `started`, returned `rows` (in id order). Rows
    /// gather before the next claim only while events arrive fast and this
    /// claim was not full.
    pub(super) fn claimed(&mut self, claim: &Claim, rows: &[PendingRow], started: Instant) {
        let full = rows.len() as i64 >= claim.limit;
        self.backlog = full;
        self.claimed_up_to = rows.last().map_or(self.claimed_up_to, |row| row.id.max(self.claimed_up_to));
        let per_s = self.arrivals.update(rows.len(), started);
        let gather = !self.gather.is_zero() && per_s >= self.gather_from_rate;
        self.gather_until = (gather && !full).then(|| started + self.gather);
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
