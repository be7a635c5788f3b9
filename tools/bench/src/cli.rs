//! The command line: which mode, which phases, where the JSON goes.

use std::path::PathBuf;

use clap::{ArgGroup, Parser, builder::PossibleValuesParser};

use crate::phases::PHASES;

const AFTER_HELP: &str = "\
The phases are create_order, relay_on, end_to_end, drain, pipeline, saga and webhooks; the
ceilings always run.

bench starts and stops the orders and notifications binaries built beside it, against the
Postgres of BENCH_POSTGRES_URL [postgres://postgres:postgres@127.0.0.1:5432] and the RabbitMQ
of AMQP_URL [amqp://guest:guest@127.0.0.1:5672/%2f]. BENCH_SERVICE_LOG sets the services'
RUST_LOG (default warn); BENCH_LATENCY_DUMP=PATH appends every measured order's created_at and
end-to-end latency (us) to PATH; BENCH_KEEP_DATABASES=1 leaves the services' databases in place
after the run, to be inspected. docs/benchmark.md explains every figure.

exit status: 0 every order has exactly one notification; 1 a phase failed (or the JSON could
not be written); 2 usage.";

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "bench: Pulse's throughput, end-to-end latency and backlog drain, each beside a ceiling \
             measured in the same run",
    override_usage = "bench [--quick | --smoke] [--json PATH] [--only PHASE,...] [--pipeline-rate N] [--cluster]",
    after_help = AFTER_HELP,
    group(ArgGroup::new("mode").args(["quick", "smoke"]))
)]
pub(crate) struct Cli {
    /// Every figure in a few minutes: shorter windows than the full run
    #[arg(long)]
    quick: bool,
    /// Every phase for a second or two, measured not seriously, with its correctness check (CI)
    #[arg(long)]
    smoke: bool,
    /// Also write every figure as JSON to PATH
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// Only these phases, comma-separated (the ceilings always run)
    #[arg(long, value_name = "PHASE,...", value_delimiter = ',', value_parser = PossibleValuesParser::new(PHASES))]
    pub(crate) only: Vec<String>,
    /// Skip the pipeline's search and sustain N orders/s
    #[arg(long, value_name = "N", value_parser = positive)]
    pub(crate) pipeline_rate: Option<f64>,
    /// Then run the ceilings, end_to_end and pipeline again against a local three-node RabbitMQ
    /// cluster (build-support/scripts/rabbitmq-cluster.sh), each figure beside the single node's
    #[arg(long)]
    pub(crate) cluster: bool,
}

impl Cli {
    /// The plan's mode: `smoke`, `quick` or `full`.
    pub(crate) fn mode(&self) -> &'static str {
        match (self.smoke, self.quick) {
            (true, _) => "smoke",
            (_, true) => "quick",
            _ => "full",
        }
    }
}

fn positive(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err("a positive number of orders per second is needed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
    }

    #[test]
    fn reads_every_flag() {
        let cli = parse(&["--quick", "--json", "b.json", "--only", "end_to_end,pipeline", "--pipeline-rate", "2500"])
            .unwrap();
        assert_eq!(cli.mode(), "quick");
        assert_eq!(cli.json, Some(PathBuf::from("b.json")));
        assert_eq!(cli.only, ["end_to_end", "pipeline"]);
        assert_eq!(cli.pipeline_rate, Some(2500.0));
        assert!(!cli.cluster);
        let cli = parse(&["--smoke", "--cluster"]).unwrap();
        assert_eq!((cli.mode(), cli.cluster, cli.only.is_empty()), ("smoke", true, true));
        assert_eq!(parse(&[]).unwrap().mode(), "full");
    }

    #[test]
    fn refuses_what_would_run_something_else() {
        for bad in [
            &["--smok"][..],
            &["--quick", "--smoke"],
            &["--only", "drian"],
            &["--only", "drain,"],
            &["--pipeline-rate", "0"],
            &["--pipeline-rate", "fast"],
            &["--json"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(err.exit_code(), 2, "{bad:?} is a usage error");
        }
    }
}
