//! The phases of a run, in order: the ceilings (always), then those `--only`
//! picks, each on a fresh stack.

mod create;
mod drain;
mod end_to_end;
mod pipeline;
mod saga;
mod webhooks;

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    ceilings, cpu,
    plan::Plan,
    report::{Report, cpu_row, round},
    stack::{self, Stack},
};

/// The phases `--only` can pick; the ceilings always run (every ratio needs them).
pub(crate) const PHASES: [&str; 7] =
    ["create_order", "relay_on", "end_to_end", "drain", "pipeline", "saga", "webhooks"];

pub(crate) async fn run(plan: &Plan, only: &[String], stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    stack.reset().await?;
    let ceilings = ceilings(plan, stack, report).await?;
    let pg = ceilings.pg;
    for phase in PHASES {
        if !only.is_empty() && !only.iter().any(|o| o == phase) {
            continue;
        }
        match phase {
            "create_order" => create::create_order(plan, stack, report, pg).await?,
            "relay_on" => create::relay_on(plan, stack, report, pg).await?,
            "end_to_end" => end_to_end::end_to_end(plan, stack, report).await?,
            "drain" => drain::drain(plan, stack, report, &ceilings).await?,
            "pipeline" => pipeline::pipeline(plan, stack, report, &ceilings).await?,
            "saga" => saga::saga(plan, stack, report).await?,
            _ => webhooks::webhooks(plan, stack, report).await?,
        }
        stack.reset().await?;
    }
    report.set("rss_mib.orders", round(stack.peak_rss_orders, 1));
    report.set("rss_mib.notifications", round(stack.peak_rss_notifications, 1));
    report.row("peak RSS orders", format!("{:.1} MiB", stack.peak_rss_orders), "target <= 32 MiB");
    report.row("peak RSS notifications", format!("{:.1} MiB", stack.peak_rss_notifications), "target <= 32 MiB");
    Ok(())
}

/// The search of the highest rate that holds, shared by the sustained
/// phases: up by 25% while a probe holds; after the first that does not,
/// halfway between the last that held and the first that did not until they
/// are within 5%; down by 20% while nothing has held yet.
pub(crate) struct RateSearch {
    /// The rate to probe next (the last probed once the search has ended).
    pub(crate) rate: f64,
    /// The highest rate that held so far.
    pub(crate) held: Option<f64>,
    failed: Option<f64>,
}

impl RateSearch {
    pub(crate) fn new(start: f64) -> Self {
        Self { rate: start, held: None, failed: None }
    }

    /// Records whether [`Self::rate`] held and moves to the next rate;
    /// false when the search has ended there.
    pub(crate) fn record(&mut self, held: bool) -> bool {
        if held {
            self.held = Some(self.rate);
        } else {
            self.failed = Some(self.rate);
        }
        self.rate = match (self.held, self.failed) {
            (_, None) => self.rate * 1.25,
            (None, Some(failed)) => failed * 0.8,
            (Some(held), Some(failed)) if failed > held * 1.05 => (held + failed) / 2.0,
            (Some(_), Some(_)) => return false,
        };
        true
    }
}

async fn ceilings(plan: &Plan, stack: &mut Stack, report: &mut Report) -> anyhow::Result<Ceilings> {
    // 1. Ceilings.
    let bar = spinner("ceiling: raw sqlx two-insert transactions, 32 connections".into());
    let ceiling_db = stack.url(stack::CEILING_DB);
    platform::db::create_database_if_missing(&ceiling_db.parse()?).await?;
    let (pg, pg_cpu) = ceilings::pg_two_inserts(&ceiling_db, 32, plan.pg_ceiling).await?;
    // The broker's ceilings are short runs whose speed swings from one to the
    // next (a fresh quorum queue, the broker's own housekeeping): each is the
    // best of AMQP_ROUNDS, taken in turn, with the CPU of that best round.
    let mut best = BROKER_CEILINGS.map(|_| (0.0, serde_json::Value::Null));
    for round in 1..=AMQP_ROUNDS {
        for (ceiling, best) in BROKER_CEILINGS.iter().zip(best.iter_mut()) {
            bar.set_message(format!("{} ({round}/{AMQP_ROUNDS})", ceiling.label));
            let before = cpu::CpuSnapshot::take();
            let rate = if ceiling.consuming {
                ceilings::amqp_publish_while_consuming(&stack.amqp, plan.amqp_messages, ceiling.shape).await?
            } else {
                ceilings::amqp_publish_confirm(&stack.amqp, plan.amqp_messages, ceiling.shape).await?
            };
            if rate > best.0 {
                *best = (rate, before.per_unit(&cpu::CpuSnapshot::take(), plan.amqp_messages as u64));
            }
        }
    }
    bar.finish_and_clear();
    report.set("ceilings.pg_create_order_tps_c32", round(pg, 0));
    // What one ceiling transaction costs, to set beside what one order costs:
    // on a saturated machine the pipeline's ratio cannot pass the ratio of the two.
    report.set("ceilings.pg_cpu_us_per_tx", pg_cpu.clone());
    report.row("ceiling: Postgres two-insert tx, 32 clients", format!("{pg:.0} tx/s"), "raw sqlx");
    cpu_row(report, "CPU per ceiling transaction", &pg_cpu);
    let amqp = best[0].0;
    for (i, (ceiling, (rate, cpu))) in BROKER_CEILINGS.iter().zip(&best).enumerate() {
        report.set(&format!("ceilings.{}", ceiling.key), round(*rate, 0));
        report.set(&format!("ceilings.{}", ceiling.cpu_key), cpu.clone());
        let against = if i == 0 {
            "raw lapin, quorum queue".to_owned()
        } else {
            format!("raw lapin, {:.2}x the publish ceiling", rate / amqp)
        };
        report.row(ceiling.label, format!("{rate:.0} msg/s"), against);
        cpu_row(report, ceiling.cpu_label, cpu);
    }
    let [_, (amqp_consuming, _), (event, _), (event_consuming, _)] = best;
    let pg_cpu_us = pg_cpu.get("total").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    Ok(Ceilings { pg, pg_cpu_us, amqp, amqp_consuming, event, event_consuming })
}

