//! ReserveInventory and ReleaseInventory: the effect on stock, the
//! reservation, and the reply on the exchange.

use contracts::{
    Routed,
    inventory::v1::{GetReservationRequest, InventoryReserved, ReservationStatus},
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn a_reservation_within_stock_holds_every_line(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    app.set_stock("XYZ-2", 3).await.unwrap();
    let order_id = Uuid::new_v4();
    // ABC-1 twice: the lines of one sku are summed.
    let command = reserve(order_id, vec![line("ABC-1", 2), line("XYZ-2", 1), line("ABC-1", 1)], "corr-reserve");
    broker.reserve(&command).await;

    let delivered = broker.reply().await;
    let Reply::Reserved(reply) = &delivered.reply else { panic!("{delivered:?}") };
    assert_eq!(
        (reply.order_id.as_str(), reply.correlation_id.as_str()),
        (order_id.to_string().as_str(), "corr-reserve")
    );
    assert_ne!(reply.event_id, command.event_id, "a reply has an event id of its own");
    assert_eq!(delivered.message_id, reply.event_id);
    assert_eq!(delivered.message_type, InventoryReserved::MESSAGE_TYPE);
    assert_eq!(delivered.correlation_header.as_deref(), Some("corr-reserve"));
    assert!(reply.occurred_at.is_some());
    assert_eq!(app.stock("ABC-1").await, (5, 3, 2));
    assert_eq!(app.stock("XYZ-2").await, (3, 1, 2));

    let request = GetReservationRequest { order_id: order_id.to_string() };
    let reservation = app.client().await.get_reservation(request).await.unwrap().into_inner().reservation.unwrap();
    assert_eq!(reservation.reservation_id, reply.reservation_id);
    assert_eq!(reservation.status(), ReservationStatus::Reserved);
    assert_eq!(reservation.lines, [line("ABC-1", 3), line("XYZ-2", 1)]);
    let metrics = testkit::scrape_metrics(app.metrics_addr).await;
    let reserved = [("command", "reserve"), ("outcome", "reserved")];
    assert_eq!(testkit::metric_sample(&metrics, "inventory_commands_total", &reserved), Some(1.0));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn one_short_line_holds_nothing_on_any_line(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    app.set_stock("XYZ-2", 1).await.unwrap();
    let order_id = Uuid::new_v4();
    broker.reserve(&reserve(order_id, vec![line("ABC-1", 2), line("XYZ-2", 3)], "corr-short")).await;

    let delivered = broker.reply().await;
    let Reply::Failed(reply) = &delivered.reply else { panic!("{delivered:?}") };
    assert_eq!(reply.detail, "sku XYZ-2: 3 requested, 1 available");
    assert_eq!((reply.order_id.clone(), reply.correlation_id.as_str()), (order_id.to_string(), "corr-short"));
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    assert_eq!(app.stock("XYZ-2").await, (1, 0, 1));
    let request = GetReservationRequest { order_id: order_id.to_string() };
    let reservation = app.client().await.get_reservation(request).await.unwrap().into_inner().reservation.unwrap();
    assert_eq!(reservation.status(), ReservationStatus::Rejected);
    assert_eq!(reservation.lines, [line("ABC-1", 2), line("XYZ-2", 3)], "what was asked is kept");
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_reserve_and_a_release_sent_together_are_answered_in_order(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    let order_id = Uuid::new_v4();
    broker.reserve(&reserve(order_id, vec![line("ABC-1", 2)], "corr-together")).await;
    broker.release(&release(order_id, "corr-together")).await;

    assert!(matches!(broker.reply().await.reply, Reply::Reserved(_)));
    let Reply::Released(released) = broker.reply().await.reply else { panic!("not released") };
    assert!(released.was_reserved);
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn an_unknown_sku_holds_nothing_on_any_line(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    broker.reserve(&reserve(Uuid::new_v4(), vec![line("ABC-1", 1), line("NOPE", 1)], "corr-unknown")).await;

    let delivered = broker.reply().await;
    let Reply::Failed(reply) = &delivered.reply else { panic!("{delivered:?}") };
    assert_eq!(reply.detail, "sku NOPE: unknown");
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    assert_eq!(app.stock("NOPE").await, (0, 0, 0));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_release_after_the_reservation_gives_the_stock_back(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    let order_id = Uuid::new_v4();
    broker.reserve(&reserve(order_id, vec![line("ABC-1", 4)], "corr-release")).await;
    let Reply::Reserved(reserved) = broker.reply().await.reply else { panic!("not reserved") };
    assert_eq!(app.stock("ABC-1").await, (5, 4, 1));

    broker.release(&release(order_id, "corr-release")).await;
    let Reply::Released(released) = broker.reply().await.reply else { panic!("not released") };
    assert!(released.was_reserved);
    assert_eq!(released.reservation_id, reserved.reservation_id);
    assert_eq!(released.correlation_id, "corr-release");
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    let request = GetReservationRequest { order_id: order_id.to_string() };
    let reservation = app.client().await.get_reservation(request).await.unwrap().into_inner().reservation.unwrap();
    assert_eq!(reservation.status(), ReservationStatus::Released);

    // A second release (a new event) has nothing left to give back.
    broker.release(&release(order_id, "corr-release")).await;
    let Reply::Released(again) = broker.reply().await.reply else { panic!("not released") };
    assert!(!again.was_reserved);
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));

    // Asked for again once released: nothing is held again.
    broker.reserve(&reserve(order_id, vec![line("ABC-1", 4)], "corr-release")).await;
    let Reply::Failed(failed) = broker.reply().await.reply else { panic!("held again") };
    assert_eq!(failed.detail, "the reservation was released");
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_release_before_the_reservation_makes_it_fail(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    let order_id = Uuid::new_v4();
    broker.release(&release(order_id, "corr-early")).await;
    let Reply::Released(released) = broker.reply().await.reply else { panic!("not released") };
    assert!(!released.was_reserved);
    assert_eq!(released.order_id, order_id.to_string());

    broker.reserve(&reserve(order_id, vec![line("ABC-1", 1)], "corr-early")).await;
    let Reply::Failed(failed) = broker.reply().await.reply else { panic!("the late reservation did not fail") };
    assert_eq!(failed.detail, "released before it was reserved");
    assert_eq!(failed.reservation_id, released.reservation_id);
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    let request = GetReservationRequest { order_id: order_id.to_string() };
    let reservation = app.client().await.get_reservation(request).await.unwrap().into_inner().reservation.unwrap();
    assert_eq!(reservation.status(), ReservationStatus::Rejected);
    assert!(reservation.lines.is_empty(), "nothing is held");
    app.stop().await;
    broker.delete(&topology).await;
}
