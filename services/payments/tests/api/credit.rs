//! `PaymentService` over gRPC: credit, payments, and the requests it refuses.

use contracts::payments::v1::{GetCustomerCreditRequest, GetPaymentRequest, SetCustomerCreditRequest};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::*;

/// The fields a BadRequest detail names.
fn fields(status: &tonic::Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
    bad_request.field_violations.iter().map(|v| v.field.clone()).collect()
}

#[sqlx::test(migrations = false)]
async fn credit_defaults_then_follows_what_is_set(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    assert_eq!(app.credit("customer-new", "EUR").await, ("1000.00".into(), "0.00".into()));
    assert_eq!(app.credit("customer-new", "JPY").await, ("1000".into(), "0".into()));
    let mut client = app.client().await;
    let set =
        SetCustomerCreditRequest { customer_id: "customer-new".into(), currency: "EUR".into(), amount: "250.5".into() };
    let credit = client.set_customer_credit(set).await.unwrap().into_inner().credit.unwrap();
    assert_eq!((credit.limit.as_str(), credit.used.as_str()), ("250.50", "0.00"));
    assert_eq!(app.credit("customer-new", "EUR").await, ("250.50".into(), "0.00".into()));
    let zero =
        SetCustomerCreditRequest { customer_id: "customer-new".into(), currency: "EUR".into(), amount: "0".into() };
    assert_eq!(client.set_customer_credit(zero).await.unwrap().into_inner().credit.unwrap().limit, "0.00");
    assert_eq!(app.credit("customer-new", "USD").await.0, "1000.00", "other currencies keep the default");
    app.stop().await;
    delete_topology(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn bad_requests_name_their_fields_and_write_nothing(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let mut client = app.client().await;
    let set = SetCustomerCreditRequest { customer_id: String::new(), currency: "euro".into(), amount: "-5".into() };
    let status = client.set_customer_credit(set).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["customer_id", "currency", "amount"]);
    let set = SetCustomerCreditRequest { customer_id: "c-1".into(), currency: "EUR".into(), amount: "1.234".into() };
    assert_eq!(fields(&client.set_customer_credit(set).await.unwrap_err()), ["amount"]);
    let get = GetCustomerCreditRequest { customer_id: " c".into(), currency: "EUR".into() };
    assert_eq!(fields(&client.get_customer_credit(get).await.unwrap_err()), ["customer_id"]);
    let status = client.get_payment(GetPaymentRequest { order_id: "42".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["order_id"]);
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM customer_credit").await, 0);
    app.stop().await;
    delete_topology(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn an_order_without_a_command_has_no_payment(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let request = GetPaymentRequest { order_id: Uuid::new_v4().to_string() };
    let status = app.client().await.get_payment(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
    delete_topology(&topology).await;
}
