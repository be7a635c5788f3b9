//! Payments of one customer decided at the same time by two replicas.

use contracts::payments::v1::SetCustomerCreditRequest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn twenty_payments_at_once_capture_exactly_what_the_limit_allows(_: PgPoolOptions, db: PgConnectOptions) {
    // One command per transaction, several in flight per replica: as much overlap as there can be.
    rush(&db, 1, 10).await;
}

#[sqlx::test(migrations = false)]
async fn twenty_payments_in_batches_capture_exactly_what_the_limit_allows(_: PgPoolOptions, db: PgConnectOptions) {
    // Batches of several commands per transaction on each replica.
    rush(&db, 8, 8).await;
}

/// Two replicas take 20 payments of 10.00 for one customer whose limit is
/// 50.00, and 20 for another customer with the default limit, interleaved.
async fn rush(db: &PgConnectOptions, batch_size: usize, prefetch: u16) {
    let mut config = test_config(&database_url(db));
    config.inbox.batch_size = batch_size;
    config.inbox.prefetch = prefetch;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let first = spawn_app(config.clone()).await;
    let second = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let set = SetCustomerCreditRequest {
        customer_id: "customer-rush".into(),
        currency: "EUR".into(),
        amount: "50.00".into(),
    };
    first.client().await.set_customer_credit(set).await.unwrap();
    let commands: Vec<_> = (0..20)
        .flat_map(|_| [process_payment("customer-rush", "10.00"), process_payment("customer-calm", "10.00")])
        .collect();
    futures::future::join_all(commands.iter().map(|command| broker.process(command))).await;

    let replies = broker.replies(40).await;
    let of = |customer: &str| -> Vec<&str> {
        commands.iter().filter(|c| c.customer_id == customer).map(|c| c.order_id.as_str()).collect()
    };
    let (rush, calm) = (of("customer-rush"), of("customer-calm"));
    let captured = |orders: &[&str]| {
        replies.iter().filter(|r| matches!(r, Reply::Processed(_)) && orders.contains(&r.order_id())).count()
    };
    let declined = replies.iter().filter(|r| matches!(r, Reply::Declined(_))).count();
    assert_eq!((captured(&rush), captured(&calm), declined), (5, 20, 15));
    let mut answered: Vec<&str> = replies.iter().map(Reply::order_id).collect();
    answered.sort_unstable();
    let mut sent: Vec<&str> = commands.iter().map(|c| c.order_id.as_str()).collect();
    sent.sort_unstable();
    assert_eq!(answered, sent, "every order answered once");
    assert_eq!(second.credit("customer-rush", "EUR").await, ("50.00".into(), "50.00".into()));
    let pool = pool(db).await;
    assert_eq!(second.credit("customer-calm", "EUR").await, ("1000.00".into(), "200.00".into()));
    assert_eq!(count(&pool, "SELECT count(*) FROM payments WHERE status = 'CAPTURED'").await, 25);
    first.stop().await;
    second.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_refund_racing_its_payment_never_leaves_it_captured(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db));
    config.inbox.batch_size = 1;
    config.inbox.prefetch = 10;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let first = spawn_app(config.clone()).await;
    let second = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let publisher = &broker;
    let payments: Vec<_> = (0..20).map(|_| process_payment("customer-race", "1.00")).collect();
    let refunds: Vec<_> = payments.iter().map(|p| refund_payment(&p.order_id)).collect();
    let sends = payments.iter().zip(&refunds).map(|(payment, refund)| async move {
        futures::join!(publisher.process(payment), publisher.refund(refund));
    });
    futures::future::join_all(sends).await;

    let replies = broker.replies(40).await;
    for payment in &payments {
        let of_order: Vec<&Reply> = replies.iter().filter(|r| r.order_id() == payment.order_id).collect();
        assert_eq!(of_order.len(), 2, "{of_order:?}");
        let captured = of_order.iter().any(|r| matches!(r, Reply::Processed(_)));
        let given_back = of_order.iter().any(|r| matches!(r, Reply::Refunded(r) if r.was_captured));
        assert_eq!(captured, given_back, "a capture is given back exactly when there was one: {of_order:?}");
    }
    assert_eq!(first.credit("customer-race", "EUR").await.1, "0.00");
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM payments WHERE status = 'CAPTURED'").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM payments").await, 20);
    first.stop().await;
    second.stop().await;
    broker.delete(&topology).await;
}
