use std::time::Duration;

use crate::support::{System, api::grpcurl, db};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("grpcurl printed no JSON ({err}): {text}"))
}

/// A user's first steps, with grpcurl and server reflection only (no proto files).
#[tokio::test(flavor = "multi_thread")]
async fn an_order_made_with_grpcurl_becomes_a_notification_and_both_services_are_serving() {
    let system = System::start().await;
    let (orders, notifications) = (system.orders.addr(), system.notifications.addr());

    for (addr, service) in
        [(orders, "pulse.orders.v1.OrderService"), (notifications, "pulse.notifications.v1.NotificationService")]
    {
        for name in ["", service] {
            let body = format!(r#"{{"service":"{name}"}}"#);
            let (ok, out, err) = grpcurl(&["-d", &body], addr, "grpc.health.v1.Health/Check").await;
            assert!(ok, "health of {name:?} on {addr}: {err}");
            assert_eq!(json(&out)["status"], "SERVING", "{name:?} on {addr}");
        }
    }

    let body = r#"{"customer_id":"c-e2e","amount":"77.50","currency":"EUR"}"#;
    let (ok, out, err) = grpcurl(
        &["-H", "x-correlation-id: e2e-grpcurl-1", "-d", body],
        orders,
        "pulse.orders.v1.OrderService/CreateOrder",
    )
    .await;
    assert!(ok, "CreateOrder: {err}");
    let created = json(&out);
    assert_eq!(created["correlationId"], "e2e-grpcurl-1");
    let order_id = created["orderId"].as_str().expect("orderId").to_owned();
    let event_id = created["eventId"].as_str().expect("eventId").to_owned();

    let request = format!(r#"{{"order_id":"{order_id}"}}"#);
    let arrived = testkit::eventually(Duration::from_secs(15), || {
        let request = request.clone();
        async move {
            let (ok, out, _) = grpcurl(
                &["-d", &request],
                notifications,
                "pulse.notifications.v1.NotificationService/ListNotifications",
            )
            .await;
            ok && json(&out)["notifications"].as_array().is_some_and(|n| !n.is_empty())
        }
    })
    .await;
    assert!(arrived, "no notification for order {order_id} within 15 s");
    let (ok, out, err) =
        grpcurl(&["-d", &request], notifications, "pulse.notifications.v1.NotificationService/ListNotifications").await;
    assert!(ok, "ListNotifications: {err}");
    let listed = json(&out);
    let list = listed["notifications"].as_array().expect("a list of notifications");
    assert_eq!(list.len(), 1, "exactly one notification: {out}");
    assert_eq!(list[0]["orderId"], order_id.as_str());
    assert_eq!(list[0]["eventId"], event_id.as_str());
    assert_eq!(list[0]["correlationId"], "e2e-grpcurl-1");
    assert!(list[0]["message"].as_str().is_some_and(|m| m.contains("77.50 EUR")), "{out}");

    // The same, as the databases have it.
    let orders_db = system.scratch.orders_pool().await;
    assert_eq!(db::count(&orders_db, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(db::count(&orders_db, "SELECT count(*) FROM outbox_messages").await, 0, "the event left the outbox");
    let notifications_db = system.scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids([&order_id]), Duration::from_secs(1)).await;
    assert_eq!(db::count(&notifications_db, "SELECT count(*) FROM processed_events").await, 1);
}
