use std::time::Duration;

use contracts::events::v1::{ORDER_CREATED_TYPE, OrderCreated};
use prost::Message;
use uuid::Uuid;

use crate::support::{
    System, api,
    broker::{Broker, DEAD_LETTER_QUEUE, MAIN_QUEUE, header, properties},
    db,
    process::Spec,
    scratch::Scratch,
};

/// Notifications is stopped while orders come in: the events wait in its
/// queue, and when it starts again each is processed exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn events_wait_in_the_queue_while_notifications_is_down_and_are_processed_once_on_its_return() {
    let mut system = System::start().await;
    let status = system.notifications.terminate().await;
    assert_eq!(status.code(), Some(0), "notifications stops cleanly on SIGTERM");

    let mut created = Vec::new();
    for i in 0..20 {
        created.push(api::create_order(system.orders.addr(), &format!("while-down-{i}")).await);
    }
    let broker = Broker::connect(&system.scratch).await;
    // At least: a relay may publish a copy twice (at least once); the inbox is what makes it count once.
    let queued = testkit::eventually(Duration::from_secs(20), || async { broker.ready(MAIN_QUEUE).await >= 20 }).await;
    assert!(queued, "20 events wait in {MAIN_QUEUE}, found {}", broker.ready(MAIN_QUEUE).await);
    let orders_db = system.scratch.orders_pool().await;
    let published = db::outbox_drains(&orders_db, Duration::from_secs(10)).await;
    assert!(published, "every event left the outbox");
    let notifications_db = system.scratch.notifications_pool().await;
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM notifications").await, 0);

    system.notifications.start().await;
    let order_ids = db::uuids(created.iter().map(|c| &c.order_id));
    db::assert_one_notification_each(&notifications_db, &order_ids, Duration::from_secs(30)).await;
    let drained = testkit::eventually(Duration::from_secs(10), || async { broker.ready(MAIN_QUEUE).await == 0 }).await;
    assert!(drained, "the queue drains");
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM processed_events").await, 20);
}

/// A real OrderCreated (taken from the outbox of an API-only orders process,
/// so nothing else has published it yet) published by hand twice with the
/// same message id, then a third time by a relay process: one notification.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_published_three_times_makes_one_notification() {
    let scratch = Scratch::new().await;
    let notifications = Spec::notifications(&scratch).start().await;
    let orders_api = Spec::orders(&scratch).env("ORDERS_ROLE", "api").start().await;
    let created = api::create_order(orders_api.addr(), "twice").await;

    let orders_db = scratch.orders_pool().await;
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox_messages WHERE event_id = $1")
        .bind(Uuid::parse_str(&created.event_id).unwrap())
        .fetch_one(&orders_db)
        .await
        .expect("the event waits in the outbox: no relay runs");
    let event = OrderCreated::decode(payload.as_slice()).expect("the outbox holds an OrderCreated");
    assert_eq!(
        (event.event_id.as_str(), event.order_id.as_str()),
        (created.event_id.as_str(), created.order_id.as_str())
    );

    let broker = Broker::connect(&scratch).await;
    let props = properties(&event.event_id, ORDER_CREATED_TYPE, &event.correlation_id);
    broker.publish(props.clone(), &payload).await;
    broker.publish(props, &payload).await;
    let notifications_db = scratch.notifications_pool().await;
    let order_ids = db::uuids([&created.order_id]);
    db::assert_one_notification_each(&notifications_db, &order_ids, Duration::from_secs(15)).await;

    // The relay publishes the outbox's own copy: a third one.
    let _relay = Spec::orders(&scratch).env("ORDERS_ROLE", "relay").start().await;
    let published = db::outbox_drains(&orders_db, Duration::from_secs(15)).await;
    assert!(published, "the relay publishes the pending event");
    // One queue, one consumer: once a later order is notified, every copy before it was handled.
    let later = api::create_order(orders_api.addr(), "after-the-copies").await;
    let order_ids = db::uuids([&created.order_id, &later.order_id]);
    db::assert_one_notification_each(&notifications_db, &order_ids, Duration::from_secs(15)).await;
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM notifications").await, 2);
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM processed_events").await, 2);
    assert_eq!(api::notification_count(notifications.addr(), &created.order_id).await, 1);
}

/// Garbage with the right `type`, and a well-formed message of a type nobody
/// consumes: both land in the dead-letter queue with their reason (and their
/// correlation id), and the events after them still become notifications.
#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_with_their_reason_and_later_events_still_flow() {
    let system = System::start().await;
    let broker = Broker::connect(&system.scratch).await;

    let garbage_id = Uuid::new_v4().to_string();
    // 0xff… is a varint that never ends: no protobuf decoder accepts it.
    let garbage = [[0xff_u8; 12].as_slice(), b"not an OrderCreated"].concat();
    broker.publish(properties(&garbage_id, ORDER_CREATED_TYPE, "e2e-poison-garbage"), &garbage).await;
    let unknown_id = Uuid::new_v4().to_string();
    let event = OrderCreated {
        event_id: unknown_id.clone(),
        order_id: Uuid::new_v4().to_string(),
        customer_id: "c-poison".into(),
        amount: "1.00".into(),
        currency: "EUR".into(),
        occurred_at: None,
        correlation_id: "e2e-poison-unknown".into(),
    };
    let unknown = properties(&unknown_id, "pulse.events.v1.OrderTeleported", "e2e-poison-unknown");
    broker.publish(unknown, &event.encode_to_vec()).await;

    let dead_lettered =
        testkit::eventually(Duration::from_secs(20), || async { broker.ready(DEAD_LETTER_QUEUE).await >= 2 }).await;
    assert!(dead_lettered, "both reach {DEAD_LETTER_QUEUE}");
    let mut reasons: Vec<(String, String, String)> = broker
        .take_all(DEAD_LETTER_QUEUE)
        .await
        .iter()
        .map(|message| {
            let props = &message.delivery.properties;
            let id = props.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
            let reason = header(props, "x-dead-letter-reason").unwrap_or_default();
            let correlation = header(props, "x-correlation-id").unwrap_or_default();
            assert!(header(props, "x-error").is_some_and(|e| !e.is_empty()), "{id} carries its error");
            (id, reason, correlation)
        })
        .collect();
    reasons.sort();
    let mut expected = vec![
        (garbage_id, "decode_error".to_owned(), "e2e-poison-garbage".to_owned()),
        (unknown_id, "unknown_type".to_owned(), "e2e-poison-unknown".to_owned()),
    ];
    expected.sort();
    assert_eq!(reasons, expected);

    let created = api::create_order(system.orders.addr(), "after-poison").await;
    let notifications_db = system.scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids([&created.order_id]), Duration::from_secs(15)).await;
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM notifications").await, 1, "poison made none");
}
