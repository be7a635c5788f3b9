//! From a command on the exchange to its effect on the tables and its reply.

use contracts::payments::v1::{GetPaymentRequest, PaymentStatus, SetCustomerCreditRequest};
use inbox::headers;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn a_payment_within_the_credit_is_captured(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let command = process_payment("customer-capture", "77.50");
    broker.process(&command).await;

    let replies = broker.replies(1).await;
    let Reply::Processed(reply) = &replies[0] else { panic!("expected PaymentProcessed, got {replies:?}") };
    assert_eq!(reply.order_id, command.order_id);
    assert_eq!(reply.correlation_id, command.correlation_id);
    assert_ne!(reply.event_id, command.event_id, "a reply has an event id of its own");
    assert!(reply.occurred_at.is_some());
    assert_eq!(app.credit("customer-capture", "EUR").await, ("1000.00".into(), "77.50".into()));
    let payment = app
        .client()
        .await
        .get_payment(GetPaymentRequest { order_id: command.order_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.payment_id, reply.payment_id);
    assert_eq!(payment.status(), PaymentStatus::Captured);
    assert_eq!(
        (payment.customer_id.as_str(), payment.amount.as_str(), payment.currency.as_str()),
        ("customer-capture", "77.50", "EUR")
    );
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT amount_minor FROM payments WHERE status = 'CAPTURED'").await, 7750);
    let metrics = testkit::scrape_metrics(app.metrics_addr).await;
    assert_eq!(testkit::metric_sample(&metrics, "payments_captured_total", &[]), Some(1.0), "{metrics}");
    assert_eq!(testkit::metric_sample(&metrics, "payments_declined_total", &[]), Some(0.0));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_payment_over_the_limit_is_declined_and_uses_nothing(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let set = SetCustomerCreditRequest {
        customer_id: "customer-over".into(),
        currency: "EUR".into(),
        amount: "100.00".into(),
    };
    app.client().await.set_customer_credit(set).await.unwrap();
    let first = process_payment("customer-over", "60.00");
    broker.process(&first).await;
    assert!(matches!(broker.replies(1).await[0], Reply::Processed(_)));
    let over = process_payment("customer-over", "50.00");
    broker.process(&over).await;

    let replies = broker.replies(1).await;
    let Reply::Declined(reply) = &replies[0] else { panic!("expected PaymentDeclined, got {replies:?}") };
    assert_eq!(reply.order_id, over.order_id);
    assert_eq!(reply.detail, "credit limit 100.00 EUR, 60.00 used, 50.00 asked");
    assert_eq!(app.credit("customer-over", "EUR").await, ("100.00".into(), "60.00".into()));
    let pool = pool(&db).await;
    let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(Uuid::parse_str(&over.order_id).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "DECLINED");
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_refund_after_the_capture_gives_the_credit_back(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let command = process_payment("customer-refund", "200.00");
    broker.process(&command).await;
    let Reply::Processed(processed) = broker.replies(1).await.remove(0) else { panic!("expected PaymentProcessed") };
    assert_eq!(app.credit("customer-refund", "EUR").await.1, "200.00");
    let refund = refund_payment(&command.order_id);
    broker.refund(&refund).await;

    let replies = broker.replies(1).await;
    let Reply::Refunded(reply) = &replies[0] else { panic!("expected PaymentRefunded, got {replies:?}") };
    assert!(reply.was_captured);
    assert_eq!(
        (reply.order_id.as_str(), reply.payment_id.as_str()),
        (command.order_id.as_str(), processed.payment_id.as_str())
    );
    assert_eq!(reply.correlation_id, refund.correlation_id);
    assert_eq!(app.credit("customer-refund", "EUR").await.1, "0.00");
    let request = GetPaymentRequest { order_id: command.order_id.clone() };
    let payment = app.client().await.get_payment(request).await.unwrap().into_inner().payment.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Refunded);

    // A second refund finds nothing captured.
    broker.refund(&refund_payment(&command.order_id)).await;
    let Reply::Refunded(again) = broker.replies(1).await.remove(0) else { panic!("expected PaymentRefunded") };
    assert!(!again.was_captured);
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_refund_before_the_payment_declines_the_late_payment(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let command = process_payment("customer-early-refund", "10.00");
    broker.refund(&refund_payment(&command.order_id)).await;
    let Reply::Refunded(refunded) = broker.replies(1).await.remove(0) else { panic!("expected PaymentRefunded") };
    assert!(!refunded.was_captured);
    assert_eq!(refunded.order_id, command.order_id);
    broker.process(&command).await;

    let replies = broker.replies(1).await;
    let Reply::Declined(reply) = &replies[0] else { panic!("expected PaymentDeclined, got {replies:?}") };
    assert_eq!(reply.detail, "cancelled by a refund that arrived first");
    assert_eq!(reply.payment_id, refunded.payment_id);
    assert_eq!(app.credit("customer-early-refund", "EUR").await.1, "0.00");
    let request = GetPaymentRequest { order_id: command.order_id.clone() };
    let payment = app.client().await.get_payment(request).await.unwrap().into_inner().payment.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Declined);
    assert_eq!((payment.customer_id.as_str(), payment.amount.as_str()), ("customer-early-refund", "10.00"));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_command_has_one_effect_however_often_it_comes(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let command = process_payment("customer-copies", "30.00");
    for _ in 0..3 {
        broker.process(&command).await;
    }
    let Reply::Processed(first) = broker.replies(1).await.remove(0) else { panic!("expected PaymentProcessed") };
    let pool = pool(&db).await;
    eventually(|| async { count(&pool, "SELECT count(*) FROM processed_events").await == 1 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(broker.ready_replies().await, 0, "the copies are not replied");
    assert_eq!(broker.ready(&topology.main).await, 0, "every copy was acknowledged");

    // The same order under a new event id: the same outcome again, no second capture.
    let again = contracts::payments::v1::ProcessPayment { event_id: Uuid::new_v4().to_string(), ..command.clone() };
    broker.process(&again).await;
    let Reply::Processed(second) = broker.replies(1).await.remove(0) else { panic!("expected PaymentProcessed") };
    assert_eq!(second.payment_id, first.payment_id);
    assert_ne!(second.event_id, first.event_id);
    assert_eq!(count(&pool, "SELECT count(*) FROM payments").await, 1);
    assert_eq!(app.credit("customer-copies", "EUR").await.1, "30.00");
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn malformed_commands_are_dead_lettered_naming_the_field(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let mut bad_amount = process_payment("customer-bad", "-1");
    bad_amount.correlation_id = "corr-bad-amount".into();
    let mut bad_order = process_payment("customer-bad", "10.00");
    bad_order.order_id = "42".into();
    bad_order.correlation_id = "corr-bad-order".into();
    let mut bad_refund = refund_payment("not-a-uuid");
    bad_refund.correlation_id = "corr-bad-refund".into();
    broker.process(&bad_amount).await;
    broker.process(&bad_order).await;
    broker.refund(&bad_refund).await;

    let dead = broker.take_n(&topology.dead_letter, 3).await;
    for (correlation, field) in
        [("corr-bad-amount", "amount"), ("corr-bad-order", "order_id"), ("corr-bad-refund", "order_id")]
    {
        let message = dead.iter().find(|m| header(m, headers::CORRELATION_ID).as_deref() == Some(correlation));
        let message = message.unwrap_or_else(|| panic!("{correlation} was not dead-lettered"));
        assert_eq!(header(message, headers::REASON).as_deref(), Some("validation_failed"));
        let error = header(message, headers::ERROR).unwrap();
        assert!(error.contains(field), "{correlation}: the error names {field}: {error}");
    }
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM payments").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox_messages").await, 0);
    assert_eq!(broker.ready_replies().await, 0);
    app.stop().await;
    broker.delete(&topology).await;
}
