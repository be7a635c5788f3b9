//! The relay's decisions, one rule a test, with no database and no broker.

use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use super::{LOOKBACK_IDS, Plan, Recovery, SWEEP_INTERVAL, Step, Wait, recovery};
use crate::{
    ownership::{Claim, PendingRow},
    relay::RelayConfig,
};

fn config() -> RelayConfig {
    let mut config = RelayConfig::new(SecretString::from("amqp://unused"), "plan-test", Vec::new());
    config.batch_size = 10;
    config.pipeline_depth = 2;
    config.gather = Duration::from_millis(20);
    config.gather_from_rate = 1_000.0;
    config
}

fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<PendingRow> {
    ids.map(PendingRow::blank).collect()
}

/// A plan whose first sweep is behind it, having claimed `claimed` at `now`.
fn after_claim(now: Instant, claimed: &[PendingRow]) -> Plan {
    let mut plan = Plan::new(&config(), now);
    let claim = plan.claim(now, &[], &[]);
    plan.claimed(&claim, claimed, now);
    plan
}

#[test]
fn an_empty_pipeline_claims_at_once() {
    let now = Instant::now();
    let mut plan = Plan::new(&config(), now);
    assert_eq!(plan.step(now, 0, true), Step::Claim { gather_until: None });
}

#[test]
fn nothing_is_claimed_while_stopping_or_waiting_to_rebalance() {
    let now = Instant::now();
    let mut plan = Plan::new(&config(), now);
    assert_eq!(plan.step(now, 0, false), Step::Wait(Wait::Idle(Duration::ZERO)));
    assert_eq!(plan.step(now, 1, false), Step::Wait(Wait::Settle { early: false }));
}

#[test]
fn caught_up_the_relay_waits_for_the_confirms_and_a_wake_up_claims_beside_them() {
    let now = Instant::now();
    let mut plan = after_claim(now, &rows(1..=3));
    assert_eq!(plan.step(now, 1, true), Step::Wait(Wait::Settle { early: true }));
    plan.woken();
    assert_eq!(plan.step(now, 1, true), Step::Claim { gather_until: None });
    // The wake-up is spent by that claim.
    assert_eq!(plan.step(now, 1, true), Step::Wait(Wait::Settle { early: true }));
}

#[test]
fn a_backlog_is_claimed_ahead_of_the_confirms_up_to_the_pipeline_depth() {
    let now = Instant::now();
    let mut plan = after_claim(now, &rows(1..=10));
    assert_eq!(plan.step(now, 1, true), Step::Claim { gather_until: None });
    assert_eq!(plan.step(now, 2, true), Step::Wait(Wait::Settle { early: false }));
    assert!(plan.claim_beside(now, 1, true, false));
}

#[test]
fn idle_the_relay_waits_for_the_poll_or_the_next_rebalance_whichever_comes_first() {
    let now = Instant::now();
    let config = config();
    let mut plan = Plan::new(&config, now);
    assert!(plan.rebalance_due(now));
    plan.rebalanced(false, now);
    assert!(!plan.rebalance_due(now));
    assert_eq!(plan.wait(now, 0, true), Wait::Idle(config.poll_interval.min(config.rebalance_interval)));
    plan.rebalanced(true, now);
    assert_eq!(plan.wait(now, 0, true), Wait::Idle(config.rebalance_interval / 8));
    assert!(plan.rebalance_due(now + config.rebalance_interval / 8));
}

#[test]
fn under_heavy_load_rows_gather_between_claims_that_do_not_fill_a_batch() {
    let start = Instant::now();
    let mut plan = Plan::new(&config(), start);
    // 5 rows every 2 ms: 2,500 events a second, above the 1,000 to gather from.
    let mut at = start;
    for step in 0..200 {
        at = start + Duration::from_millis(2 * step);
        let claim = plan.claim(at, &[], &[]);
        plan.claimed(&claim, &rows(1..=5), at);
    }
    let until = at + Duration::from_millis(20);
    assert_eq!(plan.step(at, 0, true), Step::Claim { gather_until: Some(until) });
    // Gathering again: no early claim and none beside a mark until it is over.
    let claim = plan.claim(at, &[], &[]);
    plan.claimed(&claim, &rows(1..=5), at);
    assert_eq!(plan.wait(at, 1, true), Wait::Settle { early: false });
    assert!(!plan.claim_beside(at, 0, true, false));
    assert_eq!(plan.wait(until, 1, true), Wait::Settle { early: true });
    assert!(plan.claim_beside(until, 0, true, false));
    // Past its end, gathering no longer delays a claim.
    assert_eq!(plan.step(until + Duration::from_millis(1), 0, true), Step::Claim { gather_until: None });
}

