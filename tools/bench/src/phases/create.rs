//! CreateOrder alone at each client count, then with the relay and consumer on.

use std::time::Instant;

use super::spinner;
use crate::{
    cpu, load,
    plan::Plan,
    report::{Report, cpu_row, ms, round},
    stack::Stack,
};

pub(super) async fn create_order(plan: &Plan, stack: &mut Stack, report: &mut Report, pg: f64) -> anyhow::Result<()> {
    // 2. CreateOrder, relay and consumer off.
    stack.start_orders("api").await?;
    for &clients in &plan.levels {
        let bar = spinner(format!("CreateOrder, {clients} clients, relay off"));
        let cpu_before = cpu::CpuSnapshot::take();
        let result = load::closed_loop(stack.orders_addr(), clients, plan.level, None, &bar).await?;
        let cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), result.ok);
        bar.finish_and_clear();
        let tps = result.rate();
        let key = format!("create_order.c{clients}");
        report.set(&format!("{key}_tps"), round(tps, 0));
        report.set(&format!("{key}_p50_ms"), ms(&result.latency_us, 0.5));
        report.set(&format!("{key}_p99_ms"), ms(&result.latency_us, 0.99));
        report.set(&format!("{key}_p999_ms"), ms(&result.latency_us, 0.999));
        report.set(&format!("{key}_errors"), result.errors);
        report.row(
            format!("CreateOrder c{clients}, relay off"),
            format!("{tps:.0} tx/s"),
            format!(
                "{:.2}x ceiling; p50 {} / p99 {} / p99.9 {} ms; {} errors",
                tps / pg,
                ms(&result.latency_us, 0.5),
                ms(&result.latency_us, 0.99),
                ms(&result.latency_us, 0.999),
                result.errors
            ),
        );
        report.set(&format!("{key}_cpu_us_per_order"), cpu.clone());
        if clients == 32 {
            report.set("create_order.c32_ratio", round(tps / pg, 3));
            cpu_row(report, "CPU per CreateOrder c32, relay off", &cpu);
        }
    }
    stack.sample_rss();
    Ok(())
}

pub(super) async fn relay_on(plan: &Plan, stack: &mut Stack, report: &mut Report, pg: f64) -> anyhow::Result<()> {
    // 3. CreateOrder at 32 clients with relay and consumer running.
    stack.start_notifications().await?;
    stack.start_orders("all").await?;
    let bar = spinner("CreateOrder, 32 clients, relay and consumer on".into());
    let result = load::closed_loop(stack.orders_addr(), 32, plan.relay_on, None, &bar).await?;
    bar.finish_and_clear();
    let window_end = Instant::now();
    let (_, caught_up) = stack.wait_delivered(result.ok as i64, window_end, plan.settle).await?;
    let verified = stack.verify().await?;
    report.set("create_order.c32_relay_on_tps", round(result.rate(), 0));
    report.set("create_order.c32_relay_on_catchup_s", round(caught_up.as_secs_f64(), 3));
    report.row(
        "CreateOrder c32, relay + consumer on",
        format!("{:.0} tx/s", result.rate()),
        format!(
            "{:.2}x ceiling; caught up {:.2} s after the window; {verified} verified",
            result.rate() / pg,
            caught_up.as_secs_f64()
        ),
    );
    Ok(())
}
