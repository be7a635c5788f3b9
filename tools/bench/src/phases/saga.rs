//! The order saga end to end: CreateOrder → COMPLETED, five hops (the order
//! with its ProcessPayment, PaymentProcessed, ReserveInventory,
//! InventoryReserved, the completion), beside the one hop of the same orders
//! (order → notification), then the highest saga rate whose p99 stays under
//! 100 ms, beside this run's single-event pipeline.

use std::time::Duration;

use contracts::orders::v1::{CreateOrderRequest, OrderLine};
use hdrhistogram::Histogram;

use super::{RateSearch, spinner};
use crate::{
    cpu, latency, load,
    plan::Plan,
    report::{Report, cpu_row, ms, round, target_mark},
    stack::Stack,
};

/// The sku every saga order reserves; stocked for far more orders than a run makes.
const SKU: &str = "BENCH-SKU";

/// The `i`th saga order: one line, on a customer whose credit never runs out
/// (the bench starts payments with a large default credit).
fn saga_request(i: u64) -> CreateOrderRequest {
    CreateOrderRequest { lines: vec![OrderLine { sku: SKU.into(), quantity: 1 }], ..load::request(i) }
}

/// The saga's targets, as ratios: p50 and p99 at 100/s each at most 4× the
/// same orders' one hop; the sustained rate at least 0.25× the pipeline's.
const LATENCY_TARGET: f64 = 4.0;
const SUSTAINED_TARGET: f64 = 0.25;

pub(super) async fn saga(plan: &Plan, stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    stack.start_saga(SKU).await?;
    // 1. At 100 orders/s: each saga beside its own order's one hop.
    let bar = spinner("saga end to end at 100 orders/s".into());
    let result = load::open_loop_of(stack.orders_addr(), 100.0, plan.rate_window, &bar, saga_request).await?;
    bar.finish_and_clear();
    stack.wait_sagas_ended(&result.order_ids, plan.settle).await?;
    let (saga, others) = latency::order_to_completed(&stack.orders_url(), &result.order_ids).await?;
    anyhow::ensure!(others == 0, "{others} of {} saga orders did not complete", result.order_ids.len());
    let hop =
        latency::order_to_notification(&stack.orders_url(), &stack.notifications_url(), &result.order_ids).await?;
    for (quantile, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (five, one) = (ms(&saga, quantile), ms(&hop, quantile));
        let ratio = if one > 0.0 { round(five / one, 3) } else { 0.0 };
        report.set(&format!("saga.rate100_{name}_ms"), five);
        report.set(&format!("saga.one_hop_rate100_{name}_ms"), one);
        report.set(&format!("saga.rate100_{name}_ratio"), ratio);
        report.row(
            format!("saga at 100/s, {name} (CreateOrder commit to COMPLETED commit)"),
            format!("{five} ms"),
            format!(
                "one hop of the same orders {one} ms: {ratio:.2}x, {}",
                target_mark(ratio <= LATENCY_TARGET, "target <= 4x")
            ),
        );
    }
    // 2. The highest rate whose saga p99 stays under 100 ms: up by 25% from
    // 100/s while it holds, then halfway back towards the last that held.
    let mut search = RateSearch::new(100.0);
    let mut held_cpu = None;
    for _ in 0..plan.search_steps {
        let rate = search.rate;
        let window = saga_window(stack, rate, plan.probe, plan.settle).await?;
        let ok = window.held(rate);
        search_row(report, rate, &window, ok);
        if ok {
            held_cpu = Some(window.cpu);
        }
        if !search.record(ok) {
            break;
        }
    }
    let sustained = search.held.unwrap_or(0.0);
    report.set("saga.sustained_per_s", round(sustained, 0));
    if let Some(cpu) = held_cpu {
        report.set("saga.cpu_us_per_saga", cpu.clone());
        cpu_row(report, "CPU per saga (highest rate that held)", &cpu);
    }
    match report.number("pipeline.orders_per_s") {
        Some(pipeline) if pipeline > 0.0 => {
            let ratio = round(sustained / pipeline, 3);
            report.set("saga.sustained_ratio", ratio);
            report.row(
                "saga sustained with p99 < 100 ms",
                format!("{sustained:.0} sagas/s"),
                format!(
                    "pipeline {pipeline:.0} orders/s: {ratio:.2}x, {}",
                    target_mark(ratio >= SUSTAINED_TARGET, "target >= 0.25x")
                ),
            );
        }
        _ => report.row(
            "saga sustained with p99 < 100 ms",
            format!("{sustained:.0} sagas/s"),
            "no pipeline phase in this run to compare with",
        ),
    }
    Ok(())
}

struct Window {
    achieved: f64,
    latency: Histogram<u64>,
    incomplete: u64,
    /// CPU per saga over the window, by process.
    cpu: serde_json::Value,
}

impl Window {
    /// Kept up with `rate` (95%), every saga completed, p99 under 100 ms.
    fn held(&self, rate: f64) -> bool {
        self.achieved >= rate * 0.95 && self.incomplete == 0 && ms(&self.latency, 0.99) < 100.0
    }
}

async fn saga_window(stack: &mut Stack, rate: f64, window: Duration, settle: Duration) -> anyhow::Result<Window> {
    let bar = spinner(format!("saga search at {rate:.0} orders/s"));
    let cpu_before = cpu::CpuSnapshot::take();
    let result = load::open_loop_of(stack.orders_addr(), rate, window, &bar, saga_request).await?;
    bar.finish_and_clear();
    stack.wait_sagas_ended(&result.order_ids, settle).await?;
    // To the last saga's end: the work of the window's sagas, not the idle
    // settle after it (wait_sagas_ended polls every 25 ms).
    let cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), result.ok);
    let (latency, incomplete) = latency::order_to_completed(&stack.orders_url(), &result.order_ids).await?;
    Ok(Window { achieved: result.rate(), latency, incomplete: incomplete + result.errors, cpu })
}

fn search_row(report: &mut Report, rate: f64, window: &Window, held: bool) {
    report.row(
        format!("saga search at {rate:.0}/s"),
        format!("p99 {} ms", ms(&window.latency, 0.99)),
        format!("achieved {:.0}/s, {}", window.achieved, if held { "held" } else { "did not hold" }),
    );
}
