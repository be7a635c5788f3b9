//! The real binary's command line and configuration: help naming every
//! variable, `--version`, every problem of a bad configuration at once
//! (exit 2), unknown variables named at start, a typo refused by name.

use std::{process::Output, time::Duration};

/// Runs `inventory` with `args` and `env` against servers that do not answer.
async fn inventory(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_inventory"))
            .args(args)
            .env("INVENTORY_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("INVENTORY_GRPC_ADDR", "127.0.0.1:0")
            .env("INVENTORY_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("inventory exits by itself")
    .expect("inventory runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn help_names_the_commands_and_every_variable() {
    let out = inventory(&["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    let words = ["usage: inventory", "serve", "replay-dlq", "healthcheck", "AMQP_URL", "INBOX_", "OUTBOX_"];
    for word in words.iter().chain(inventory::config::VARIABLES) {
        assert!(help.contains(word), "{word} missing from {help}");
    }
    assert!(help.contains("exit status"), "{help}");
    let out = inventory(&["--version"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("inventory {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn every_configuration_problem_is_printed_at_once_and_exits_2() {
    let bad = [
        ("INVENTORY_GRPC_ADDR", "localhost"),
        ("INVENTORY_PREFETCH", "many"),
        ("INVENTORY_DB_MAX_CONNECTIONS", "-1"),
        ("OUTBOX_BATCH_SIZE", "0"),
        ("INBOX_MAX_MESSAGE_BYTES", "0"),
    ];
    let out = inventory(&[], &bad).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("inventory: invalid configuration (5 problems):"), "{stderr}");
    for (name, _) in bad {
        let lines = stderr.lines().filter(|line| line.contains(&format!("environment variable {name} is invalid")));
        assert_eq!(lines.count(), 1, "{name} named once in {stderr}");
    }
    assert!(!stderr.contains("cannot connect"), "refused before connecting: {stderr}");
}

#[tokio::test]
async fn unknown_variables_are_warned_about_by_name() {
    let env = [("INVENTORY_PREFECH", "10"), ("OUTBOX_FOO", "1")];
    let out = inventory(&[], &env).await;
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the unreachable database stops it: {printed}");
    for warning in [
        "unknown variable INVENTORY_PREFECH ignored; did you mean INVENTORY_PREFETCH?",
        "unknown variable OUTBOX_FOO ignored",
    ] {
        assert!(printed.contains(warning), "{warning}: {printed}");
    }
}

#[tokio::test]
async fn a_typo_is_a_usage_error_that_names_it() {
    for (args, named) in [(&["serv"][..], "'serv'"), (&["replay-dlq", "--limt", "3"], "'--limt'")] {
        let out = inventory(args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(named), "{args:?}: {}", text(&out.stderr));
    }
}
