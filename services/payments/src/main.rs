//! `payments` — serve (default), `replay-dlq [--limit N]`, or `healthcheck`.

use std::process::ExitCode;

use infra::config::warn_unknown_variables;
use payments::{Config, build, config};
use platform::cli::{Binary, Command};

const ABOUT: &str =
    "payments: the Pulse Payments service (gRPC PaymentService), its command consumer and its outbox relay";

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

#[tokio::main]
async fn main() -> ExitCode {
    platform::cli::run_consumer_binary(Binary { name: "payments", about: ABOUT, after_help: AFTER_HELP }, run).await
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    warn_unknown_variables(config::PREFIXES, &config::known_variables(), &[]);
    platform::consumer::run(command, &config.inbox, config.server.grpc_addr, build(config.clone())).await
}
