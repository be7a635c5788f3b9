//! Webhook deliveries to a receiver in the bench: order commit → webhook
//! received at 100 orders/s beside the same orders' order → notification,
//! then the dispatcher's sustained deliveries/s beside a plain HTTP client
//! posting the same requests to the same receiver.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use contracts::notifications::v1::{
    CreateEndpointRequest, DeliveryStatus, EndpointKind, ListDeliveriesRequest,
    delivery_service_client::DeliveryServiceClient,
};
use hdrhistogram::Histogram;
use uuid::Uuid;

use super::spinner;
use crate::{
    cpu, latency, load,
    plan::Plan,
    receiver::{self, Arrival, Receiver},
    report::{Report, cpu_row, ms, round, target_mark},
    stack::Stack,
};

/// The key webhook secrets are encrypted with in the bench's throwaway
/// database (base64 of 32 bytes); nothing outlives the run.
const BENCH_SECRET_KEY: &str = "Fkj0pXSyf0Gfed3gyvoMY2/CuAbOKiBcDLk+V/S8fPU=";
/// Attempts in flight to the one endpoint, and the plain client's concurrency.
const ENDPOINT_CONCURRENCY: usize = 4;

/// The targets, as ratios: p50 at most 1.5× and p99 at most 2× the one hop
/// (order → notification) of the same orders; sustained deliveries/s at
/// least 0.5× the plain client's.
const P50_TARGET: f64 = 1.5;
const P99_TARGET: f64 = 2.0;
const SUSTAINED_TARGET: f64 = 0.5;

