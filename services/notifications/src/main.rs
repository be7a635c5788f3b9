//! `notifications` — serve (default), `replay-dlq [--limit N]`, `dlq <command>`, or `healthcheck`.

use std::{net::SocketAddr, process::ExitCode};

use notifications::{Config, build};

const USAGE: &str = "usage: notifications [serve | replay-dlq [--limit N] | dlq <command> | healthcheck]";

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = platform::telemetry::init("notifications");
    match run(std::env::args().skip(1).collect()).await {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "notifications failed");
            eprintln!("notifications: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
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
