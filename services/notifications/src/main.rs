//! `notifications` — serve (default), `replay-dlq [--limit N]`, `dlq <command>`, or `healthcheck`.

use std::{net::SocketAddr, process::ExitCode};

use infra::config::{ConfigErrors, warn_unknown_variables};
use notifications::{Config, build, config};

const USAGE: &str =
    "usage: notifications [serve | replay-dlq [--limit N] | dlq <command> | healthcheck | --help | --version]";

const HELP: &str = "\
notifications: the Pulse Notifications service (gRPC ListNotifications) and its event consumer

usage: notifications [serve | replay-dlq [--limit N] | dlq <command> | healthcheck | --help | --version]

  serve                   serve the gRPC API and consume events (the default)
  replay-dlq [--limit N]  move dead letters (the first N) back to the main queue
  dlq <command>           the dead-letter console: list, groups, show, replay, purge
                          (`notifications dlq --help`; docs/operations.md, \"Dead-letter console\")
  healthcheck             ask the local gRPC health service; exit 0 when SERVING
  --help                  print this text
  --version               print the version

Configuration comes from the environment (NOTIFICATIONS_*, INBOX_*, AMQP_URL, RUST_LOG,
LOG_FORMAT, OTEL_*); docs/configuration.md lists every variable and its default.
A variable starting with NOTIFICATIONS_ or INBOX_ that notifications does not read is warned about.

exit status: 0 done or stopped cleanly; 1 failed; 2 invalid configuration (every
problem is printed on stderr).
";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("notifications {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let _telemetry = telemetry::init("notifications");
    match run(args).await {
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

async fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), config::RENAMED);
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => {
            let app = build(config).await?;
            app.run_until_stopped(platform::shutdown::on_signal()).await?;
        }
        ["replay-dlq", rest @ ..] => {
            let limit = match rest {
                [] => None,
                ["--limit", n] => Some(n.parse().map_err(|_| anyhow::anyhow!("--limit takes a number\n{USAGE}"))?),
                _ => anyhow::bail!(USAGE),
            };
            let moved = notifications::replay_dead_letters(&config, limit).await?;
            println!("replayed {moved} message(s) from {}.dlq to {}", config.inbox.queue, config.inbox.queue);
        }
        ["dlq", rest @ ..] => notifications::dlq::run(rest, &config).await?,
        ["healthcheck"] => {
            // The server listens on the configured port of every interface; ask it locally.
            let addr = SocketAddr::from(([127, 0, 0, 1], config.grpc_addr.port()));
            if !platform::grpc::probe(addr, "").await.unwrap_or(false) {
                return Ok(ExitCode::FAILURE);
            }
        }
        _ => anyhow::bail!(USAGE),
    }
    Ok(ExitCode::SUCCESS)
}
