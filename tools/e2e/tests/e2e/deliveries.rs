//! Webhook deliveries through the real binaries: notifications SIGKILLed in
//! the middle of 1,000 deliveries and started again delivers every one, a
//! second copy only ever with a webhook-id already received.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use contracts::notifications::v1::{
    CreateEndpointRequest, EndpointKind, delivery_service_client::DeliveryServiceClient,
};
use testkit::receiver::{Reply, WebhookReceiver};

use crate::support::{System, api, db, delivering};

const ORDERS: usize = 1_000;
/// Notifications is killed once this many webhooks arrived.
const KILL_AFTER: usize = 250;

#[tokio::test(flavor = "multi_thread")]
async fn serial_notifications_killed_mid_delivery_delivers_every_webhook() {
    let receiver = WebhookReceiver::start().await;
    // Slow enough that the kill lands mid-way: 4 at a time, 10 ms each.
    receiver.default_reply(Reply::status(204).after(Duration::from_millis(10)));
    let mut system = System::start_with(delivering).await;

    let mut client = DeliveryServiceClient::new(api::channel(system.notifications.addr()));
    let request = CreateEndpointRequest {
        kind: EndpointKind::Webhook as i32,
        url: receiver.url("/pulse"),
        event_types: vec!["order.created".into()],
        ..Default::default()
    };
    client.create_endpoint(request).await.expect("create the endpoint");

    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(api::burst(system.orders.addr(), ORDERS, 16, acked));
    let before_kill = receiver.wait_for(KILL_AFTER, Duration::from_secs(120)).await.len();
    assert!(before_kill >= KILL_AFTER, "only {before_kill} webhooks arrived");
    let status = system.notifications.kill().await;
    assert!(!status.success(), "killed: {status}");
    let burst = tokio::time::timeout(Duration::from_secs(120), load).await.expect("the burst ends").unwrap();
    assert_eq!(burst.acknowledged.len(), ORDERS, "orders kept taking orders");
    system.notifications.start().await;

    let pool = system.scratch.notifications_pool().await;
    let all_delivered = testkit::eventually(Duration::from_secs(180), || async {
        db::count(&pool, "SELECT count(*) FROM deliveries WHERE status = 'delivered'").await == ORDERS as i64
    })
    .await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM deliveries GROUP BY status").fetch_all(&pool).await.unwrap();
    assert!(all_delivered, "not every delivery is DELIVERED: {statuses:?}");
    assert_eq!(db::count(&pool, "SELECT count(*) FROM deliveries").await, ORDERS as i64, "one delivery per order");

    let ids: HashSet<String> = sqlx::query_scalar("SELECT delivery_id::text FROM deliveries")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let received = receiver.received();
    let mut copies: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for request in &received {
        let id = request.header("webhook-id").expect("a webhook-id").to_owned();
        assert!(ids.contains(&id), "a webhook-id that is no delivery: {id}");
        copies.entry(id).or_default().push(request.body.clone());
    }
    assert_eq!(copies.len(), ORDERS, "every delivery was received");
    // A second copy is the same delivery: the same id and the same body.
    assert!(copies.values().all(|bodies| bodies.iter().all(|b| b == &bodies[0])));
    let duplicates = received.len() - copies.len();
    eprintln!("{} webhooks received for {ORDERS} deliveries ({duplicates} second copies)", received.len());
}
