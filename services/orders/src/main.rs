//! `orders` — serve (default), `outbox ...`, `healthcheck`, `--help`, `--version`.

use std::process::ExitCode;

use orders::{
    config::{self, Config},
    operator,
    startup::App,
};

const HELP: &str = "\
orders: the Pulse Orders service (gRPC CreateOrder/GetOrder) and its outbox relay

usage: orders [serve | outbox status [--json] | outbox maintain-archive | healthcheck | --help | --version]

  serve                    serve the gRPC API and relay the outbox as ORDERS_ROLE says (the default)
  outbox status [--json]   the outbox's backlog, partition owners and last errors, read from the
                           database (`orders outbox --help` for more)
  outbox maintain-archive  one pass of outbox archive upkeep
  healthcheck              ask the local gRPC health service; exit 0 when SERVING (for container
                           health checks)
  --help                   print this text
  --version                print the version

Configuration comes from the environment (ORDERS_*, OUTBOX_*, AMQP_URL, RUST_LOG,
LOG_FORMAT, OTEL_*); docs/configuration.md lists every variable and its default.
A variable starting with ORDERS_ or OUTBOX_ that orders does not read is warned about.

exit status: 0 stopped cleanly (or the command succeeded); 1 could not start, stopped with
an error, or (outbox) could not reach the database; 2 invalid configuration (every problem
is printed on stderr) or usage.
";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--help" | "-h" | "help"] => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("orders {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        // For container health checks in images without a shell.
        ["healthcheck"] => healthcheck().await,
        ["outbox", "--help" | "-h"] => {
            println!("{}", operator::OUTBOX_USAGE);
            ExitCode::SUCCESS
        }
        ["outbox", rest @ ..] => operator::outbox(rest).await,
        [] | ["serve"] => serve().await,
        _ => {
            eprintln!("orders: unknown arguments {args:?}\n\n{HELP}");
            ExitCode::from(2)
        }
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
