//! The order saga as a client sees it: credit and stock set up over the
//! participants' APIs, orders created with lines, their end awaited, and the
//! invariants anyone can check at rest, read over gRPC only.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use contracts::{
    inventory::v1::{
        GetReservationRequest, GetStockRequest, ReservationStatus, SetStockRequest,
        inventory_service_client::InventoryServiceClient,
    },
    orders::v1::{CreateOrderRequest, GetOrderRequest, Order, OrderLine, OrderStatus},
    payments::v1::{
        GetCustomerCreditRequest, GetPaymentRequest, PaymentStatus, SetCustomerCreditRequest,
        payment_service_client::PaymentServiceClient,
    },
};
use futures::StreamExt;
use tonic::Code;

use super::api::{channel, orders};

pub(crate) fn payments(addr: SocketAddr) -> PaymentServiceClient<tonic::transport::Channel> {
    PaymentServiceClient::new(channel(addr))
}

pub(crate) fn inventory(addr: SocketAddr) -> InventoryServiceClient<tonic::transport::Channel> {
    InventoryServiceClient::new(channel(addr))
}

pub(crate) async fn set_credit(addr: SocketAddr, customer: &str, limit: &str) {
    let request =
        SetCustomerCreditRequest { customer_id: customer.into(), currency: "EUR".into(), amount: limit.into() };
    payments(addr).set_customer_credit(request).await.expect("SetCustomerCredit");
}

pub(crate) async fn set_stock(addr: SocketAddr, sku: &str, on_hand: u32) {
    inventory(addr).set_stock(SetStockRequest { sku: sku.into(), on_hand }).await.expect("SetStock");
}

/// `(limit, used)` of a customer's EUR credit, in cents.
pub(crate) async fn credit(addr: SocketAddr, customer: &str) -> (i64, i64) {
    let request = GetCustomerCreditRequest { customer_id: customer.into(), currency: "EUR".into() };
    let credit = payments(addr).get_customer_credit(request).await.expect("GetCustomerCredit").into_inner();
    let credit = credit.credit.expect("credit");
    (cents(&credit.limit), cents(&credit.used))
}

/// `(on_hand, reserved)` of a sku.
pub(crate) async fn stock(addr: SocketAddr, sku: &str) -> (u32, u32) {
    let stock = inventory(addr).get_stock(GetStockRequest { sku: sku.into() }).await.expect("GetStock").into_inner();
    let stock = stock.stock.expect("stock");
    (stock.on_hand, stock.reserved)
}

/// The order's payment status, None when Payments never saw a command for it.
pub(crate) async fn payment(addr: SocketAddr, order_id: &str) -> Option<PaymentStatus> {
    let request = || async move { payments(addr).get_payment(GetPaymentRequest { order_id: order_id.into() }).await };
    match retried(request).await {
        Ok(r) => Some(r.into_inner().payment.expect("payment").status()),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetPayment {order_id}: {status}"),
    }
}

/// The order's reservation status, None when Inventory never saw a command for it.
pub(crate) async fn reservation(addr: SocketAddr, order_id: &str) -> Option<ReservationStatus> {
    let request =
        || async move { inventory(addr).get_reservation(GetReservationRequest { order_id: order_id.into() }).await };
    match retried(request).await {
        Ok(r) => Some(r.into_inner().reservation.expect("reservation").status()),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetReservation {order_id}: {status}"),
    }
}

/// `call`, again while it answers UNAVAILABLE (a participant busy with the
/// load of a test, its pool waiting for a connection), ten times at most.
async fn retried<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Err(status) if status.code() == Code::Unavailable && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

/// "12.34" → 1234.
pub(crate) fn cents(amount: &str) -> i64 {
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let fraction = format!("{fraction:0<2}");
    whole.parse::<i64>().expect("whole") * 100 + fraction[..2].parse::<i64>().expect("cents")
}

pub(crate) fn request(customer: &str, amount: &str, lines: &[(&str, u32)]) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        amount: amount.into(),
        currency: "EUR".into(),
        request_id: String::new(),
        lines: lines.iter().map(|(sku, quantity)| OrderLine { sku: (*sku).into(), quantity: *quantity }).collect(),
    }
}

/// CreateOrder; the order as the call returned it.
pub(crate) async fn create(addr: SocketAddr, request: CreateOrderRequest) -> Order {
    let response = orders(addr).create_order(request).await.expect("CreateOrder").into_inner();
    response.order.expect("order")
}

