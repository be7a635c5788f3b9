//! The database going away under the API.

use contracts::payments::v1::GetCustomerCreditRequest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn the_api_answers_unavailable_while_the_database_is_away(_: PgPoolOptions, db: PgConnectOptions) {
    let direct = database_url(&db);
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&direct)).await;
    let config = test_config(&testkit::via(&direct, proxy.addr()));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    assert_eq!(app.credit("customer-outage", "EUR").await.0, "1000.00");

    proxy.cut();
    let request = GetCustomerCreditRequest { customer_id: "customer-outage".into(), currency: "EUR".into() };
    let status = app.client().await.get_customer_credit(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    proxy.restore();
    let app_ref = &app;
    eventually(|| async move {
        let request = GetCustomerCreditRequest { customer_id: "customer-outage".into(), currency: "EUR".into() };
        app_ref.client().await.get_customer_credit(request).await.is_ok()
    })
    .await;
    app.stop().await;
    delete_topology(&topology).await;
}
