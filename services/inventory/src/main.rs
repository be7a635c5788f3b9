//! `inventory` — serve (default), `replay-dlq [--limit N]`, or `healthcheck`.

use std::process::ExitCode;

use infra::config::warn_unknown_variables;
use inventory::{Config, build, config};
use platform::cli::{Binary, Command};

const ABOUT: &str =
    "inventory: the Pulse Inventory service (gRPC stock and reservations), its command consumer and its outbox relay";

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

#[tokio::main]
async fn main() -> ExitCode {
    platform::cli::run_consumer_binary(Binary { name: "inventory", about: ABOUT, after_help: AFTER_HELP }, run).await
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), &[]);
    platform::consumer::run(command, &config.inbox, config.server.grpc_addr, build(config.clone())).await
}
