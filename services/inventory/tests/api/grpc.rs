//! InventoryService: validation naming each field, NOT_FOUND, unknown skus
//! with no stock, and stock that may not fall below what is reserved.

use contracts::inventory::v1::{GetReservationRequest, GetStockRequest};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::*;

/// The fields a status's BadRequest names.
fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status.get_details_bad_request().expect("a BadRequest");
    bad_request.field_violations.into_iter().map(|v| v.field).collect()
}

#[sqlx::test(migrations = false)]
async fn bad_requests_name_their_field_and_unknown_things_are_reported(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    for bad in ["", "A\u{7}", "A\nB", &"x".repeat(65)] {
        assert_eq!(fields(&app.set_stock(bad, 1).await.unwrap_err()), ["sku"], "{bad:?}");
        let request = GetStockRequest { sku: bad.to_owned() };
        assert_eq!(fields(&app.client().await.get_stock(request).await.unwrap_err()), ["sku"]);
    }
    let longest = "x".repeat(64);
    assert_eq!(app.set_stock(&longest, 2).await.unwrap().on_hand, 2);
    assert_eq!(app.stock("NEVER-SET").await, (0, 0, 0), "an unknown sku has no stock");
    assert_eq!(count(&pool(&db).await, "SELECT count(*) FROM stock").await, 1, "nothing invalid was written");

    let mut client = app.client().await;
    for bad in ["", "42", "not-a-uuid"] {
        let request = GetReservationRequest { order_id: bad.to_owned() };
        assert_eq!(fields(&client.get_reservation(request).await.unwrap_err()), ["order_id"]);
    }
    let request = GetReservationRequest { order_id: Uuid::new_v4().to_string() };
    assert_eq!(client.get_reservation(request).await.unwrap_err().code(), Code::NotFound);
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn stock_is_never_set_below_what_is_reserved(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    broker.reserve(&reserve(Uuid::new_v4(), vec![line("ABC-1", 4)], "corr-below")).await;
    assert!(matches!(broker.reply().await.reply, Reply::Reserved(_)));

    let refused = app.set_stock("ABC-1", 3).await.unwrap_err();
    assert_eq!(fields(&refused), ["on_hand"]);
    assert_eq!(app.stock("ABC-1").await, (5, 4, 1), "unchanged");
    let stock = app.set_stock("ABC-1", 4).await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.available), (4, 4, 0));
    let stock = app.set_stock("ABC-1", 9).await.unwrap();
    assert_eq!((stock.on_hand, stock.reserved, stock.available), (9, 4, 5));
    app.stop().await;
    broker.delete(&topology).await;
}
