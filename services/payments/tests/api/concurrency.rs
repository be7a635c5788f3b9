//! Payments of one customer decided at the same time by two replicas.

use contracts::payments::v1::SetCustomerCreditRequest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn twenty_payments_at_once_capture_exactly_what_the_limit_allows(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db));
    // One command per transaction, several in flight per replica: as much overlap as there can be.
    config.inbox.batch_size = 1;
    config.inbox.prefetch = 10;
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
    let commands: Vec<_> = (0..20).map(|_| process_payment("customer-rush", "10.00")).collect();
    futures::future::join_all(commands.iter().map(|command| broker.process(command))).await;

    let replies = broker.replies(20).await;
    let captured = replies.iter().filter(|r| matches!(r, Reply::Processed(_))).count();
    let declined = replies.iter().filter(|r| matches!(r, Reply::Declined(_))).count();
    assert_eq!((captured, declined), (5, 15));
    let mut answered: Vec<&str> = replies.iter().map(Reply::order_id).collect();
    answered.sort_unstable();
    let mut sent: Vec<&str> = commands.iter().map(|c| c.order_id.as_str()).collect();
    sent.sort_unstable();
    assert_eq!(answered, sent, "every order answered once");
    assert_eq!(second.credit("customer-rush", "EUR").await, ("50.00".into(), "50.00".into()));
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM payments WHERE status = 'CAPTURED'").await, 5);
    first.stop().await;
    second.stop().await;
    broker.delete(&topology).await;
}
