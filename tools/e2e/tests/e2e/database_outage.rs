use std::time::Duration;

use testkit::FaultProxy;

use crate::support::{
    api::{self, NOT_SERVING, SERVING},
    process::Spec,
    scratch::Scratch,
};

/// Postgres goes away for both processes (a fault proxy in front of it cuts
/// every connection and refuses new ones) for longer than a readiness window:
/// readiness (`""` and the service names) goes NOT_SERVING on both, the health
/// name `liveness`, which the Kubernetes liveness probes ask, stays SERVING
/// throughout, and once the database is back both are ready again and take
/// orders, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_unreadies_both_services_and_their_liveness_stays_serving() {
    let scratch = Scratch::new().await;
    let proxy = FaultProxy::start(testkit::socket_addr_of(&scratch.orders_db_url())).await;
    let orders_url = testkit::via(&scratch.orders_db_url(), proxy.addr());
    let notifications_url = testkit::via(&scratch.notifications_db_url(), proxy.addr());
    let mut orders = Spec::orders(&scratch).env("ORDERS_DATABASE_URL", &orders_url).start().await;
    let mut notifications =
        Spec::notifications(&scratch).env("NOTIFICATIONS_DATABASE_URL", &notifications_url).start().await;
    let pids = (orders.pid(), notifications.pid());
    let readiness = [
        (orders.addr(), "pulse.orders.v1.OrderService"),
        (orders.addr(), ""),
        (notifications.addr(), "pulse.notifications.v1.NotificationService"),
        (notifications.addr(), ""),
    ];
    for addr in [orders.addr(), notifications.addr()] {
        assert_eq!(api::health(addr, "liveness").await, Some(SERVING));
    }

    proxy.cut();
    for (addr, name) in readiness {
        let down = api::health_becomes(addr, name, NOT_SERVING, Duration::from_secs(10)).await;
        assert!(down, "{addr} {name:?} goes NOT_SERVING without its database");
    }
    // Asked every second for 12 s more, as a liveness probe would be.
    for _ in 0..12 {
        for addr in [orders.addr(), notifications.addr()] {
            assert_eq!(api::health(addr, "liveness").await, Some(SERVING), "{addr} liveness during the outage");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(api::health(orders.addr(), "").await, Some(NOT_SERVING), "still unready at the end of the outage");

    proxy.restore();
    for (addr, name) in readiness {
        let up = api::health_becomes(addr, name, SERVING, Duration::from_secs(15)).await;
        assert!(up, "{addr} {name:?} is SERVING again");
    }
    let taken = testkit::eventually(Duration::from_secs(15), || async {
        let mut client = api::orders(orders.addr());
        client.create_order(api::order_request("after-db-outage")).await.is_ok()
    })
    .await;
    assert!(taken, "orders are taken again");
    assert!(orders.is_running() && notifications.is_running(), "both processes survived the outage");
    assert_eq!((orders.pid(), notifications.pid()), pids, "no restarts");
    assert_eq!((orders.starts(), notifications.starts()), (1, 1));
}
