//! `notifications` — serve (default), `replay-dlq [--limit N]`, `dlq <command>`, or `healthcheck`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infra::config::warn_unknown_variables;
use notifications::{Config, build, config, dlq};

const AFTER_HELP: &str = "\
Configuration comes from the environment (NOTIFICATIONS_*, INBOX_*, DELIVERY_*, SMTP_*, AMQP_URL,
RUST_LOG, LOG_FORMAT, OTEL_*); docs/configuration.md lists every variable and its default.
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
    #[command(flatten)]
    Common(platform::cli::Command),
    /// The dead-letter console: list, groups, show, replay, purge (docs/operations.md, "Dead-letter console")
    #[command(after_help = dlq::AFTER_HELP)]
    Dlq {
        // Boxed: its options dwarf every other command's.
        #[command(subcommand)]
        command: Box<dlq::DlqCommand>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::cli::run_binary("notifications", |cli: Cli| {
        run(cli.command.unwrap_or(Command::Common(platform::cli::Command::Serve)))
    })
    .await
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), config::RENAMED);
    match command {
        Command::Common(command) => {
            platform::consumer::run(command, &config.inbox, config.grpc_addr, build(config.clone())).await
        }
        Command::Dlq { command } => dlq::run(&command, &config).await.map(|()| ExitCode::SUCCESS),
    }
}
