//! `bench`: Pulse's throughput, end-to-end latency and backlog drain, each
//! beside a ceiling measured in the same run. Starts and stops the `orders`
//! and `notifications` binaries it measures (built alongside it).
//!
//! Usage: `bench [--quick | --smoke] [--json PATH] [--only PHASE,...] [--pipeline-rate N] [--cluster]` where
//! the phases are create_order, relay_on, end_to_end, drain and pipeline (the ceilings always run);
//! `--pipeline-rate` skips the pipeline's search and sustains N orders/s; `--cluster` then runs the
//! ceilings, end_to_end and pipeline again against a local three-node RabbitMQ cluster
//! (build-support/scripts/rabbitmq-cluster.sh) and reports each figure's ratio to the single node's.

mod ceilings;
mod cluster;
mod cpu;
mod floor;
mod latency;
mod load;
mod plan;
mod procs;
mod queues;
mod report;
mod stack;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    plan::Plan,
    report::{Report, ms, round},
    stack::Stack,
};

#[tokio::main]
async fn main() -> ExitCode {
    let mut mode = "full";
    let mut json: Option<PathBuf> = None;
    let mut only: Vec<String> = Vec::new();
    let mut pipeline_rate: Option<f64> = None;
    let mut on_cluster = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => mode = "quick",
            "--cluster" => on_cluster = true,
            "--smoke" => mode = "smoke",
            "--json" => json = args.next().map(PathBuf::from),
            "--only" => only = args.next().map(|list| list.split(',').map(str::to_owned).collect()).unwrap_or_default(),
            "--pipeline-rate" => match args.next().and_then(|rate| rate.parse::<f64>().ok()).filter(|r| *r > 0.0) {
                Some(rate) => pipeline_rate = Some(rate),
                None => {
                    eprintln!("--pipeline-rate needs a positive number of orders per second");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument {other:?}\nusage: {USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let mut plan = Plan::new(mode);
    plan.pipeline_rate = pipeline_rate;
    let server =
        std::env::var("BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
    let amqp = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let (amqp, vhost) = queues::isolated(&amqp);
    let mut stack = Stack::new(server.clone(), amqp);
    let mut report = Report::default();
    report.set("mode", mode);
    let started = Instant::now();
    let mut outcome = run(&plan, &only, &mut stack, &mut report).await;
    let mut cleanup = stack.reset().await;
    if let Some(vhost) = vhost {
        queues::remove(&vhost);
    }
    if on_cluster && outcome.is_ok() && cleanup.is_ok() {
        (outcome, cleanup) = on_the_cluster(&plan, &only, server, &mut report).await;
    }
    report.set("elapsed_s", round(started.elapsed().as_secs_f64(), 1));
    report.print();
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.json()).expect("json");
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match outcome.and(cleanup) {
        Ok(()) => {
            println!(
                "\nbench: every order has exactly one notification ({} mode, {:.0} s)",
                mode,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\nbench FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "bench [--quick | --smoke] [--json PATH] [--only PHASE,...] [--pipeline-rate N] [--cluster]";

/// The phases that run again on the cluster.
const CLUSTER_PHASES: [&str; 2] = ["end_to_end", "pipeline"];

/// The ceilings, end_to_end and pipeline against a three-node cluster (its
/// own, so no vhost is needed), recorded under `cluster.` with each figure's
/// ratio to the same figure on the single node under `cluster_ratio.`.
async fn on_the_cluster(
    plan: &Plan,
    only: &[String],
    server: String,
    report: &mut Report,
) -> (anyhow::Result<()>, anyhow::Result<()>) {
    let cluster = match cluster::Cluster::up() {
        Ok(cluster) => cluster,
        Err(err) => return (Err(err), Ok(())),
    };
    let phases: Vec<String> = CLUSTER_PHASES
        .iter()
        .filter(|phase| only.is_empty() || only.iter().any(|o| o == *phase))
        .map(|phase| (*phase).to_owned())
        .collect();
    let mut stack = Stack::new(server, cluster.urls.clone());
    let mut figures = Report::default();
    let outcome = run(plan, &phases, &mut stack, &mut figures).await;
    let cleanup = stack.reset().await;
    drop(cluster);
    let single: std::collections::BTreeMap<String, f64> =
        report.numbers().map(|(key, value)| (key.to_owned(), value)).collect();
    for (key, value) in figures.numbers() {
        report.set(&format!("cluster.{key}"), value);
        if let Some(base) = single.get(key).filter(|base| **base != 0.0) {
            report.set(&format!("cluster_ratio.{key}"), round(value / base, 3));
        }
    }
    for (what, value, against) in figures.rows() {
        report.row(format!("cluster: {what}"), value.clone(), against.clone());
    }
    for (key, what) in [("pipeline.orders_per_s", "pipeline orders/s"), ("pipeline.p99_ms", "pipeline p99")] {
        if let (Some(on_cluster), Some(base)) =
            (figures.numbers().find(|(k, _)| *k == key).map(|(_, v)| v), single.get(key))
        {
            report.row(format!("cluster / single node: {what}"), format!("{:.3}x", on_cluster / base), "same run");
        }
    }
    (outcome, cleanup)
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

/// The phases `--only` can pick; the ceilings always run (every ratio needs them).
const PHASES: [&str; 5] = ["create_order", "relay_on", "end_to_end", "drain", "pipeline"];

async fn run(plan: &Plan, only: &[String], stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
    stack.reset().await?;
    let ceilings = ceilings(plan, stack, report).await?;
    let pg = ceilings.pg;
    for phase in PHASES {
        if !only.is_empty() && !only.iter().any(|o| o == phase) {
            continue;
        }
        match phase {
            "create_order" => create_order(plan, stack, report, pg).await?,
            "relay_on" => relay_on(plan, stack, report, pg).await?,
            "end_to_end" => end_to_end(plan, stack, report).await?,
            "drain" => drain(plan, stack, report, &ceilings).await?,
            _ => pipeline(plan, stack, report, &ceilings).await?,
        }
        stack.reset().await?;
    }
    report.set("rss_mib.orders", round(stack.peak_rss_orders, 1));
    report.set("rss_mib.notifications", round(stack.peak_rss_notifications, 1));
    report.row("peak RSS orders", format!("{:.1} MiB", stack.peak_rss_orders), "target <= 32 MiB");
    report.row("peak RSS notifications", format!("{:.1} MiB", stack.peak_rss_notifications), "target <= 32 MiB");
    Ok(())
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

async fn create_order(plan: &Plan, stack: &mut Stack, report: &mut Report, pg: f64) -> anyhow::Result<()> {
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

async fn relay_on(plan: &Plan, stack: &mut Stack, report: &mut Report, pg: f64) -> anyhow::Result<()> {
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

async fn end_to_end(plan: &Plan, stack: &mut Stack, report: &mut Report) -> anyhow::Result<()> {
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

/// The drain with the consumer running, as a share of the event-shaped
/// publish-while-consuming ceiling, at least.
const DRAIN_TARGET: f64 = 0.85;

fn quantile_label(quantile: f64) -> &'static str {
    if quantile < 0.9 { "p50" } else { "p99" }
}

/// `value / floor`, three decimals; a floor of zero (nothing measured) gives zero.
fn ratio_to(value: f64, floor: f64) -> f64 {
    if floor > 0.0 { round(value / floor, 3) } else { 0.0 }
}

/// A target's text with its mark: met or MISSED.
fn target_mark(met: bool, target: &str) -> String {
    format!("{target} {}", if met { "✓" } else { "✗ MISSED" })
}

async fn drain(plan: &Plan, stack: &mut Stack, report: &mut Report, ceilings: &Ceilings) -> anyhow::Result<()> {
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

async fn pipeline(plan: &Plan, stack: &mut Stack, report: &mut Report, ceilings: &Ceilings) -> anyhow::Result<()> {
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
    let (mut rate, mut held, mut failed) = (start, None::<f64>, None::<f64>);
    let mut probes = Vec::new();
    for _ in 0..steps {
        let window = pipeline_window(stack, rate, plan.probe, plan.settle, "pipeline search").await?;
        probes.push(window.summary(rate));
        if window.held(rate) {
            held = Some(rate);
        } else {
            failed = Some(rate);
        }
        rate = match (held, failed) {
            (_, None) => rate * 1.25,
            (None, Some(failed)) => failed * 0.8,
            (Some(held), Some(failed)) if failed > held * 1.05 => (held + failed) / 2.0,
            (Some(_), Some(_)) => break,
        };
    }
    let mut best = held.unwrap_or(rate);
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

/// A report row for a [`cpu::CpuSnapshot::per_unit`] breakdown.
fn cpu_row(report: &mut Report, label: &str, cpu: &serde_json::Value) {
    let part = |name: &str| cpu.get(name).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    report.row(
        label,
        format!("{:.0} us", part("total")),
        format!(
            "postgres {:.0}, rabbitmq {:.0}, orders {:.0}, notifications {:.0}, bench {:.0}; cores {:.0}% busy",
            part("postgres"),
            part("rabbitmq"),
            part("orders"),
            part("notifications"),
            part("bench"),
            part("busy_share_of_cores") * 100.0
        ),
    );
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
