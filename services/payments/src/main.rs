//! `payments` — serve (default), `replay-dlq [--limit N]`, or `healthcheck`.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};
use infra::config::{ConfigErrors, warn_unknown_variables};
use payments::{Config, build, config};

const AFTER_HELP: &str = "\
Configuration comes from the environment (docs/payments.md lists every variable and its default):
  PAYMENTS_GRPC_ADDR (0.0.0.0:50053), PAYMENTS_METRICS_ADDR (0.0.0.0:9466),
  PAYMENTS_DATABASE_URL[_FILE] (postgres://postgres:postgres@localhost:5432/pulse_payments),
  PAYMENTS_DB_MAX_CONNECTIONS, PAYMENTS_DB_MIN_CONNECTIONS, PAYMENTS_DB_ACQUIRE_TIMEOUT_MS,
  AMQP_URL, PAYMENTS_EXCHANGE (pulse.events), PAYMENTS_QUEUE_PREFIX (pulse),
  PAYMENTS_PREFETCH, PAYMENTS_BATCH_SIZE, PAYMENTS_MAX_ATTEMPTS, PAYMENTS_DEDUP_WINDOW_SECS,
  PAYMENTS_DEFAULT_CREDIT (1000.00), PAYMENTS_ADMIN_TOKEN_FILE, PAYMENTS_ADMIN_CLIENT_NAMES,
  PAYMENTS_TLS_CERT_FILE, PAYMENTS_TLS_KEY_FILE, PAYMENTS_TLS_CLIENT_CA_FILE,
  INBOX_*, OUTBOX_*, RUST_LOG, LOG_FORMAT, OTEL_*.
A variable starting with PAYMENTS_, INBOX_ or OUTBOX_ that payments does not read is warned about.

exit status: 0 done or stopped cleanly; 1 failed; 2 invalid configuration (every
problem is printed on stderr) or usage.";

/// The command line; no subcommand serves.
#[derive(Debug, Parser)]
#[command(
    name = "payments",
    version,
    about = "payments: the Pulse Payments service (gRPC PaymentService), its command consumer and its outbox relay",
    override_usage = "payments [serve | replay-dlq [--limit N] | healthcheck | --help | --version]",
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
    /// Move dead letters (the first N) back to the main queue
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
    let _telemetry = telemetry::init("payments");
    match run(cli.command.unwrap_or(Command::Serve)).await {
        Ok(code) => code,
        // Plain text, every problem at once: there may be no log pipeline to read yet.
        Err(err) => match err.downcast_ref::<ConfigErrors>() {
            Some(problems) => {
                eprintln!("payments: {problems}");
                ExitCode::from(2)
            }
            None => {
                tracing::error!(error = format!("{err:#}"), "payments failed");
                eprintln!("payments: {err:#}");
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
            let moved = payments::replay_dead_letters(&config, limit).await?;
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
