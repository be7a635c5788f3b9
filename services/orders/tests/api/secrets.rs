//! Start-up failures of the real binary: no credential reaches a log line or
//! an error (started against unreachable servers with passwords in their URLs,
//! at debug level), and unusable settings are refused by name.

use std::time::Duration;

const DB_PASSWORD: &str = "s3cretpw";
const AMQP_PASSWORD: &str = "amqps3cret";

/// Runs the `orders` binary with `database_url` and returns its exit status and everything it printed.
async fn run_orders(database_url: &str) -> (std::process::ExitStatus, String) {
    run_orders_with(database_url, &[]).await
}

/// The same, with `extra` environment variables.
async fn run_orders_with(database_url: &str, extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
            .envs(extra.iter().copied())
            .env("ORDERS_DATABASE_URL", database_url)
            .env("AMQP_URL", format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:1/%2f"))
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("orders exits by itself")
    .expect("orders runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, printed)
}

#[tokio::test]
async fn a_failed_database_connection_logs_no_password() {
    let (status, printed) = run_orders(&format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x")).await;
    assert!(!status.success());
    assert!(printed.contains("orders cannot start"), "the failure is logged: {printed}");
    assert!(printed.contains("cannot connect"), "with its cause: {printed}");
    assert!(!printed.contains(DB_PASSWORD), "{printed}");
    assert!(!printed.contains(AMQP_PASSWORD), "{printed}");
}

#[tokio::test]
async fn an_invalid_database_url_is_reported_without_its_password() {
    let (status, printed) = run_orders(&format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:99999/x")).await;
    assert!(!status.success());
    assert!(printed.contains("ORDERS_DATABASE_URL"), "the variable is named: {printed}");
    assert!(!printed.contains(DB_PASSWORD), "{printed}");
}

#[tokio::test]
async fn unusable_relay_settings_are_refused_by_name() {
    let url = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x");
    for (name, value) in [
        ("OUTBOX_GATHER_FROM_RATE", "-5"),
        ("OUTBOX_GATHER_FROM_RATE", "NaN"),
        ("OUTBOX_GATHER_MS", "5000"),
        ("ORDERS_DB_WRITERS", "0"),
        // More writers than connections would leave calls waiting on each other for connections.
        ("ORDERS_DB_WRITERS", "33"),
    ] {
        let (status, printed) = run_orders_with(&url, &[(name, value)]).await;
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(printed.contains(name), "{name}={value}: the variable is named: {printed}");
        assert!(!printed.contains("cannot connect"), "{name}={value}: refused before connecting: {printed}");
    }
}
