//! `notifications` — serve (default), `replay-dlq [--limit N]`, `dlq <command>`, or `healthcheck`.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};
use infra::config::{ConfigErrors, warn_unknown_variables};
use notifications::{Config, build, config, dlq};

const AFTER_HELP: &str = "\
Configuration comes from the environment (NOTIFICATIONS_*, INBOX_*, AMQP_URL, RUST_LOG,
LOG_FORMAT, OTEL_*); docs/configuration.md lists every variable and its default.
A variable starting with NOTIFICATIONS_ or INBOX_ that notifications does not read is warned about.

exit status: 0 done or stopped cleanly; 1 failed; 2 invalid configuration (every
problem is printed on stderr) or usage.";

/// The command line; no subcommand serves.
#[derive(Debug, Parser)]
#[command(
    name = "notifications",
    version,
    about = "notifications: the Pulse Notifications service (gRPC ListNotifications) and its event consumer",
    override_usage = "notifications [serve | replay-dlq [--limit N] | dlq <command> | healthcheck | --help | --version]",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API and consume events (the default)
    Serve,
    /// Move dead letters (the first N) back to the main queue
    ReplayDlq {
        /// Move at most N
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// The dead-letter console: list, groups, show, replay, purge (docs/operations.md, "Dead-letter console")
    #[command(after_help = dlq::AFTER_HELP)]
    Dlq {
        // Boxed: its options dwarf every other command's.
        #[command(subcommand)]
        command: Box<dlq::DlqCommand>,
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
    let _telemetry = telemetry::init("notifications");
    match run(cli.command.unwrap_or(Command::Serve)).await {
        Ok(code) => code,
        // Plain text, every problem at once: there may be no log pipeline to read yet.
        Err(err) => match err.downcast_ref::<ConfigErrors>() {
            Some(problems) => {
                eprintln!("notifications: {problems}");
                ExitCode::from(2)
            }
            None => {
                tracing::error!(error = format!("{err:#}"), "notifications failed");
                eprintln!("notifications: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), config::RENAMED);
    match command {
        Command::Serve => {
            let app = build(config).await?;
            app.run_until_stopped(platform::shutdown::on_signal()).await?;
        }
        Command::ReplayDlq { limit } => {
            let moved = notifications::replay_dead_letters(&config, limit).await?;
            println!("replayed {moved} message(s) from {}.dlq to {}", config.inbox.queue, config.inbox.queue);
        }
        Command::Dlq { command } => dlq::run(&command, &config).await?,
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
