//! Step deadlines: an unanswered step fails the order TIMED_OUT at once and
//! its compensations are sent, and sent again, until answered; a late reply
//! does not revive the order.

use std::time::Duration;

use contracts::{
    events::v1::OrderFailed,
    inventory::v1::InventoryReserved,
    orders::v1::{FailureReason, OrderStatus},
    payments::v1::{PaymentProcessed, PaymentRefunded, RefundPayment},
};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Saga, decoded, timers};
use crate::helpers::Options;

#[sqlx::test(migrations = false)]
async fn an_unanswered_payment_times_out_and_is_refunded_until_answered(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(300, 700)).await;
    let order = saga.create(&[("ABC-1", 1)]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);

    let failed = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("OrderFailed sent");
    let failed: OrderFailed = decoded(&failed);
    assert_eq!(failed.reason, FailureReason::TimedOut as i32, "{failed:?}");
    let refund = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("RefundPayment sent");
    let first: RefundPayment = decoded(&refund);
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Failed as i32, FailureReason::TimedOut as i32));

    // No reply: the refund is sent again, under a new event id.
    let again = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("RefundPayment re-sent");
    let second: RefundPayment = decoded(&again);
    assert_ne!(first.event_id, second.event_id);

    // The capture arrives late: the order stays FAILED.
    let late = PaymentProcessed {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        payment_id: Uuid::now_v7().to_string(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&late.event_id).unwrap(), &late).await;
    let refunded = PaymentRefunded {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        payment_id: late.payment_id.clone(),
        was_captured: true,
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&refunded.event_id).unwrap(), &refunded).await;
    let settled = testkit::eventually(Duration::from_secs(10), || async {
        let resend: Option<Option<chrono::DateTime<chrono::Utc>>> =
            sqlx::query_scalar("SELECT resend_at FROM sagas WHERE order_id = $1::uuid")
                .bind(&order.order_id)
                .fetch_optional(&pool)
                .await
                .unwrap();
        resend == Some(None)
    })
    .await;
    assert!(settled, "the refund's reply ends the re-sends");
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Failed as i32, FailureReason::TimedOut as i32));
    // Whatever was re-sent before the reply landed, nothing follows it.
    while saga.next_sent(&order.order_id, Duration::from_millis(200)).await.is_some() {}
    assert!(saga.next_sent(&order.order_id, Duration::from_millis(1500)).await.is_none(), "no more refunds");
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_unanswered_reservation_times_out_refunding_and_releasing(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(1500, 30_000)).await;
    let order = saga.create(&[("ABC-1", 2)]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);
    let processed = PaymentProcessed {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        payment_id: Uuid::now_v7().to_string(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&processed.event_id).unwrap(), &processed).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["inventory.reserve"]);

    // No stock reply: the order fails and both steps are undone.
    let keys = saga.sent_keys(&order.order_id, 3).await;
    assert_eq!(keys, ["order.failed", "payment.refund", "inventory.release"]);
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Failed as i32, FailureReason::TimedOut as i32));

    // The reservation lands late: it does not revive the order.
    let reserved = InventoryReserved {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        reservation_id: Uuid::now_v7().to_string(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&reserved.event_id).unwrap(), &reserved).await;
    assert!(saga.next_sent(&order.order_id, Duration::from_secs(1)).await.is_none(), "no OrderCompleted");
    let done = saga.get(&order.order_id).await;
    assert_eq!(done.status, OrderStatus::Failed as i32);
    let stock: String = sqlx::query_scalar("SELECT stock FROM sagas WHERE order_id = $1::uuid")
        .bind(&order.order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stock, "RELEASING", "the release stays pending until InventoryReleased");
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn two_replicas_fire_a_deadline_once(pool: PgPool) {
    let config = timers(600, 30_000);
    let mut saga = Saga::start(&pool, config.clone()).await;
    let other =
        crate::helpers::spawn_app(&pool, Options { relay: true, saga: Some(config), ..Options::default() }).await;
    let orders: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(saga.create(&[]).await.order_id);
        }
        ids
    };
    for order_id in &orders {
        assert_eq!(saga.sent_keys(order_id, 3).await, ["payment.process", "order.failed", "payment.refund"]);
        assert!(saga.next_sent(order_id, Duration::from_millis(300)).await.is_none(), "fired once: {order_id}");
    }
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE failure_reason = 'TIMED_OUT'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 5);
    other.stop().await;
    saga.stop().await;
}
