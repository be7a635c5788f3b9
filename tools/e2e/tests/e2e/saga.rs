//! The order saga across the four real binaries: payment, then stock, then
//! the order's end, and every way it can fail, with the invariants checked
//! over the participants' own APIs.

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use contracts::{
    inventory::v1::ReservationStatus,
    orders::v1::{FailureReason, OrderStatus},
    payments::v1::PaymentStatus,
};
use futures::StreamExt;

use crate::support::{
    SagaSystem,
    api::{self, notification_messages},
    saga::{self, Participants},
};

const END: Duration = Duration::from_secs(30);

fn participants(system: &SagaSystem) -> Participants {
    Participants { payments: system.payments.addr(), inventory: system.inventory.addr() }
}

/// Payment captured, stock reserved, COMPLETED; notifications for the
/// order's creation and its completion.
#[tokio::test(flavor = "multi_thread")]
async fn saga_an_order_with_credit_and_stock_completes() {
    let system = SagaSystem::start(|spec| spec).await;
    let (orders, payments, inventory) = (system.orders.addr(), system.payments.addr(), system.inventory.addr());
    saga::set_credit(payments, "c-happy", "100.00").await;
    saga::set_stock(inventory, "SKU-A", 10).await;
    saga::set_stock(inventory, "SKU-B", 1).await;

    let created = saga::create(orders, saga::request("c-happy", "30.00", &[("SKU-A", 2), ("SKU-B", 1)])).await;
    assert_eq!(created.status(), OrderStatus::Created, "CreateOrder answers before the saga ends");
    let order = saga::ended(orders, &created.order_id, END).await;
    assert_eq!((order.status(), order.failure()), (OrderStatus::Completed, FailureReason::Unspecified));
    assert!(order.updated_at.expect("updated_at").seconds >= order.created_at.expect("created_at").seconds);
    assert_eq!(saga::credit(payments, "c-happy").await, (10_000, 3_000));
    assert_eq!(saga::stock(inventory, "SKU-A").await, (10, 2));
    assert_eq!(saga::stock(inventory, "SKU-B").await, (1, 1));
    assert_eq!(saga::payment(payments, &order.order_id).await, Some(PaymentStatus::Captured));
    assert_eq!(saga::reservation(inventory, &order.order_id).await, Some(ReservationStatus::Reserved));
    let messages = notification_messages(system.notifications.addr(), &order.order_id, 2, END).await;
    assert!(messages[1].contains("is complete"), "{messages:?}");
}

/// Over the credit limit: FAILED / PAYMENT_DECLINED, nothing reserved, and
/// the failure notified with its reason.
#[tokio::test(flavor = "multi_thread")]
async fn saga_an_order_over_the_credit_limit_fails_declined_and_reserves_nothing() {
    let system = SagaSystem::start(|spec| spec).await;
    let (orders, payments, inventory) = (system.orders.addr(), system.payments.addr(), system.inventory.addr());
    saga::set_credit(payments, "c-poor", "10.00").await;
    saga::set_stock(inventory, "SKU-A", 10).await;

    let created = saga::create(orders, saga::request("c-poor", "30.00", &[("SKU-A", 1)])).await;
    let order = saga::ended(orders, &created.order_id, END).await;
    assert_eq!((order.status(), order.failure()), (OrderStatus::Failed, FailureReason::PaymentDeclined));
    assert_eq!(saga::credit(payments, "c-poor").await, (1_000, 0));
    assert_eq!(saga::payment(payments, &order.order_id).await, Some(PaymentStatus::Declined));
    assert_eq!(saga::reservation(inventory, &order.order_id).await, None, "no ReserveInventory was sent");
    assert_eq!(saga::stock(inventory, "SKU-A").await, (10, 0));
    let messages = notification_messages(system.notifications.addr(), &order.order_id, 2, END).await;
    assert!(messages[1].contains("the payment was declined"), "{messages:?}");
}

