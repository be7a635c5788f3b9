//! The transition function: every path named by the design, and every input
//! in every reachable state checked against the invariants.

use super::*;

const TIMING: Timing = Timing { step_timeout: Duration::from_secs(30), resend_every: Duration::from_secs(10) };

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn step(saga: &Saga, input: Input) -> (Saga, Vec<Effect>) {
    match apply(saga, &input, now(), &TIMING) {
        Outcome::Applied { saga, effects } => (saga, effects),
        Outcome::Ignored { reason } => panic!("{input:?} ignored: {reason}"),
    }
}

fn is_ignored(saga: &Saga, input: Input) -> bool {
    matches!(apply(saga, &input, now(), &TIMING), Outcome::Ignored { .. })
}

fn all_inputs() -> Vec<Input> {
    vec![
        Input::PaymentProcessed,
        Input::PaymentDeclined { detail: "over the limit".into() },
        Input::PaymentRefunded,
        Input::InventoryReserved,
        Input::ReservationFailed { detail: "sku A: unknown".into() },
        Input::InventoryReleased,
        Input::DeadlinePassed,
        Input::ResendDue,
    ]
}

#[test]
fn with_lines_payment_then_stock_completes() {
    let saga = Saga::start(true, now(), &TIMING);
    assert_eq!(saga.deadline_at, Some(now() + TimeDelta::seconds(30)));
    let (saga, effects) = step(&saga, Input::PaymentProcessed);
    assert_eq!((saga.step, saga.payment, saga.stock), (Step::Reservation, Payment::Captured, Stock::Requested));
    assert_eq!(effects, [Effect::ReserveInventory]);
    let (saga, effects) = step(&saga, Input::InventoryReserved);
    assert_eq!((saga.step, saga.deadline_at, saga.resend_at), (Step::Completed, None, None));
    assert_eq!(effects, [Effect::Completed]);
}

#[test]
fn without_lines_the_payment_completes_it() {
    let (saga, effects) = step(&Saga::start(false, now(), &TIMING), Input::PaymentProcessed);
    assert_eq!((saga.step, saga.stock, saga.deadline_at), (Step::Completed, Stock::NotRequested, None));
    assert_eq!(effects, [Effect::Completed]);
}

#[test]
fn a_declined_payment_fails_with_nothing_to_undo() {
    let declined = Input::PaymentDeclined { detail: "limit".into() };
    let (saga, effects) = step(&Saga::start(true, now(), &TIMING), declined);
    assert_eq!((saga.step, saga.payment, saga.resend_at), (Step::Failed, Payment::Declined, None));
    assert_eq!(effects, [Effect::Failed { reason: Failure::PaymentDeclined, detail: "limit".into() }]);
}

#[test]
fn refused_stock_refunds_first_then_fails() {
    let (saga, _) = step(&Saga::start(true, now(), &TIMING), Input::PaymentProcessed);
    let (saga, effects) = step(&saga, Input::ReservationFailed { detail: "sku A: 3 requested, 1 available".into() });
    assert_eq!((saga.step, saga.payment, saga.stock), (Step::Refund, Payment::Refunding, Stock::Refused));
    assert_eq!(effects, [Effect::RefundPayment]);
    assert_eq!(saga.resend_at, Some(now() + TimeDelta::seconds(10)));
    let (again, effects) = step(&saga, Input::ResendDue);
    assert_eq!((again.step, effects), (Step::Refund, vec![Effect::RefundPayment]));
    let (saga, effects) = step(&saga, Input::PaymentRefunded);
    assert_eq!((saga.step, saga.payment, saga.resend_at), (Step::Failed, Payment::Refunded, None));
    let detail = "sku A: 3 requested, 1 available".to_owned();
    assert_eq!(effects, [Effect::Failed { reason: Failure::OutOfStock, detail }]);
}

#[test]
fn a_payment_timeout_fails_at_once_and_keeps_refunding_until_answered() {
    let (saga, effects) = step(&Saga::start(true, now(), &TIMING), Input::DeadlinePassed);
    assert_eq!((saga.step, saga.payment, saga.stock), (Step::Failed, Payment::Refunding, Stock::NotRequested));
    assert!(matches!(effects.as_slice(), [Effect::Failed { reason: Failure::TimedOut, .. }, Effect::RefundPayment]));
    assert!(is_ignored(&saga, Input::PaymentProcessed), "a late capture does not revive the order");
    let (saga, effects) = step(&saga, Input::ResendDue);
    assert_eq!(effects, [Effect::RefundPayment]);
    let (saga, effects) = step(&saga, Input::PaymentRefunded);
    assert_eq!((saga.resend_at, effects), (None, vec![]));
}

