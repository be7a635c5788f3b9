//! How a delivery reaches a dispatcher without waiting for its poll: handed
//! over in memory when the replica that wrote it dispatches, woken by the
//! commit's `pg_notify` when another replica does.

use std::time::{Duration, Instant};

use contracts::notifications::v1::DeliveryStatus;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use testkit::receiver::WebhookReceiver;

use super::support::*;
use crate::helpers::*;

/// The channel the dispatchers LISTEN on.
const CHANNEL: &str = "pulse_deliveries";

/// Three orders, each delivered once on its first attempt well before any poll.
async fn three_delivered_in_time(setup: &Setup) {
    for _ in 0..3 {
        let started = Instant::now();
        let (order_id, _) = setup.order().await;
        let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
        assert_eq!(delivery.attempts, 1);
        assert!(started.elapsed() < Duration::from_secs(10), "delivered after {:?}", started.elapsed());
    }
}

#[sqlx::test(migrations = false)]
async fn a_replica_hands_its_own_deliveries_to_its_dispatcher_without_a_wake_up(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    let mut config = config(&db);
    // Only the handover can send them in time.
    config.delivery.poll_interval = Duration::from_secs(120);
    let setup = start(config, &db).await;
    let receiver = WebhookReceiver::start().await;
    setup.webhook(&receiver.url("/"), &[]).await;
    let mut listener = PgListener::connect(&database_url(&db)).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    // The dispatcher's first look (at its start) has come and gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    three_delivered_in_time(&setup).await;
    assert_eq!(receiver.received().len(), 3);
    // Written claimed by the replica that sends them: nobody else is woken.
    let woken = tokio::time::timeout(Duration::from_millis(300), listener.try_recv()).await;
    assert!(woken.is_err(), "a dispatcher was woken: {woken:?}");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_commit_wakes_another_replicas_dispatcher_without_waiting_for_its_poll(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    // One replica consumes and does not dispatch...
    let mut writer = config(&db);
    writer.delivery.enabled = false;
    let setup = start(writer, &db).await;
    // ...the other dispatches, polling too seldom to matter, and does not consume.
    let mut sender = config(&db);
    sender.consumer_enabled = false;
    sender.delivery.poll_interval = Duration::from_secs(120);
    let dispatcher = spawn_app(sender).await;
    let receiver = WebhookReceiver::start().await;
    setup.webhook(&receiver.url("/"), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    three_delivered_in_time(&setup).await;
    assert_eq!(receiver.received().len(), 3);
    dispatcher.stop().await;
    setup.app.stop().await;
}
