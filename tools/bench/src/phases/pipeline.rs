//! The sustained pipeline: the highest rate whose end-to-end p99 stays under
//! 100 ms, found by search, then held over a long window.

use std::time::Instant;

use super::{Ceilings, RateSearch, spinner};
use crate::{
    cpu, latency, load,
    plan::Plan,
    report::{Report, cpu_row, ms, round},
    stack::Stack,
};

pub(super) async fn pipeline(
    plan: &Plan,
    stack: &mut Stack,
    report: &mut Report,
    ceilings: &Ceilings,
) -> anyhow::Result<()> {
    let pg = ceilings.pg;
    // 6. Sustained pipeline at the highest rate with end-to-end p99 under 100 ms.
    stack.start_notifications().await?;
    stack.start_orders("all").await?;
    // From a share of this run's ceiling, up by 25% while the rate keeps up;
    // after the first rate that does not, halve the interval between the two
    // until they are within 5%. Down by 20% while nothing has held yet.
    let start = plan.pipeline_rate.unwrap_or(plan.pipeline_start.max(plan.pipeline_start_share * pg));
    // Warm-up, not measured: the first second of a fresh stack (connections
    // opening, queues and caches cold) would otherwise decide the first probe.
    let warm_up = spinner(format!("pipeline warm-up at {:.0} orders/s", start / 2.0));
    let before = stack.notification_count().await?;
    let warmed = load::open_loop(stack.orders_addr(), start / 2.0, plan.probe, &warm_up).await?;
    stack.wait_delivered(before + warmed.ok as i64, Instant::now(), plan.settle).await?;
    warm_up.finish_and_clear();
    let steps = if plan.pipeline_rate.is_some() { 0 } else { plan.search_steps };
    let mut search = RateSearch::new(start);
    let mut probes = Vec::new();
    for _ in 0..steps {
        let rate = search.rate;
        let window = pipeline_window(stack, rate, plan.probe, plan.settle, "pipeline search").await?;
        probes.push(window.summary(rate));
        if !search.record(window.held(rate)) {
            break;
        }
    }
    let mut best = search.held.unwrap_or(search.rate);
    // The long window can fail where a short probe held (the tail grows with
    // the window, and a long window meets the stalls of a few hundred ms, with
    // Postgres and RabbitMQ slow together, that this host shows every few
    // seconds and a short probe can miss): step down by 12% until it holds,
    // four tries at most.
    let mut attempts = 0;
    let (rate, window) = loop {
        attempts += 1;
        let window = pipeline_window(stack, best, plan.sustained, plan.settle, "sustained pipeline").await?;
        probes.push(window.summary(best));
        if window.held(best) || attempts == 4 || plan.pipeline_rate.is_some() {
            break (best, window);
        }
        best *= 0.88;
    };
    stack.verify().await?;
    let (result, latency) = (&window.load, &window.latency);
    let held = window.held(rate);
    report.set("pipeline.target_per_s", round(rate, 0));
    report.set("pipeline.orders_per_s", round(result.rate(), 0));
    report.set("pipeline.p50_ms", ms(latency, 0.5));
    report.set("pipeline.p99_ms", ms(latency, 0.99));
    report.set("pipeline.ratio", round(result.rate() / pg, 3));
    report.set("pipeline.errors", result.errors);
    report.set("pipeline.held", held);
    report.set("pipeline.sustained_attempts", attempts);
    // Where each order's CPU went during the sustained window (the relay and
    // consumer finishing its last orders after it are not counted).
    report.set("pipeline.cpu_us_per_order", window.cpu.clone());
    // Every window, search and sustained, in the order they ran.
    report.set("pipeline.windows", probes);
    report.row(
        "sustained pipeline (e2e p99 < 100 ms)",
        format!("{:.0} orders/s", result.rate()),
        format!(
            "{:.2}x ceiling; p50 {} / p99 {} ms; {} errors{}",
            result.rate() / pg,
            ms(latency, 0.5),
            ms(latency, 0.99),
            result.errors,
            if held { "" } else { "; DID NOT HOLD the p99 bound" }
        ),
    );
    cpu_row(report, "CPU per pipeline order (sustained window)", &window.cpu);
    // On a machine the load saturates, the pipeline's ratio to the ceiling
    // cannot pass the ratio of their CPU per unit: one ceiling transaction's
    // CPU over one pipelined order's.
    let order_cpu_us = window.cpu.get("total").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    if order_cpu_us > 0.0 && ceilings.pg_cpu_us > 0.0 {
        let bound = ceilings.pg_cpu_us / order_cpu_us;
        report.set("pipeline.cpu_bound_ratio", round(bound, 3));
        report.row(
            "pipeline ratio bound by CPU",
            format!("{bound:.2}x"),
            format!(
                "a ceiling tx costs {:.0} us of CPU, a pipelined order {order_cpu_us:.0} us (at 100% of the cores)",
                ceilings.pg_cpu_us
            ),
        );
    }
    Ok(())
}

/// One open-loop window of the whole pipeline and its end-to-end latency.
struct PipelineWindow {
    load: load::LoadResult,
    latency: hdrhistogram::Histogram<u64>,
    delivered: bool,
    /// CPU microseconds per accepted order, by process, over the load window.
    cpu: serde_json::Value,
}

impl PipelineWindow {
    /// Whether the pipeline kept up with `rate`: every order accepted and
    /// delivered, at 95% of the rate or more, end-to-end p99 under 100 ms.
    fn held(&self, rate: f64) -> bool {
        self.delivered && self.load.errors == 0 && self.load.rate() >= 0.95 * rate && ms(&self.latency, 0.99) < 100.0
    }

    fn summary(&self, rate: f64) -> serde_json::Value {
        serde_json::json!({
            "target_per_s": round(rate, 0),
            "orders_per_s": round(self.load.rate(), 0),
            "p99_ms": ms(&self.latency, 0.99),
            "held": self.held(rate),
        })
    }
}

async fn pipeline_window(
    stack: &mut Stack,
    rate: f64,
    duration: std::time::Duration,
    settle: std::time::Duration,
    label: &str,
) -> anyhow::Result<PipelineWindow> {
    let bar = spinner(format!("{label} at {rate:.0} orders/s"));
    let before = stack.notification_count().await?;
    let cpu_before = cpu::CpuSnapshot::take();
    let load = load::open_loop(stack.orders_addr(), rate, duration, &bar).await?;
    let cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), load.ok);
    bar.finish_and_clear();
    let delivered = stack.wait_delivered(before + load.ok as i64, Instant::now(), settle).await.is_ok();
    let latency =
        latency::order_to_notification(&stack.orders_url(), &stack.notifications_url(), &load.order_ids).await?;
    Ok(PipelineWindow { load, latency, delivered, cpu })
}
