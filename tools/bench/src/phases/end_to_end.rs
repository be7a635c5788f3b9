//! End-to-end latency at fixed rates, each beside the latency floor (raw sqlx
//! and lapin) at the same rate.

use std::time::Instant;

use super::spinner;
use crate::{
    floor, latency, load,
    plan::Plan,
    report::{Report, ms, round, target_mark},
    stack::Stack,
};

pub(super) async fn end_to_end(plan: &Plan, stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    // 4. End-to-end latency at fixed rates, each beside the latency floor at
    // the same rate, in slices taken in turn: a slow spell of the machine
    // falls on both alike.
    stack.start_notifications().await?;
    stack.start_orders("all").await?;
    for &rate in &plan.rates {
        let slices = (plan.rate_window.as_secs_f64() / SLICE.as_secs_f64()).round().max(1.0) as u32;
        let slice = plan.rate_window / slices;
        let mut floor = floor::Floor::start(stack.server(), &stack.amqp).await?;
        let mut result = None::<load::LoadResult>;
        for n in 1..=slices {
            let bar = spinner(format!("latency floor at {rate:.0} orders/s, raw sqlx and lapin ({n}/{slices})"));
            floor.window(rate, slice, plan.settle, &bar).await?;
            bar.finish_and_clear();
            let bar = spinner(format!("end to end at {rate:.0} orders/s ({n}/{slices})"));
            let before = stack.notification_count().await?;
            let part = load::open_loop(stack.orders_addr(), rate, slice, &bar).await?;
            bar.finish_and_clear();
            stack.wait_delivered(before + part.ok as i64, Instant::now(), plan.settle).await?;
            result = Some(match result {
                Some(so_far) => so_far.and(part)?,
                None => part,
            });
        }
        let floor = floor.finish().await?;
        let result = result.expect("at least one slice");
        let latency =
            latency::order_to_notification(&stack.orders_url(), &stack.notifications_url(), &result.order_ids).await?;
        let key = format!("end_to_end.rate{rate:.0}");
        report.set(&format!("{key}_p50_ms"), ms(&latency, 0.5));
        report.set(&format!("{key}_p99_ms"), ms(&latency, 0.99));
        report.set(&format!("{key}_max_ms"), ms(&latency, 1.0));
        report.set(&format!("{key}_achieved_per_s"), round(result.rate(), 1));
        let floor_key = format!("end_to_end.floor_rate{rate:.0}");
        report.set(&format!("{floor_key}_p50_ms"), ms(&floor, 0.5));
        report.set(&format!("{floor_key}_p99_ms"), ms(&floor, 0.99));
        report.set(&format!("{floor_key}_max_ms"), ms(&floor, 1.0));
        report.row(
            format!("latency floor at {rate:.0}/s (raw sqlx + lapin)"),
            format!("p50 {} ms", ms(&floor, 0.5)),
            format!("p99 {} ms, max {} ms; {} orders", ms(&floor, 0.99), ms(&floor, 1.0), floor.len()),
        );
        report.row(
            format!("end to end at {rate:.0}/s (commit to commit)"),
            format!("p50 {} ms", ms(&latency, 0.5)),
            format!("p99 {} ms, max {} ms; {} orders", ms(&latency, 0.99), ms(&latency, 1.0), result.ok),
        );
        for (_, quantile, name, target) in LATENCY_TARGETS.into_iter().filter(|t| t.0 == rate) {
            let ratio = ratio_to(ms(&latency, quantile), ms(&floor, quantile));
            report.set(&format!("end_to_end.{name}"), ratio);
            report.row(
                format!("end to end at {rate:.0}/s, {} / floor's", quantile_label(quantile)),
                format!("{ratio:.2}x"),
                target_mark(ratio <= target, &format!("target <= {target}x")),
            );
        }
    }
    stack.verify().await?;
    Ok(())
}

/// How long the floor and Pulse each run in turn within an end-to-end window.
const SLICE: std::time::Duration = std::time::Duration::from_secs(2);

/// The latency targets, as ratios to the floor measured in the same run:
/// orders/s, quantile, JSON key under `end_to_end.`, most allowed.
const LATENCY_TARGETS: [(f64, f64, &str, f64); 3] = [
    (100.0, 0.5, "rate100_p50_ratio", 1.3),
    (100.0, 0.99, "rate100_p99_ratio", 2.0),
    (1_000.0, 0.99, "rate1000_p99_ratio", 2.0),
];

fn quantile_label(quantile: f64) -> &'static str {
    if quantile < 0.9 { "p50" } else { "p99" }
}

/// `value / floor`, three decimals; a floor of zero (nothing measured) gives zero.
fn ratio_to(value: f64, floor: f64) -> f64 {
    if floor > 0.0 { round(value / floor, 3) } else { 0.0 }
}