#[test]
fn a_stock_timeout_refunds_and_releases() {
    let (saga, _) = step(&Saga::start(true, now(), &TIMING), Input::PaymentProcessed);
    let (saga, effects) = step(&saga, Input::DeadlinePassed);
    assert_eq!((saga.payment, saga.stock), (Payment::Refunding, Stock::Releasing));
    assert_eq!(&effects[1..], [Effect::RefundPayment, Effect::ReleaseInventory]);
    assert!(is_ignored(&saga, Input::InventoryReserved));
    let (saga, _) = step(&saga, Input::InventoryReleased);
    assert_eq!(saga.pending_compensations(), [Effect::RefundPayment]);
    assert!(saga.resend_at.is_some());
    let (saga, _) = step(&saga, Input::PaymentRefunded);
    assert_eq!((saga.resend_at, saga.compensating()), (None, false));
}

#[test]
fn a_refund_that_outlasts_its_deadline_fails_the_order_out_of_stock() {
    let (saga, _) = step(&Saga::start(true, now(), &TIMING), Input::PaymentProcessed);
    let (saga, _) = step(&saga, Input::ReservationFailed { detail: "sku A: unknown".into() });
    let (saga, effects) = step(&saga, Input::DeadlinePassed);
    assert_eq!((saga.step, saga.payment), (Step::Failed, Payment::Refunding));
    assert!(
        matches!(&effects[..], [Effect::Failed { reason: Failure::OutOfStock, detail }] if detail.contains("pending"))
    );
    let (saga, effects) = step(&saga, Input::PaymentRefunded);
    assert_eq!((saga.resend_at, effects), (None, vec![]));
}

/// Every state reachable from a start, with and without lines.
fn reachable() -> Vec<Saga> {
    let mut seen: Vec<Saga> = Vec::new();
    let mut queue = vec![Saga::start(true, now(), &TIMING), Saga::start(false, now(), &TIMING)];
    while let Some(saga) = queue.pop() {
        if seen.contains(&saga) {
            continue;
        }
        for input in all_inputs() {
            if let Outcome::Applied { saga: next, .. } = apply(&saga, &input, now(), &TIMING) {
                queue.push(next);
            }
        }
        seen.push(saga);
    }
    seen
}

#[test]
fn every_input_in_every_reachable_state_keeps_the_invariants() {
    let states = reachable();
    assert!(states.len() >= 10, "{} states", states.len());
    for saga in &states {
        for input in all_inputs() {
            let Outcome::Applied { saga: next, effects } = apply(saga, &input, now(), &TIMING) else { continue };
            let context = format!("{saga:?} + {input:?} -> {next:?} {effects:?}");
            // An ended order never changes its status again.
            if saga.step == Step::Completed {
                assert_eq!(next.step, Step::Completed, "{context}");
            }
            if saga.step == Step::Failed {
                assert_eq!(next.step, Step::Failed, "{context}");
                assert!(!effects.iter().any(|e| matches!(e, Effect::Failed { .. } | Effect::Completed)), "{context}");
            }
            // An outcome is sent exactly when the order ends.
            let ends = next.step != saga.step && matches!(next.step, Step::Completed | Step::Failed);
            let outcomes = effects.iter().filter(|e| matches!(e, Effect::Failed { .. } | Effect::Completed)).count();
            assert_eq!(outcomes, usize::from(ends), "{context}");
            // Ended sagas have no step timer; the resend timer runs exactly while compensating.
            if matches!(next.step, Step::Completed | Step::Failed) {
                assert_eq!(next.deadline_at, None, "{context}");
            }
            assert_eq!(next.resend_at.is_some(), next.compensating(), "{context}");
            // A completed order holds its payment and, with lines, its stock.
            if next.step == Step::Completed {
                assert_eq!(next.payment, Payment::Captured, "{context}");
                assert_eq!(next.stock == Stock::Reserved, next.has_lines, "{context}");
            }
            // Stock is never asked for before the payment is captured, nor without lines.
            if effects.contains(&Effect::ReserveInventory) {
                assert!(next.has_lines && saga.payment == Payment::Requested, "{context}");
            }
        }
    }
}

#[test]
fn replies_for_a_step_already_past_are_ignored() {
    let (paid, _) = step(&Saga::start(true, now(), &TIMING), Input::PaymentProcessed);
    assert!(is_ignored(&paid, Input::PaymentProcessed), "a second copy of the capture");
    assert!(is_ignored(&paid, Input::PaymentDeclined { detail: String::new() }));
    let (done, _) = step(&paid, Input::InventoryReserved);
    for input in all_inputs().into_iter().filter(|i| !matches!(i, Input::DeadlinePassed | Input::ResendDue)) {
        assert!(is_ignored(&done, input.clone()), "{input:?} after completion");
    }
}
