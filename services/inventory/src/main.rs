//! `inventory` — serve (default), `replay-dlq [--limit N]`, or `healthcheck`.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};
use infra::config::{ConfigErrors, warn_unknown_variables};
use inventory::{Config, build, config};

const AFTER_HELP: &str = "\
Configuration comes from the environment; docs/inventory.md lists every variable and its default:
  INVENTORY_GRPC_ADDR (0.0.0.0:50054), INVENTORY_METRICS_ADDR (0.0.0.0:9467),
  INVENTORY_DATABASE_URL (postgres://postgres:postgres@localhost:5432/pulse_inventory) or
  INVENTORY_DATABASE_URL_FILE (a file holding it),
  INVENTORY_DB_MAX_CONNECTIONS, INVENTORY_DB_MIN_CONNECTIONS, INVENTORY_DB_ACQUIRE_TIMEOUT_MS,
  INVENTORY_EXCHANGE (pulse.events), INVENTORY_QUEUE_PREFIX (pulse), INVENTORY_PREFETCH,
  INVENTORY_BATCH_SIZE, INVENTORY_MAX_ATTEMPTS, INVENTORY_TLS_CERT_FILE, INVENTORY_TLS_KEY_FILE,
  INVENTORY_TLS_CLIENT_CA_FILE, INVENTORY_ADMIN_TOKEN_FILE, INVENTORY_ADMIN_CLIENT_NAMES,
  AMQP_URL, INBOX_*, OUTBOX_*, RUST_LOG, LOG_FORMAT, OTEL_*.
A variable starting with INVENTORY_, INBOX_ or OUTBOX_ that inventory does not read is warned about.

exit status: 0 done or stopped cleanly; 1 failed; 2 invalid configuration (every
problem is printed on stderr) or usage.";

/// The command line; no subcommand serves.
#[derive(Debug, Parser)]
#[command(
    name = "inventory",
    version,
    about = "inventory: the Pulse Inventory service (gRPC stock and reservations), its command consumer and its outbox relay",
    override_usage = "inventory [serve | replay-dlq [--limit N] | healthcheck | --help | --version]",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API, consume commands and relay replies (the default)
    Serve,
    /// Move dead-lettered commands (the first N) back to the commands queue
    ReplayDlq {
        /// Move at most N
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Ask the local gRPC health service; exit 0 when SERVING
    Healthcheck,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return platform::cli::finish(&err),
    };
    let _telemetry = telemetry::init("inventory");
    match run(cli.command.unwrap_or(Command::Serve)).await {
        Ok(code) => code,
        // Plain text, every problem at once: there may be no log pipeline to read yet.
        Err(err) => match err.downcast_ref::<ConfigErrors>() {
            Some(problems) => {
                eprintln!("inventory: {problems}");
                ExitCode::from(2)
            }
            None => {
                tracing::error!(error = format!("{err:#}"), "inventory failed");
                eprintln!("inventory: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), &[]);
    match command {
        Command::Serve => {
            let app = build(config).await?;
            app.run_until_stopped(platform::shutdown::on_signal()).await?;
        }
        Command::ReplayDlq { limit } => {
            let moved = inventory::replay_dead_letters(&config, limit).await?;
            println!("replayed {moved} message(s) from {}.dlq to {}", config.inbox.queue, config.inbox.queue);
        }
        Command::Healthcheck => {
            // The server listens on the configured port of every interface; ask it locally.
            let addr = SocketAddr::from(([127, 0, 0, 1], config.grpc_addr.port()));
            if !platform::grpc::probe(addr, "").await.unwrap_or(false) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
