//! Backlog drain: alone, then with the consumer running as in a real recovery.

use std::time::Instant;

use super::{Ceilings, spinner};
use crate::{
    cpu, load,
    plan::Plan,
    report::{Report, cpu_row, round, target_mark},
    stack::Stack,
};

/// The drain with the consumer running, as a share of the event-shaped
/// publish-while-consuming ceiling, at least.
const DRAIN_TARGET: f64 = 0.85;

pub(super) async fn drain(
    plan: &Plan,
    stack: &mut Stack,
    report: &mut Report,
    ceilings: &Ceilings,
) -> anyhow::Result<()> {
    let amqp = ceilings.amqp;
    // 5. Backlog drain, twice. First alone: orders pile up with no relay and no
    // consumer, one relay starts (against the publish ceiling, which has no
    // consumer either), then the consumer starts on the queued events. Then as
    // in a real recovery: the consumer runs while the relay drains.
    let backlog = |stack: &mut Stack, label: &str| {
        let bar = spinner(format!("creating a backlog of {} orders ({label})", plan.drain_orders));
        let addr = stack.orders_addr();
        async move {
            let result =
                load::closed_loop(addr, 32, std::time::Duration::from_secs(3600), Some(plan.drain_orders), &bar).await;
            bar.finish_and_clear();
            result
        }
    };

    // The consumer's queues must exist for the relay's messages to be routable.
    stack.start_notifications().await?;
    stack.stop_notifications().await?;
    stack.start_orders("api").await?;
    let first = backlog(stack, "relay alone").await?;
    stack.stop_orders().await?;
    let restored = Instant::now();
    stack.start_orders("relay").await?;
    let relay_alone = stack.wait_outbox_empty(restored, plan.settle * 4).await?;
    let consumer_started = Instant::now();
    stack.start_notifications().await?;
    let (_, consumer_alone) = stack.wait_delivered(first.ok as i64, consumer_started, plan.settle * 4).await?;
    stack.stop_orders().await?;

    stack.start_orders("api").await?;
    let second = backlog(stack, "relay and consumer together").await?;
    stack.stop_orders().await?;
    let bar = spinner("draining the backlog".into());
    let restored = Instant::now();
    let cpu_before = cpu::CpuSnapshot::take();
    stack.start_orders("relay").await?;
    let (empty, handled) = stack.wait_delivered((first.ok + second.ok) as i64, restored, plan.settle * 4).await?;
    let cpu = cpu_before.per_unit(&cpu::CpuSnapshot::take(), second.ok);
    bar.finish_and_clear();
    stack.verify().await?;

    let rate = |n: u64, took: std::time::Duration| n as f64 / took.as_secs_f64();
    let (alone, consumer) = (rate(first.ok, relay_alone), rate(first.ok, consumer_alone));
    let (drained, handled_rate) = (rate(second.ok, empty), rate(second.ok, handled));
    report.set("drain.events", second.ok);
    report.set("drain.events_per_s", round(drained, 0));
    report.set("drain.handled_per_s", round(handled_rate, 0));
    report.set("drain.ratio", round(drained / amqp, 3));
    report.set("drain.ratio_to_publish_while_consuming", round(drained / ceilings.amqp_consuming, 3));
    report.set("drain.relay_alone_events_per_s", round(alone, 0));
    report.set("drain.relay_alone_ratio", round(alone / amqp, 3));
    report.set("drain.ratio_to_event_publish_while_consuming", round(drained / ceilings.event_consuming, 3));
    report.set("drain.relay_alone_ratio_to_event_publish", round(alone / ceilings.event, 3));
    report.set("drain.consumer_alone_events_per_s", round(consumer, 0));
    // Where each event's CPU went from the restore until every notification existed.
    report.set("drain.cpu_us_per_event", cpu.clone());
    report.row(
        format!("backlog drain of {}, consumer running", second.ok),
        format!("{drained:.0} ev/s"),
        format!(
            "{:.2}x publish ceiling, {:.2}x publish-while-consuming, {:.2}x event-shaped; all handled at {handled_rate:.0}/s",
            drained / amqp,
            drained / ceilings.amqp_consuming,
            drained / ceilings.event_consuming
        ),
    );
    report.row(
        format!("backlog drain of {}, relay alone", first.ok),
        format!("{alone:.0} ev/s"),
        format!(
            "{:.2}x publish ceiling, {:.2}x event-shaped; then the consumer alone: {consumer:.0} ev/s",
            alone / amqp,
            alone / ceilings.event
        ),
    );
    let drain_ratio = drained / ceilings.event_consuming;
    report.row(
        "backlog drain, consumer running / event-shaped ceiling",
        format!("{drain_ratio:.2}x"),
        target_mark(drain_ratio >= DRAIN_TARGET, &format!("target >= {DRAIN_TARGET}x")),
    );
    cpu_row(report, "CPU per drained event, consumer running", &cpu);
    Ok(())
}