/// Short stock and an unknown sku: FAILED / OUT_OF_STOCK once the payment is
/// refunded, the credit whole again, nothing held.
#[tokio::test(flavor = "multi_thread")]
async fn saga_out_of_stock_and_unknown_skus_fail_with_the_payment_refunded() {
    let system = SagaSystem::start(|spec| spec).await;
    let (orders, payments, inventory) = (system.orders.addr(), system.payments.addr(), system.inventory.addr());
    saga::set_stock(inventory, "SKU-A", 1).await;

    let short = saga::create(orders, saga::request("c-stock", "20.00", &[("SKU-A", 3)])).await;
    let unknown = saga::create(orders, saga::request("c-stock", "5.00", &[("SKU-A", 1), ("NO-SUCH-SKU", 1)])).await;
    for created in [short, unknown] {
        let order = saga::ended(orders, &created.order_id, END).await;
        assert_eq!((order.status(), order.failure()), (OrderStatus::Failed, FailureReason::OutOfStock));
        assert_eq!(saga::payment(payments, &order.order_id).await, Some(PaymentStatus::Refunded));
        assert_ne!(saga::reservation(inventory, &order.order_id).await, Some(ReservationStatus::Reserved));
        let messages = notification_messages(system.notifications.addr(), &order.order_id, 2, END).await;
        assert!(messages[1].contains("out of stock"), "{messages:?}");
    }
    assert_eq!(saga::credit(payments, "c-stock").await, (100_000, 0), "the default credit, whole again");
    assert_eq!(saga::stock(inventory, "SKU-A").await, (1, 0));
}

/// Payments down longer than the step timeout: the order fails TIMED_OUT at
/// once; Payments started again takes the (late) payment and the refund, and
/// nothing captured stays captured.
#[tokio::test(flavor = "multi_thread")]
async fn saga_payments_down_past_the_step_timeout_fails_timed_out_and_nothing_stays_captured() {
    let mut system =
        SagaSystem::start(|spec| spec.env("SAGA_STEP_TIMEOUT_MS", "1500").env("SAGA_COMPENSATION_RESEND_MS", "1000"))
            .await;
    let (orders, payments) = (system.orders.addr(), system.payments.addr());
    saga::set_stock(system.inventory.addr(), "SKU-A", 5).await;
    let status = system.payments.terminate().await;
    assert!(status.success(), "payments stops cleanly: {status}");

    let created = saga::create(orders, saga::request("c-slow", "12.00", &[("SKU-A", 1)])).await;
    let order = saga::ended(orders, &created.order_id, END).await;
    assert_eq!((order.status(), order.failure()), (OrderStatus::Failed, FailureReason::TimedOut));

    system.payments.start().await;
    let at = participants(&system);
    saga::assert_invariants(&at, std::slice::from_ref(&order), END).await;
    let payment = saga::payment(payments, &order.order_id).await;
    assert!(
        matches!(payment, Some(PaymentStatus::Declined | PaymentStatus::Refunded)),
        "the late payment was declined or refunded: {payment:?}"
    );
    assert_eq!(saga::credit(payments, "c-slow").await.1, 0);
    assert_eq!(saga::get(orders, &order.order_id).await.status(), OrderStatus::Failed, "a late reply revives nothing");
}

/// A mix of outcomes: who is over the limit, which skus run short.
fn mixed(i: usize) -> contracts::orders::v1::CreateOrderRequest {
    let customer = format!("c-{}", i % 40);
    let lines: &[(&str, u32)] = match i % 5 {
        0 => &[],
        1 => &[("SKU-PLENTY", 1)],
        2 => &[("SKU-SCARCE", 1), ("SKU-PLENTY", 2)],
        3 => &[("SKU-NONE", 1)],
        _ => &[("SKU-PLENTY", 1), ("SKU-SCARCE", 2)],
    };
    saga::request(&customer, if i.is_multiple_of(7) { "400.00" } else { "25.00" }, lines)
}