#[test]
fn full_claims_light_load_or_a_zero_gather_never_wait_for_rows() {
    let start = Instant::now();
    for (batch, every_ms, gather_ms) in [(10, 2, 20), (1, 100, 20), (5, 2, 0)] {
        let mut config = config();
        config.gather = Duration::from_millis(gather_ms);
        let mut plan = Plan::new(&config, start);
        for step in 0..50 {
            let at = start + Duration::from_millis(every_ms * step);
            let claim = plan.claim(at, &[], &[]);
            plan.claimed(&claim, &rows(1..=batch), at);
            assert_eq!(plan.step(at, 0, true), Step::Claim { gather_until: None }, "{batch} every {every_ms} ms");
        }
    }
}

#[test]
fn claims_sweep_from_the_start_then_look_back_or_follow_the_batches_in_flight() {
    let now = Instant::now();
    let mut plan = Plan::new(&config(), now);
    let (first, second) = (rows(2_001..=2_010), rows(2_011..=2_020));
    // The first claim sweeps from the start, leaving out what is outstanding.
    let sweep = plan.claim(now, &[&first], &[]);
    assert_eq!((sweep.limit, sweep.after, sweep.exclude.len()), (10, 0, 10));
    plan.claimed(&sweep, &second, now);
    // A backlog in flight: the rows after the newest batch, nothing excluded.
    let ahead = plan.claim(now, &[&first], &second);
    assert_eq!((ahead.after, ahead.exclude), (2_020, Vec::new()));
    // Nothing in flight: from a little below the newest claimed id, outstanding rows left out.
    let back = plan.claim(now, &[], &second);
    assert_eq!(back.after, 2_020 - LOOKBACK_IDS);
    assert_eq!(back.exclude, (2_011..=2_020).collect::<Vec<_>>());
    // Once a second, every pending row again.
    assert_eq!(plan.claim(now + SWEEP_INTERVAL, &[&first], &[]).after, 0);
    // A rebalance or a new connection looks from the start.
    plan.rebalanced(false, now);
    assert_eq!(plan.claim(now, &[], &[]).after, 0);
}

#[test]
fn without_a_backlog_batches_in_flight_do_not_move_the_claim_past_late_rows() {
    let now = Instant::now();
    let mut plan = after_claim(now, &rows(1_501..=1_503));
    let claim = plan.claim(now, &[&rows(1_501..=1_503)], &[]);
    assert_eq!((claim.after, claim.exclude), (1_503 - LOOKBACK_IDS, vec![1_501, 1_502, 1_503]));
}

#[test]
fn a_new_connection_forgets_the_backlog_and_the_gathering() {
    let now = Instant::now();
    let mut plan = Plan::new(&config(), now);
    plan.rebalanced(false, now);
    let claim = plan.claim(now, &[], &[]);
    plan.claimed(&claim, &rows(2_001..=2_010), now);
    assert!(!plan.rebalance_due(now));
    assert_eq!(plan.claim(now, &[], &[]).after, 2_010 - LOOKBACK_IDS);
    plan.connected(now);
    assert!(plan.rebalance_due(now));
    assert_eq!(plan.step(now, 1, true), Step::Wait(Wait::Settle { early: true }));
    let claim: Claim = plan.claim(now, &[], &[]);
    assert_eq!(claim.after, 0, "a new connection looks from the start");
}

#[test]
fn a_broken_channel_reconnects_refused_rows_back_off_and_success_resets() {
    assert_eq!(recovery(true, true), Recovery::Reconnect);
    assert_eq!(recovery(true, false), Recovery::Reconnect);
    assert_eq!(recovery(false, true), Recovery::BackOff);
    assert_eq!(recovery(false, false), Recovery::Reset);
    let now = Instant::now();
    let plan = after_claim(now, &rows(1..=10));
    assert!(!plan.claim_beside(now, 0, true, true), "no claim beside a batch whose channel broke");
}
