//! The saga's paths driven by replies: completed with and without lines,
//! declined, out of stock; repeated replies; replies for no order.

use std::time::Duration;

use contracts::{
    events::v1::{OrderCompleted, OrderFailed},
    inventory::v1::{InventoryReservationFailed, InventoryReserved, ReservationLine, ReserveInventory},
    orders::v1::{FailureReason, OrderStatus},
    payments::v1::{PaymentDeclined, PaymentProcessed, PaymentRefunded, ProcessPayment, RefundPayment},
};
use sqlx::PgPool;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use uuid::Uuid;

use super::{Saga, decoded, timers};

/// Replies to the payment of `order_id` with PaymentProcessed under a new event id.
fn processed(order_id: &str) -> (Uuid, PaymentProcessed) {
    let event_id = Uuid::now_v7();
    let reply = PaymentProcessed {
        event_id: event_id.to_string(),
        order_id: order_id.into(),
        payment_id: Uuid::now_v7().to_string(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    (event_id, reply)
}

#[sqlx::test(migrations = false)]
async fn an_order_with_lines_is_paid_then_reserved_then_completed(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let order = saga.create(&[("ABC-1", 3), ("XYZ", 1)]).await;
    assert_eq!(order.status, OrderStatus::Created as i32, "answered at once, CREATED");
    assert_eq!(order.lines.len(), 2);

    let command = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("ProcessPayment sent");
    let process: ProcessPayment = decoded(&command);
    assert_eq!(command.properties.message_id().as_ref().unwrap().as_str(), process.event_id);
    assert_eq!(
        (process.order_id.as_str(), process.amount.as_str(), process.currency.as_str()),
        (order.order_id.as_str(), "25.00", "EUR")
    );
    assert_eq!(
        (process.customer_id.as_str(), process.correlation_id.as_str()),
        ("c-saga", order.correlation_id.as_str())
    );

    let (event_id, reply) = processed(&order.order_id);
    saga.reply(event_id, &reply).await;
    let command = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("ReserveInventory sent");
    let reserve: ReserveInventory = decoded(&command);
    let lines =
        [ReservationLine { sku: "ABC-1".into(), quantity: 3 }, ReservationLine { sku: "XYZ".into(), quantity: 1 }];
    assert_eq!(reserve.lines, lines);
    assert_eq!(saga.get(&order.order_id).await.status, OrderStatus::Created as i32, "still running");

    let reserved = InventoryReserved {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        reservation_id: Uuid::now_v7().to_string(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&reserved.event_id).unwrap(), &reserved).await;
    let outcome = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("OrderCompleted sent");
    let completed: OrderCompleted = decoded(&outcome);
    assert_eq!((completed.order_id.as_str(), completed.amount.as_str()), (order.order_id.as_str(), "25.00"));
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Completed as i32, FailureReason::Unspecified as i32));
    assert!(done.updated_at.unwrap().seconds >= done.created_at.unwrap().seconds);
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_order_without_lines_completes_after_its_payment_alone(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let order = saga.create(&[]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);
    let (event_id, reply) = processed(&order.order_id);
    saga.reply(event_id, &reply).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["order.completed"]);
    assert_eq!(saga.get(&order.order_id).await.status, OrderStatus::Completed as i32);

    let metrics = saga.app.metrics_addr;
    let sample = |name: &'static str, labels: &'static [(&'static str, &'static str)]| async move {
        testkit::metric_sample(&testkit::scrape_metrics(metrics).await, name, labels)
    };
    assert_eq!(sample("orders_sagas_started_total", &[]).await, Some(1.0));
    assert_eq!(sample("orders_sagas_completed_total", &[]).await, Some(1.0));
    assert_eq!(sample("orders_sagas_failed_total", &[("reason", "TIMED_OUT")]).await, Some(0.0));
    assert_eq!(sample("orders_saga_duration_seconds_count", &[]).await, Some(1.0));
    let sampled = || async { sample("orders_sagas_in_flight", &[]).await == Some(0.0) };
    assert!(testkit::eventually(Duration::from_secs(5), sampled).await, "nothing in flight once it completed");

    let mut health = HealthClient::new(crate::helpers::channel(saga.app.addr).await);
    let check = HealthCheckRequest { service: orders::startup::CONSUMER_HEALTH_NAME.into() };
    assert_eq!(health.check(check).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_declined_payment_fails_the_order_and_reserves_nothing(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let order = saga.create(&[("ABC-1", 1)]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);
    let declined = PaymentDeclined {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        payment_id: Uuid::now_v7().to_string(),
        detail: "credit limit 1000.00 EUR, 990.00 used, 25.00 asked".into(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&declined.event_id).unwrap(), &declined).await;
    let outcome = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("OrderFailed sent");
    let failed: OrderFailed = decoded(&outcome);
    assert_eq!(
        (failed.reason, failed.detail.as_str()),
        (FailureReason::PaymentDeclined as i32, declined.detail.as_str())
    );
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Failed as i32, FailureReason::PaymentDeclined as i32));
    assert!(saga.next_sent(&order.order_id, Duration::from_millis(800)).await.is_none(), "no ReserveInventory");
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn refused_stock_refunds_the_payment_before_the_order_fails(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let order = saga.create(&[("ABC-1", 3)]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);
    let (event_id, reply) = processed(&order.order_id);
    saga.reply(event_id, &reply).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["inventory.reserve"]);
    let refused = InventoryReservationFailed {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        reservation_id: String::new(),
        detail: "sku ABC-1: 3 requested, 1 available".into(),
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&refused.event_id).unwrap(), &refused).await;
    let command = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("RefundPayment sent");
    let refund: RefundPayment = decoded(&command);
    assert_eq!(refund.order_id, order.order_id);
    assert_eq!(saga.get(&order.order_id).await.status, OrderStatus::Created as i32, "CREATED until refunded");

    let refunded = PaymentRefunded {
        event_id: Uuid::now_v7().to_string(),
        order_id: order.order_id.clone(),
        payment_id: Uuid::now_v7().to_string(),
        was_captured: true,
        occurred_at: None,
        correlation_id: "corr-saga".into(),
    };
    saga.reply(Uuid::parse_str(&refunded.event_id).unwrap(), &refunded).await;
    let outcome = saga.next_sent(&order.order_id, Duration::from_secs(10)).await.expect("OrderFailed sent");
    let failed: OrderFailed = decoded(&outcome);
    assert_eq!((failed.reason, failed.detail.as_str()), (FailureReason::OutOfStock as i32, refused.detail.as_str()));
    let done = saga.get(&order.order_id).await;
    assert_eq!((done.status, done.failure), (OrderStatus::Failed as i32, FailureReason::OutOfStock as i32));
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_reply_delivered_three_times_and_a_late_copy_move_the_saga_once(pool: PgPool) {
    let mut saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let order = saga.create(&[("ABC-1", 1)]).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["payment.process"]);
    let (event_id, reply) = processed(&order.order_id);
    for _ in 0..3 {
        saga.reply(event_id, &reply).await;
    }
    // The same reply under another event id: a copy for a step already past.
    let (other_id, other) = processed(&order.order_id);
    saga.reply(other_id, &other).await;
    assert_eq!(saga.sent_keys(&order.order_id, 1).await, ["inventory.reserve"]);
    assert!(saga.next_sent(&order.order_id, Duration::from_secs(1)).await.is_none(), "one ReserveInventory only");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)")
        .bind(vec![event_id, other_id])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 2, "each event id recorded once");
    saga.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_reply_for_an_unknown_order_is_dead_lettered_naming_the_order(pool: PgPool) {
    let saga = Saga::start(&pool, timers(30_000, 30_000)).await;
    let stranger = Uuid::now_v7().to_string();
    let (event_id, reply) = processed(&stranger);
    saga.reply(event_id, &reply).await;
    // Look for ours among whatever else the queue holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut found = None;
    while found.is_none() && tokio::time::Instant::now() < deadline {
        while let Some(message) = saga.broker.take(&saga.topology.dead_letter).await {
            let id = message.delivery.properties.message_id().as_ref().map(|m| m.to_string());
            if id == Some(event_id.to_string()) {
                found = Some(message);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found.is_some(), "the reply reached the dead-letter queue");
    let dead = found.unwrap();
    assert_eq!(testkit::consumer::header(&dead, inbox::headers::REASON).as_deref(), Some("handler_rejected"));
    let error = testkit::consumer::header(&dead, inbox::headers::ERROR).unwrap_or_default();
    assert!(error.contains(&stranger), "{error}");
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas").fetch_one(&pool).await.unwrap();
    assert_eq!(sagas, 0);
    saga.stop().await;
}
