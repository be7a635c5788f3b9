//! `bench`: Pulse's throughput, end-to-end latency and backlog drain, each
//! beside a ceiling measured in the same run, and the order saga and webhook
//! deliveries beside the one hop. Starts and stops the binaries it measures
//! (built alongside it).
//!
//! `bench --help` lists the flags; docs/benchmark.md explains every figure.

mod ceilings;
mod cli;
mod cluster;
mod cpu;
mod floor;
mod latency;
mod load;
mod phases;
mod plan;
mod procs;
mod queues;
mod receiver;
mod report;
mod stack;

use std::{process::ExitCode, time::Instant};

use clap::Parser;

use crate::{
    cli::Cli,
    phases::run,
    plan::Plan,
    report::{Report, round},
    stack::Stack,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return platform::cli::finish(&err),
    };
    let mode = cli.mode();
    let (json, only, on_cluster) = (cli.json, cli.only, cli.cluster);
    let mut plan = Plan::new(mode);
    plan.pipeline_rate = cli.pipeline_rate;
    let server =
        std::env::var("BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
    let amqp = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let (amqp, vhost) = queues::isolated(&amqp);
    let mut stack = Stack::new(server.clone(), amqp);
    let mut report = Report::default();
    report.set("mode", mode);
    let started = Instant::now();
    let mut outcome = run(&plan, &only, &mut stack, &mut report).await;
    let mut cleanup = stack.finish().await;
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