pub(super) async fn webhooks(plan: &Plan, stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    start_notifications(stack, true).await?;
    stack.start_orders("all").await?;
    let mut client = DeliveryServiceClient::connect(format!("http://{}", stack.notifications_addr())).await?;
    let endpoint = client
        .create_endpoint(CreateEndpointRequest {
            kind: EndpointKind::Webhook as i32,
            url: receiver.url(),
            event_types: vec!["order.created".into()],
            description: "bench receiver".into(),
            ..CreateEndpointRequest::default()
        })
        .await?
        .into_inner()
        .endpoint
        .ok_or_else(|| anyhow::anyhow!("CreateEndpoint answered no endpoint"))?;

    // 1. At 100 orders/s: each order's webhook beside its notification.
    let mark = receiver.len();
    let bar = spinner("webhooks end to end at 100 orders/s".into());
    let result = load::open_loop(stack.orders_addr(), 100.0, plan.rate_window, &bar).await?;
    bar.finish_and_clear();
    stack.wait_delivered(result.ok as i64, Instant::now(), plan.settle).await?;
    receiver.wait_for(&result.order_ids, mark, plan.settle).await?;
    let arrivals = receiver.since(mark);
    let webhook = latency::order_to_arrival(&stack.orders_url(), &received_at(&arrivals)).await?;
    let hop =
        latency::order_to_notification(&stack.orders_url(), &stack.notifications_url(), &result.order_ids).await?;
    latency_rows(report, &webhook, &hop);
    let mut phase_orders = result.order_ids;

    // 2. Sustained: a backlog written while no replica dispatches
    // (DELIVERY_ENABLED=false), then sent by a replica that does.
    stack.stop_notifications().await?;
    start_notifications(stack, false).await?;
    let before = stack.notification_count().await?;
    let bar = spinner(format!("webhooks: a backlog of {} orders", plan.webhook_backlog));
    let backlog = load::closed_loop(stack.orders_addr(), 32, plan.settle, Some(plan.webhook_backlog), &bar).await?;
    bar.finish_and_clear();
    stack.wait_delivered(before + backlog.ok as i64, Instant::now(), plan.settle).await?;
    stack.stop_notifications().await?;
    let mark = receiver.len();
    let bar = spinner(format!("webhooks: {} deliveries", backlog.ok));
    let cpu_before = cpu::CpuSnapshot::take();
    start_notifications(stack, true).await?;
    receiver.wait_for(&backlog.order_ids, mark, plan.settle).await?;
    let dispatch_cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), backlog.ok);
    bar.finish_and_clear();
    let sent = receiver.since(mark);
    let firsts: Vec<Arrival> = receiver::first_by_order(&sent).into_values().cloned().collect();
    let sustained = receiver::rate(firsts.iter());
    let mark = receiver.len();
    let bar = spinner(format!("plain HTTP client: {} requests", firsts.len()));
    let cpu_before = cpu::CpuSnapshot::take();
    let requests = firsts.len() as u64;
    let refused = receiver::post_plain(receiver.addr, firsts, ENDPOINT_CONCURRENCY).await?;
    let plain_cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), requests);
    bar.finish_and_clear();
    anyhow::ensure!(refused == 0, "the receiver refused {refused} of the plain client's requests");
    let plain = receiver::rate(receiver.since(mark).iter().filter(|a| a.plain));
    sustained_rows(report, plan.webhook_backlog, sustained, plain);
    report.set("webhooks.cpu_us_per_delivery", dispatch_cpu.clone());
    cpu_row(report, "CPU per delivery sustained (the receiver is in bench)", &dispatch_cpu);
    report.set("webhooks.plain_client_cpu_us_per_request", plain_cpu.clone());
    cpu_row(report, "CPU per plain client request (client and receiver in bench)", &plain_cpu);
    phase_orders.extend(backlog.order_ids);

    // 3. Every order delivered, duplicates only under one webhook-id, none left.
    check(&receiver.since(0), &phase_orders, report)?;
    // The last answers may still be being recorded. A new client: the
    // notifications that dispatched the backlog listens on a port of its own.
    let mut client = DeliveryServiceClient::connect(format!("http://{}", stack.notifications_addr())).await?;
    let since = Instant::now();
    for status in [DeliveryStatus::Pending, DeliveryStatus::Failed] {
        loop {
            let left = client
                .list_deliveries(ListDeliveriesRequest {
                    endpoint_id: endpoint.endpoint_id.clone(),
                    status: status as i32,
                    page_size: 10,
                    ..ListDeliveriesRequest::default()
                })
                .await?
                .into_inner()
                .deliveries;
            let Some(example) = left.first() else { break };
            anyhow::ensure!(
                since.elapsed() < RECORDED_WITHIN,
                "deliveries still {status:?} after every webhook arrived, e.g. {example:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stack.verify().await?;
    Ok(())
}

/// How long after its webhook arrived a delivery may still show PENDING.
const RECORDED_WITHIN: Duration = Duration::from_secs(10);

async fn start_notifications(stack: &mut Stack, dispatch: bool) -> anyhow::Result<()> {
    stack
        .start_notifications_with(&[
            ("DELIVERY_ENABLED", dispatch.to_string()),
            ("DELIVERY_ALLOW_PRIVATE_NETWORKS", "true".into()),
            ("DELIVERY_SECRET_KEY", BENCH_SECRET_KEY.into()),
            ("DELIVERY_ENDPOINT_CONCURRENCY", ENDPOINT_CONCURRENCY.to_string()),
        ])
        .await
}

/// When each order's first webhook arrived.
fn received_at(arrivals: &[Arrival]) -> HashMap<Uuid, chrono::DateTime<chrono::Utc>> {
    receiver::first_by_order(arrivals).into_iter().map(|(order_id, arrival)| (order_id, arrival.at)).collect()
}

fn latency_rows(report: &mut Report, webhook: &Histogram<u64>, hop: &Histogram<u64>) {
    for (quantile, name, target) in [(0.5, "p50", P50_TARGET), (0.99, "p99", P99_TARGET)] {
        let (received, notified) = (ms(webhook, quantile), ms(hop, quantile));
        let ratio = if notified > 0.0 { round(received / notified, 3) } else { 0.0 };
        report.set(&format!("webhooks.rate100_{name}_ms"), received);
        report.set(&format!("webhooks.notification_rate100_{name}_ms"), notified);
        report.set(&format!("webhooks.rate100_{name}_ratio"), ratio);
        report.row(
            format!("webhook at 100/s, {name} (order commit to webhook received)"),
            format!("{received} ms"),
            format!(
                "order → notification of the same orders {notified} ms: {ratio:.2}x, {}",
                target_mark(ratio <= target, &format!("target <= {target}x"))
            ),
        );
    }
}

fn sustained_rows(report: &mut Report, backlog: u64, sustained: f64, plain: f64) {
    let ratio = if plain > 0.0 { round(sustained / plain, 3) } else { 0.0 };
    report.set("webhooks.backlog", backlog);
    report.set("webhooks.sustained_per_s", round(sustained, 0));
    report.set("webhooks.plain_client_per_s", round(plain, 0));
    report.set("webhooks.sustained_ratio", ratio);
    report.row(
        format!("webhooks sustained, a backlog of {backlog}, {ENDPOINT_CONCURRENCY} in flight"),
        format!("{sustained:.0} deliveries/s"),
        format!(
            "plain HTTP client, same requests and receiver {plain:.0}/s: {ratio:.2}x, {}",
            target_mark(ratio >= SUSTAINED_TARGET, "target >= 0.5x")
        ),
    );
}

/// Every order of the phase got a signed webhook, and every copy of one
/// order's webhook carried the same webhook-id (a retry, never a second delivery).
fn check(arrivals: &[Arrival], orders: &[Uuid], report: &mut Report) -> anyhow::Result<()> {
    let mut ids: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for arrival in arrivals.iter().filter(|a| !a.plain) {
        anyhow::ensure!(arrival.signed, "a webhook without webhook-timestamp or a v1 signature");
        let order_id = arrival.order_id.ok_or_else(|| anyhow::anyhow!("a webhook without data.order_id"))?;
        ids.entry(order_id).or_default().push(&arrival.webhook_id);
    }
    let missing = orders.iter().filter(|id| !ids.contains_key(id)).count();
    let mut copies = 0;
    for (order_id, webhook_ids) in &ids {
        anyhow::ensure!(
            webhook_ids.iter().all(|id| !id.is_empty() && *id == webhook_ids[0]),
            "order {order_id} was delivered under several webhook-ids: {webhook_ids:?}"
        );
        copies += webhook_ids.len() - 1;
    }
    anyhow::ensure!(missing == 0, "CORRECTNESS FAILURE: {missing} of {} orders got no webhook", orders.len());
    report.set("webhooks.duplicates", copies as u64);
    report.row("webhooks received twice (same webhook-id)", copies.to_string(), "at least once; 0 expected here");
    Ok(())
}
