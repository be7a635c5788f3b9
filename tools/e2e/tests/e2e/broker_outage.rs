use std::time::Duration;

use testkit::FaultProxy;

use crate::support::{
    api::{self, NOT_SERVING, SERVING},
    db,
    process::Spec,
    scratch::Scratch,
};

/// RabbitMQ goes away for both processes (a fault proxy in front of it cuts
/// every connection and refuses new ones): orders are still accepted, their
/// events wait in the outbox, the API stays SERVING while the relay's and the
/// consumer's own health names show the outage; once the broker is back,
/// every order gets exactly one notification, and neither process restarted.
#[tokio::test(flavor = "multi_thread")]
async fn orders_taken_during_a_broker_outage_are_notified_once_when_it_returns() {
    let scratch = Scratch::new().await;
    let proxy = FaultProxy::start(testkit::socket_addr_of(&scratch.amqp_url())).await;
    let amqp_via_proxy = testkit::via(&scratch.amqp_url(), proxy.addr());
    let mut notifications = Spec::notifications(&scratch).env("AMQP_URL", &amqp_via_proxy).start().await;
    let mut orders = Spec::orders(&scratch).env("AMQP_URL", &amqp_via_proxy).start().await;
    let pids = (orders.pid(), notifications.pid());
    let orders_db = scratch.orders_pool().await;
    let notifications_db = scratch.notifications_pool().await;

    proxy.cut();
    let mut created = Vec::new();
    for i in 0..10 {
        created.push(api::create_order(orders.addr(), &format!("outage-{i}")).await);
    }
    let outage = Duration::from_secs(15);
    let relay_down = api::health_becomes(orders.addr(), "pulse.orders.v1.OutboxRelay", NOT_SERVING, outage).await;
    assert!(relay_down, "the relay's health shows the outage");
    let consumer = "pulse.notifications.v1.Consumer";
    let consumer_down = api::health_becomes(notifications.addr(), consumer, NOT_SERVING, outage).await;
    assert!(consumer_down, "the consumer's health shows the outage");
    for name in ["", "pulse.orders.v1.OrderService"] {
        assert_eq!(api::health(orders.addr(), name).await, Some(SERVING), "orders {name:?} stays SERVING");
    }
    assert_eq!(api::health(notifications.addr(), "").await, Some(SERVING), "notifications stays SERVING");
    assert_eq!(db::count(&orders_db, "SELECT count(*) FROM outbox_messages").await, 10, "the events are pending");
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM notifications").await, 0);

    proxy.restore();
    let order_ids = db::uuids(created.iter().map(|c| &c.order_id));
    db::assert_one_notification_each(&notifications_db, &order_ids, Duration::from_secs(40)).await;
    let drained = db::outbox_drains(&orders_db, Duration::from_secs(10)).await;
    assert!(drained, "the outbox drains");
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM notifications").await, 10);

    assert!(orders.is_running() && notifications.is_running(), "both processes survived the outage");
    assert_eq!((orders.pid(), notifications.pid()), pids, "no restarts");
    assert_eq!((orders.starts(), notifications.starts()), (1, 1));
    for (addr, name) in [(orders.addr(), "pulse.orders.v1.OutboxRelay"), (notifications.addr(), consumer)] {
        assert!(api::health_becomes(addr, name, SERVING, Duration::from_secs(15)).await, "{name} is SERVING again");
    }
}
