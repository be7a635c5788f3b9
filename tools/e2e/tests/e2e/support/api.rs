//! gRPC as a client sees it: health, CreateOrder, ListNotifications, grpcurl,
//! and a bounded burst of CreateOrder calls.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use contracts::{
    notifications::v1::{ListNotificationsRequest, notification_service_client::NotificationServiceClient},
    orders::v1::{CreateOrderRequest, CreateOrderResponse, order_service_client::OrderServiceClient},
};
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub(crate) const SERVING: i32 = 1;
pub(crate) const NOT_SERVING: i32 = 2;

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
}

/// A channel that connects on first use (and reconnects after a restart).
pub(crate) fn channel(addr: SocketAddr) -> Channel {
    endpoint(addr).connect_lazy()
}

pub(crate) fn orders(addr: SocketAddr) -> OrderServiceClient<Channel> {
    OrderServiceClient::new(channel(addr))
}

pub(crate) fn notifications(addr: SocketAddr) -> NotificationServiceClient<Channel> {
    NotificationServiceClient::new(channel(addr))
}

/// The serving status `addr` reports for `service`, None when it cannot be asked.
pub(crate) async fn health(addr: SocketAddr, service: &str) -> Option<i32> {
    let channel = tokio::time::timeout(Duration::from_secs(2), endpoint(addr).connect()).await.ok()?.ok()?;
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = HealthClient::new(channel).check(request).await.ok()?;
    Some(response.into_inner().status)
}

/// Waits (bounded) until `addr` reports `status` for `service`; true when it did.
pub(crate) async fn health_becomes(addr: SocketAddr, service: &str, status: i32, within: Duration) -> bool {
    testkit::eventually(within, || async move { health(addr, service).await == Some(status) }).await
}

pub(crate) fn order_request(customer: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.to_owned(),
        amount: "42.00".to_owned(),
        currency: "EUR".to_owned(),
        request_id: String::new(),
        lines: Vec::new(),
    }
}

/// CreateOrder with a correlation id; panics unless it succeeds.
pub(crate) async fn create_order(addr: SocketAddr, customer: &str) -> CreateOrderResponse {
    let mut request = tonic::Request::new(order_request(customer));
    request.metadata_mut().insert("x-correlation-id", format!("e2e-{customer}").parse().expect("ascii"));
    orders(addr)
        .create_order(request)
        .await
        .unwrap_or_else(|status| panic!("CreateOrder {customer}: {status}"))
        .into_inner()
}

/// How many notifications ListNotifications returns for `order_id`.
pub(crate) async fn notification_count(addr: SocketAddr, order_id: &str) -> usize {
    let request = ListNotificationsRequest { order_id: order_id.to_owned(), ..Default::default() };
    let response = notifications(addr).list_notifications(request).await.expect("ListNotifications");
    response.into_inner().notifications.len()
}

/// The messages of `order_id`'s notifications, oldest first, once there are
/// at least `count` of them (bounded wait).
pub(crate) async fn notification_messages(
    addr: SocketAddr,
    order_id: &str,
    count: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let request = ListNotificationsRequest { order_id: order_id.to_owned(), ..Default::default() };
        let response = notifications(addr).list_notifications(request).await.expect("ListNotifications");
        let messages: Vec<String> = response.into_inner().notifications.into_iter().map(|n| n.message).collect();
        if messages.len() >= count {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{order_id}: {} notifications after {within:?}",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a burst of CreateOrder calls got: the orders acknowledged (OK) and how many calls failed.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    /// `(order_id, event_id)` of every OK response.
    pub(crate) acknowledged: Vec<(String, String)>,
    pub(crate) failed: usize,
}

/// `total` CreateOrder calls, `concurrency` at a time, on one HTTP/2 channel;
/// `acked` counts OK responses as they arrive (for a test to act mid-burst).
/// Every call is bounded by the channel's 10 s timeout.
pub(crate) async fn burst(addr: SocketAddr, total: usize, concurrency: usize, acked: Arc<AtomicUsize>) -> Burst {
    let client = orders(addr);
    let results: Vec<_> = futures::stream::iter(0..total)
        .map(|i| {
            let mut client = client.clone();
            let acked = Arc::clone(&acked);
            async move {
                let result = client.create_order(order_request(&format!("burst-{i}"))).await;
                if result.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                result.map(|r| {
                    let r = r.into_inner();
                    (r.order_id, r.event_id)
                })
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut burst = Burst::default();
    for result in results {
        match result {
            Ok(ids) => burst.acknowledged.push(ids),
            Err(_) => burst.failed += 1,
        }
    }
    burst
}

/// Waits until `acked` reaches `count` (bounded).
pub(crate) async fn wait_for_acks(acked: &AtomicUsize, count: usize, within: Duration) {
    let reached = testkit::eventually(within, || async { acked.load(Ordering::SeqCst) >= count }).await;
    assert!(reached, "only {} calls acknowledged within {within:?}", acked.load(Ordering::SeqCst));
}

/// The output of `grpcurl -plaintext -max-time 10 <flags> <addr> <method>`,
/// reflection only (no proto files): (success, stdout, stderr).
pub(crate) async fn grpcurl(flags: &[&str], addr: SocketAddr, method: &str) -> (bool, String, String) {
    let mut command = Command::new(testkit::grpcurl());
    command.args(["-plaintext", "-max-time", "10"]).args(flags).arg(addr.to_string()).arg(method);
    let output = tokio::task::spawn_blocking(move || command.output().expect("grpcurl runs")).await.expect("grpcurl");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}