async fn stock_for_the_mix(system: &SagaSystem) {
    saga::set_stock(system.inventory.addr(), "SKU-PLENTY", 100_000).await;
    saga::set_stock(system.inventory.addr(), "SKU-SCARCE", 150).await;
}

/// `total` orders of the mix, `concurrency` at a time; the ids of those acknowledged.
async fn create_mixed_at(
    orders: std::net::SocketAddr,
    total: usize,
    concurrency: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<String> {
    let orders = api::orders(orders);
    futures::stream::iter(0..total)
        .map(|i| {
            let (mut orders, acked) = (orders.clone(), Arc::clone(&acked));
            async move {
                let response = orders.create_order(mixed(i)).await.ok()?;
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                response.into_inner().order.map(|o| o.order_id)
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

/// 2,000 sagas at once, every outcome mixed in: every order ends and every
/// invariant holds.
#[tokio::test(flavor = "multi_thread")]
async fn saga_two_thousand_concurrent_sagas_keep_every_invariant() {
    let system = SagaSystem::start(|spec| spec).await;
    stock_for_the_mix(&system).await;
    let ids = create_mixed_at(system.orders.addr(), 2_000, 64, Arc::default()).await;
    assert_eq!(ids.len(), 2_000, "every CreateOrder answered OK");
    let ended = saga::all_ended(system.orders.addr(), &ids, Duration::from_secs(180)).await;
    let count = |status| ended.iter().filter(|o| o.status() == status).count();
    let failed_by = |reason| ended.iter().filter(|o| o.failure() == reason).count();
    eprintln!(
        "completed {}, declined {}, out of stock {}, timed out {}",
        count(OrderStatus::Completed),
        failed_by(FailureReason::PaymentDeclined),
        failed_by(FailureReason::OutOfStock),
        failed_by(FailureReason::TimedOut)
    );
    assert!(count(OrderStatus::Completed) > 0 && failed_by(FailureReason::PaymentDeclined) > 0);
    assert!(failed_by(FailureReason::OutOfStock) > 0, "SKU-NONE and SKU-SCARCE run short");
    saga::assert_invariants(&participants(&system), &ended, Duration::from_secs(60)).await;
}

/// Orders SIGKILLed in the middle of 500 sagas (half of them created, the
/// rest on their way), then started again: every saga finishes (each
/// acknowledged order among them) and every invariant holds.
#[tokio::test(flavor = "multi_thread")]
async fn saga_orders_killed_amid_five_hundred_sagas_finishes_every_one() {
    let mut system = SagaSystem::start(|spec| spec).await;
    stock_for_the_mix(&system).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let creating = {
        let (orders, acked) = (system.orders.addr(), Arc::clone(&acked));
        tokio::spawn(async move { create_mixed_at(orders, 500, 16, acked).await })
    };
    api::wait_for_acks(&acked, 250, Duration::from_secs(60)).await;
    let status = system.orders.kill().await;
    assert!(!status.success(), "killed: {status}");
    let ids = tokio::time::timeout(Duration::from_secs(60), creating).await.expect("the calls end").expect("task");
    let orders_db = system.scratch.orders_pool().await;
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'CREATED'")
        .fetch_one(&orders_db)
        .await
        .expect("count running sagas");
    eprintln!("{} sagas acknowledged, {running} running when orders was killed", ids.len());
    assert!(running > 0, "the kill came while sagas were running");
    system.orders.start().await;
    // Every order committed is a saga, acknowledged or not (a call can fail
    // after its commit): all of them must end, and the invariants cover all.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT order_id::text FROM orders").fetch_all(&orders_db).await.expect("read the orders");
    let missing: Vec<_> = ids.iter().filter(|id| !stored.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged orders missing from the database: {missing:?}");
    let ended = saga::all_ended(system.orders.addr(), &stored, Duration::from_secs(120)).await;
    assert_eq!(ended.len(), stored.len());
    saga::assert_invariants(&participants(&system), &ended, Duration::from_secs(60)).await;
}
