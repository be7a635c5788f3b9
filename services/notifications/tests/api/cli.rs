//! The real binary's command line as clap reads it: help that names every
//! command and the dead-letter console's options, `--version`, and a typo
//! refused by name (exit 2) instead of a silently different run.

use std::process::{Command, Output};

/// Runs `notifications` with `args` against servers that do not answer, so
/// that a command line taken for a run fails fast instead of serving.
fn notifications(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_notifications"))
        .args(args)
        .env("NOTIFICATIONS_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:1")
        .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("notifications runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const FILTERS: [&str; 6] = ["--reason", "--type", "--since", "--until", "--correlation-id", "--state"];

#[test]
fn help_names_every_command_and_version_names_the_binary() {
    let list = [&FILTERS[..], &["--page-size", "--page-token", "--json", "--addr"]].concat();
    let purge =
        [&FILTERS[..], &["--all", "--by", "--reason-text", "--limit", "--dry-run", "--json", "--addr"]].concat();
    for (args, words) in [
        (&["--help"][..], &["serve", "replay-dlq", "dlq", "healthcheck", "--version", "INBOX_", "exit status"][..]),
        (&["replay-dlq", "--help"], &["--limit <N>"]),
        (&["dlq", "--help"], &["list", "groups", "show", "replay", "purge", "NOTIFICATIONS_ADMIN_TOKEN_FILE"]),
        (&["dlq", "list", "--help"], &list),
        (&["dlq", "purge", "--help"], &purge),
    ] {
        let out = notifications(args);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        for word in words {
            assert!(help.contains(word), "{args:?}: {word} missing from {help}");
        }
    }
    let out = notifications(&["-V"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("notifications {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_typo_is_a_usage_error_that_names_it() {
    for (args, named) in [
        (&["--jsn"][..], "'--jsn'"),
        (&["serv"], "'serv'"),
        (&["replay-dlq", "--limt", "3"], "'--limt'"),
        (&["replay-dlq", "--limit", "many"], "'many'"),
        (&["dlq", "drop"], "'drop'"),
        (&["dlq", "list", "--jsn"], "'--jsn'"),
        (&["dlq", "list", "--state", "alive"], "'alive'"),
        (&["dlq", "list", "--since", "yesterday"], "'yesterday'"),
        (&["dlq", "list", "an-id"], "'an-id'"),
        // A replay of every dead letter is asked for by name.
        (&["dlq", "replay"], "--all"),
        (&["dlq", "purge", "an-id"], "--by"),
    ] {
        let out = notifications(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {named} not named in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing ran: {}", text(&out.stdout));
    }
}
