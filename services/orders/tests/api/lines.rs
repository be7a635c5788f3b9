//! CreateOrder's lines: each bad line named in the INVALID_ARGUMENT, and
//! nothing written; good lines stored and returned.

use contracts::orders::v1::{GetOrderRequest, OrderLine};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{Options, bad_fields, order, spawn_app};

fn line(sku: &str, quantity: u32) -> OrderLine {
    OrderLine { sku: sku.into(), quantity }
}

#[sqlx::test(migrations = false)]
async fn bad_lines_are_refused_naming_each_field_and_nothing_is_written(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let long = "x".repeat(65);
    let cases: Vec<(Vec<OrderLine>, Vec<&str>)> = vec![
        (vec![line("", 1)], vec!["lines[0].sku"]),
        (vec![line("ok", 1), line("ok", 0)], vec!["lines[1].quantity"]),
        (vec![line("a", 1); 101], vec!["lines"]),
        (vec![line(&long, 2)], vec!["lines[0].sku"]),
        (vec![line(" lead", 0)], vec!["lines[0].sku", "lines[0].quantity"]),
    ];
    for (lines, fields) in cases {
        let request = contracts::orders::v1::CreateOrderRequest { lines, ..order("c-1", "1.00", "EUR") };
        let status = app.client.create_order(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), fields);
    }
    for table in ["orders", "order_lines", "sagas", "outbox_messages"] {
        assert_eq!(app.count(table).await, 0, "{table}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn lines_are_stored_with_the_saga_and_its_first_command(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let request = contracts::orders::v1::CreateOrderRequest {
        lines: vec![line("ABC-1", 3), line(&"y".repeat(64), 1)],
        ..order("c-1", "9.99", "EUR")
    };
    let created = app.client.create_order(request).await.unwrap().into_inner();
    let got = app.client.get_order(GetOrderRequest { order_id: created.order_id.clone() }).await.unwrap().into_inner();
    let order = got.order.unwrap();
    assert_eq!(order.lines, [line("ABC-1", 3), line(&"y".repeat(64), 1)]);
    assert_eq!(order.updated_at, order.created_at);
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT routing_key FROM outbox_messages ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(keys, ["order.created", "payment.process"]);
    let step: String = sqlx::query_scalar("SELECT step FROM sagas").fetch_one(&app.pool).await.unwrap();
    assert_eq!(step, "PAYMENT");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_retry_must_carry_the_same_lines(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    let request = |lines: Vec<OrderLine>| contracts::orders::v1::CreateOrderRequest {
        request_id: "0190a0a0-0000-7000-8000-000000000001".into(),
        lines,
        ..order("c-1", "5.00", "EUR")
    };
    let first = app.client.create_order(request(vec![line("ABC-1", 2)])).await.unwrap().into_inner();
    let again = app.client.create_order(request(vec![line("ABC-1", 2)])).await.unwrap().into_inner();
    assert_eq!(again.order_id, first.order_id, "the same order");
    assert_eq!(again.order.unwrap().lines, [line("ABC-1", 2)]);
    let other = app.client.create_order(request(vec![line("ABC-1", 3)])).await.unwrap_err();
    assert_eq!((other.code(), bad_fields(&other)), (Code::InvalidArgument, vec!["request_id".to_owned()]));
    assert_eq!((app.count("orders").await, app.count("sagas").await, app.count("outbox_messages").await), (1, 1, 2));
    app.stop().await;
}

/// `SAGA_ENABLED=false`: the order and its lines, its OrderCreated alone; no
/// saga row, no ProcessPayment, and the order stays CREATED.
#[sqlx::test(migrations = false)]
async fn without_the_saga_an_order_writes_only_its_event(pool: PgPool) {
    let mut saga = orders::config::SagaConfig::new(
        secrecy::SecretString::from(testkit::amqp_url()),
        &testkit::unique("test.saga"),
    );
    saga.enabled = false;
    let mut app = spawn_app(&pool, Options { saga: Some(saga), ..Options::default() }).await;
    let request =
        contracts::orders::v1::CreateOrderRequest { lines: vec![line("ABC-1", 3)], ..order("c-1", "9.99", "EUR") };
    let created = app.client.create_order(request).await.unwrap().into_inner();
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT routing_key FROM outbox_messages ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(keys, ["order.created"]);
    assert_eq!((app.count("orders").await, app.count("order_lines").await, app.count("sagas").await), (1, 1, 0));
    let got = app.client.get_order(GetOrderRequest { order_id: created.order_id }).await.unwrap().into_inner();
    assert_eq!(got.order.unwrap().status(), contracts::orders::v1::OrderStatus::Created);
    app.stop().await;
}
