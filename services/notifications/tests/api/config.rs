//! The real binary's command line and configuration, as orders has them:
//! `--help` and `--version`, every problem of a bad configuration at once
//! (exit 2), unknown and renamed variables named at start.

use std::{process::Output, time::Duration};

/// Runs `notifications` with `args` and `env` against servers that do not answer.
async fn notifications(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_notifications"))
            .args(args)
            .env("NOTIFICATIONS_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:0")
            .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("notifications exits by itself")
    .expect("notifications runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn help_and_version_are_plain_text_and_exit_0() {
    let out = notifications(&["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for word in ["usage: notifications", "replay-dlq", "NOTIFICATIONS_", "INBOX_", "exit status"] {
        assert!(help.contains(word), "{word} missing from {help}");
    }
    assert!(!help.contains('{'), "plain text, not a log line: {help}");
    let out = notifications(&["--version"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("notifications {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn every_configuration_problem_is_printed_at_once_and_exits_2() {
    let bad = [
        ("NOTIFICATIONS_GRPC_ADDR", "localhost"),
        ("NOTIFICATIONS_CONSUMER_ENABLED", "maybe"),
        ("NOTIFICATIONS_LINGER_MS", "1500"),
        ("NOTIFICATIONS_RETRY_DELAYS_MS", "1s"),
        ("INBOX_MAX_MESSAGE_BYTES", "0"),
    ];
    let out = notifications(&[], &bad).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("notifications: invalid configuration (5 problems):"), "{stderr}");
    for (name, _) in bad {
        let lines = stderr.lines().filter(|line| line.contains(&format!("environment variable {name} is invalid")));
        assert_eq!(lines.count(), 1, "{name} named once in {stderr}");
    }
    assert!(!stderr.contains("cannot connect"), "refused before connecting: {stderr}");
}

#[tokio::test]
async fn unknown_and_renamed_variables_are_warned_about_by_name() {
    let env = [("NOTIFICATIONS_PREFECH", "10"), ("NOTIFICATIONS_MAX_MESSAGE_BYTES", "1000"), ("INBOX_FOO", "1")];
    let out = notifications(&[], &env).await;
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the unreachable database stops it: {printed}");
    for warning in [
        "unknown variable NOTIFICATIONS_PREFECH ignored; did you mean NOTIFICATIONS_PREFETCH?",
        "unknown variable NOTIFICATIONS_MAX_MESSAGE_BYTES ignored; did you mean INBOX_MAX_MESSAGE_BYTES?",
        "unknown variable INBOX_FOO ignored",
    ] {
        assert!(printed.contains(warning), "{warning}: {printed}");
    }
}
