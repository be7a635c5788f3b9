//! `orders` — serve (default), `outbox ...`, `healthcheck`, `--help`, `--version`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orders::{
    config::{self, Config},
    operator,
    startup::App,
};

const AFTER_HELP: &str = "\
Configuration comes from the environment (ORDERS_*, SAGA_*, OUTBOX_*, INBOX_*, AMQP_URL,
RUST_LOG, LOG_FORMAT, OTEL_*); docs/configuration.md lists every variable and its default.
A variable starting with ORDERS_, SAGA_, OUTBOX_ or INBOX_ that orders does not read is
warned about.

exit status: 0 stopped cleanly (or the command succeeded); 1 could not start, stopped with
an error, or (outbox) could not reach the database; 2 invalid configuration (every problem
is printed on stderr) or usage.";

/// The command line; no subcommand serves.
#[derive(Debug, Parser)]
#[command(
    name = "orders",
    version,
    about = "orders: the Pulse Orders service (gRPC CreateOrder/GetOrder) and its outbox relay",
    override_usage = "orders [serve | outbox status [--json] [--errors N] | outbox maintain-archive | healthcheck | --help | --version]",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API and relay the outbox as ORDERS_ROLE says (the default)
    Serve,
    /// Read or tend the outbox straight from the orders database, whether or not any relay runs
    #[command(after_help = OUTBOX_AFTER_HELP)]
    Outbox {
        #[command(subcommand)]
        command: Outbox,
    },
    /// Ask the local gRPC health service; exit 0 when SERVING (for container health checks)
    Healthcheck,
}

#[derive(Debug, Subcommand)]
enum Outbox {
    /// Pending rows, the oldest one's age, each partition's backlog and owner, the relays
    /// present, unowned partitions and the last publish errors
    Status {
        /// The same as one JSON object (keys in docs/operations.md, "Outbox status")
        #[arg(long)]
        json: bool,
        /// How many of the last publish errors to show
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i64).range(0..=10_000))]
        errors: i64,
    },
    /// One pass of archive upkeep, as the relay runs every minute (OUTBOX_RETENTION_HOURS must be set)
    MaintainArchive,
}

const OUTBOX_AFTER_HELP: &str = "\
status [--json] [--errors N]: each partition's owner is a relay connection (pid, application
name, client address); --json prints one JSON object (keys in docs/operations.md, \"Outbox
status\"); the last N publish errors (default 10).
maintain-archive: hourly partitions of outbox_archive created ahead, expired ones dropped.

exit status: 0 done; 1 the database cannot be reached (or the command failed there); 2 usage or
configuration.";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return platform::cli::finish(&err),
    };
    match cli.command {
        None | Some(Command::Serve) => serve().await,
        // For container health checks in images without a shell.
        Some(Command::Healthcheck) => healthcheck().await,
        // operator::outbox takes the words of its command line: hand it those clap checked.
        Some(Command::Outbox { command: Outbox::Status { json, errors } }) => {
            let errors = errors.to_string();
            let mut args = vec!["status", "--errors", &errors];
            if json {
                args.push("--json");
            }
            operator::outbox(&args).await
        }
        Some(Command::Outbox { command: Outbox::MaintainArchive }) => operator::outbox(&["maintain-archive"]).await,
    }
}

async fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(problems) => {
            // Plain text, every problem at once: there may be no log pipeline to read yet.
            eprintln!("orders: {problems}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init("orders");
    infra::config::warn_unknown_variables(config::PREFIXES, &config::known_variables(), &[]);
    let shutdown = platform::shutdown::on_signal();
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "orders cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "orders stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck() -> ExitCode {
    let port = Config::from_env().map(|c| c.grpc_addr.port()).unwrap_or(50051);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match platform::grpc::probe(addr, contracts::orders::v1::SERVICE_NAME).await {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