/// Rounds of each broker ceiling; the best counts.
const AMQP_ROUNDS: usize = 3;

/// One broker ceiling: what it publishes, whether a raw consumer drains the
/// queue meanwhile, its JSON keys (under `ceilings.`) and its report rows.
struct BrokerCeiling {
    shape: ceilings::Shape,
    consuming: bool,
    key: &'static str,
    cpu_key: &'static str,
    label: &'static str,
    cpu_label: &'static str,
}

/// The broker ceilings, bare publishing first (the drain's target is against it).
const BROKER_CEILINGS: [BrokerCeiling; 4] = [
    BrokerCeiling {
        shape: ceilings::Shape::Raw,
        consuming: false,
        key: "amqp_publish_confirm_per_s",
        cpu_key: "amqp_cpu_us_per_msg",
        label: "ceiling: RabbitMQ publish, pipelined confirms",
        cpu_label: "CPU per message published",
    },
    BrokerCeiling {
        shape: ceilings::Shape::Raw,
        consuming: true,
        key: "amqp_publish_while_consuming_per_s",
        cpu_key: "amqp_consuming_cpu_us_per_msg",
        label: "ceiling: the same while a consumer drains it",
        cpu_label: "CPU per message published while consumed",
    },
    BrokerCeiling {
        shape: ceilings::Shape::Event,
        consuming: false,
        key: "amqp_event_publish_per_s",
        cpu_key: "amqp_event_cpu_us_per_msg",
        label: "ceiling: publish shaped as Pulse's events (topic, headers)",
        cpu_label: "CPU per event-shaped message published",
    },
    BrokerCeiling {
        shape: ceilings::Shape::Event,
        consuming: true,
        key: "amqp_event_publish_while_consuming_per_s",
        cpu_key: "amqp_event_consuming_cpu_us_per_msg",
        label: "ceiling: the same while a consumer drains it",
        cpu_label: "CPU per event-shaped message published while consumed",
    },
];

/// This run's ceilings: two-insert tx/s and the CPU microseconds each took
/// (every process), publish msg/s alone and with a consumer, of bare
/// messages and of event-shaped ones.
struct Ceilings {
    pg: f64,
    pg_cpu_us: f64,
    amqp: f64,
    amqp_consuming: f64,
    event: f64,
    event_consuming: f64,
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} orders ({per_sec}) {elapsed}").expect("template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::RateSearch;

    #[test]
    fn the_search_rises_then_bisects_until_within_five_percent() {
        let mut search = RateSearch::new(100.0);
        let mut probed = Vec::new();
        // Holds up to 150/s.
        loop {
            probed.push(search.rate);
            if !search.record(search.rate <= 150.0) {
                break;
            }
        }
        assert_eq!(probed, [100.0, 125.0, 156.25, 140.625, 148.4375, 152.34375]);
        assert_eq!(search.held, Some(148.4375));
    }

    #[test]
    fn nothing_holding_steps_down_by_a_fifth() {
        let mut search = RateSearch::new(100.0);
        assert!(search.record(false));
        assert_eq!((search.rate, search.held), (80.0, None));
    }
}