pub(crate) async fn get(addr: SocketAddr, order_id: &str) -> Order {
    let response = orders(addr).get_order(GetOrderRequest { order_id: order_id.into() }).await.expect("GetOrder");
    response.into_inner().order.expect("order")
}

/// Waits (bounded) until the order is COMPLETED or FAILED, and returns it.
pub(crate) async fn ended(addr: SocketAddr, order_id: &str, within: Duration) -> Order {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let order = get(addr, order_id).await;
        if order.status() != OrderStatus::Created {
            return order;
        }
        assert!(tokio::time::Instant::now() < deadline, "order {order_id} still CREATED after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every one of `ids` ended, read with `concurrency` calls at a time.
pub(crate) async fn all_ended(addr: SocketAddr, ids: &[String], within: Duration) -> Vec<Order> {
    futures::stream::iter(ids).map(|id| ended(addr, id, within)).buffer_unordered(16).collect().await
}

/// What the invariants are checked against.
pub(crate) struct Participants {
    pub(crate) payments: SocketAddr,
    pub(crate) inventory: SocketAddr,
}

/// The invariants of the saga, at rest, over `orders` (every order of the
/// customers and skus involved):
/// - per customer, `used` = the sum of CAPTURED payments;
/// - per sku, `reserved` = the quantities of it in COMPLETED orders;
/// - a COMPLETED order holds a CAPTURED payment and a RESERVED reservation
///   (when it has lines); a FAILED one holds neither.
///
/// Returns the problems found (empty when every invariant holds).
pub(crate) async fn invariant_problems(at: &Participants, orders: &[Order]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut captured: BTreeMap<String, i64> = BTreeMap::new();
    let mut reserved: BTreeMap<String, u32> = BTreeMap::new();
    let states: Vec<_> = futures::stream::iter(orders)
        .map(|order| async move {
            let payment = payment(at.payments, &order.order_id).await;
            let reservation = reservation(at.inventory, &order.order_id).await;
            (order, payment, reservation)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (order, payment, reservation) in states {
        let id = &order.order_id;
        if payment == Some(PaymentStatus::Captured) {
            *captured.entry(order.customer_id.clone()).or_default() += cents(&order.amount);
        }
        match order.status() {
            OrderStatus::Completed => {
                if payment != Some(PaymentStatus::Captured) {
                    problems.push(format!("COMPLETED {id} has payment {payment:?}"));
                }
                if !order.lines.is_empty() && reservation != Some(ReservationStatus::Reserved) {
                    problems.push(format!("COMPLETED {id} has reservation {reservation:?}"));
                }
                for line in &order.lines {
                    *reserved.entry(line.sku.clone()).or_default() += line.quantity;
                }
            }
            OrderStatus::Failed => {
                if payment == Some(PaymentStatus::Captured) {
                    problems.push(format!("FAILED {id} ({:?}) still has a captured payment", order.failure()));
                }
                if reservation == Some(ReservationStatus::Reserved) {
                    problems.push(format!("FAILED {id} ({:?}) still holds a reservation", order.failure()));
                }
            }
            other => problems.push(format!("order {id} is {other:?}")),
        }
    }
    let customers: std::collections::BTreeSet<_> = orders.iter().map(|o| o.customer_id.clone()).collect();
    for customer in customers {
        let (_, used) = credit(at.payments, &customer).await;
        let sum = captured.get(&customer).copied().unwrap_or(0);
        if used != sum {
            problems.push(format!("customer {customer}: used {used} cents, captured payments {sum}"));
        }
    }
    let skus: std::collections::BTreeSet<_> =
        orders.iter().flat_map(|o| o.lines.iter().map(|l| l.sku.clone())).collect();
    for sku in skus {
        let (_, held) = stock(at.inventory, &sku).await;
        let sum = reserved.get(&sku).copied().unwrap_or(0);
        if held != sum {
            problems.push(format!("sku {sku}: reserved {held}, in COMPLETED orders {sum}"));
        }
    }
    problems
}

/// Waits (bounded) until every invariant holds (compensations of FAILED
/// orders may still be on their way when the orders end); panics with the
/// problems left.
pub(crate) async fn assert_invariants(at: &Participants, orders: &[Order], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let problems = invariant_problems(at, orders).await;
        if problems.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "invariants broken after {within:?}:\n{}", problems.join("\n"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
