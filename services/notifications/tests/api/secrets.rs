//! No credential reaches a log line or an error: the real binary, started
//! against unreachable servers with passwords in their URLs, at debug level.
//! Unusable settings are refused at start, naming the variable.

use std::time::Duration;

const DB_PASSWORD: &str = "s3cretpw";
const AMQP_PASSWORD: &str = "amqps3cret";

/// Runs the binary against unreachable servers with `extra` set; its exit status and output.
async fn run_notifications(extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_notifications"))
            .envs(extra.iter().copied())
            .env("NOTIFICATIONS_DATABASE_URL", format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x"))
            .env("AMQP_URL", format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:1/%2f"))
            .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:0")
            .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("notifications exits by itself")
    .expect("notifications runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, printed)
}

#[tokio::test]
async fn a_failed_database_connection_logs_no_password() {
    let (status, printed) = run_notifications(&[]).await;
    assert!(!status.success());
    assert!(printed.contains("postgres:***@127.0.0.1:1"), "the URL is logged redacted: {printed}");
    assert!(printed.contains("cannot connect"), "the failure is logged with its cause: {printed}");
    assert!(!printed.contains(DB_PASSWORD), "{printed}");
    assert!(!printed.contains(AMQP_PASSWORD), "{printed}");
}

#[tokio::test]
async fn unusable_batch_settings_are_refused_by_name() {
    for (name, value) in [
        ("NOTIFICATIONS_LINGER_MS", "1500"),
        ("NOTIFICATIONS_LINGER_FROM_RATE", "-1"),
        ("NOTIFICATIONS_LINGER_FROM_RATE", "inf"),
        ("NOTIFICATIONS_MAX_MESSAGE_BYTES", "0"),
        ("NOTIFICATIONS_MAX_MESSAGE_BYTES", "1000000000"),
        ("NOTIFICATIONS_MAX_MESSAGE_BYTES", "256KiB"),
    ] {
        let (status, printed) = run_notifications(&[(name, value)]).await;
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(printed.contains(name), "{name}={value}: the variable is named: {printed}");
        assert!(!printed.contains("cannot connect"), "{name}={value}: refused before connecting: {printed}");
    }
}
