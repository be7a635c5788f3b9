//! The real binary's command line as clap reads it: help that names every
//! command, `--version`, and a typo refused by name (exit 2) instead of a
//! silently different run.

use std::process::{Command, Output};

/// Runs `orders` with `args` against servers that do not answer, so that a
/// command line taken for a run fails fast instead of serving.
fn orders(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(args)
        .env("ORDERS_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
        .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("orders runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_every_command_and_version_names_the_binary() {
    for (args, words) in [
        (&["--help"][..], &["serve", "outbox", "healthcheck", "--version", "ORDERS_*", "exit status"][..]),
        (&["help"], &["serve", "outbox", "healthcheck"]),
        (&["outbox", "--help"], &["status", "maintain-archive", "--json", "--errors N", "exit status"]),
        (&["outbox", "status", "--help"], &["--json", "--errors <N>", "docs/operations.md"]),
        (&["outbox", "maintain-archive", "--help"], &["OUTBOX_RETENTION_HOURS"]),
    ] {
        let out = orders(args);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        for word in words {
            assert!(help.contains(word), "{args:?}: {word} missing from {help}");
        }
    }
    for flag in ["--version", "-V"] {
        let out = orders(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out.stdout), format!("orders {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn a_typo_is_a_usage_error_that_names_it() {
    for (args, named) in [
        (&["--jsn"][..], "'--jsn'"),
        (&["serv"], "'serv'"),
        (&["outbox", "status", "--jsn"], "'--jsn'"),
        (&["outbox", "stats"], "'stats'"),
        (&["outbox", "status", "--errors", "10001"], "'10001'"),
        (&["outbox", "status", "--errors"], "'--errors <N>'"),
        (&["healthcheck", "--now"], "'--now'"),
    ] {
        let out = orders(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {named} not named in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing ran: {}", text(&out.stdout));
    }
}
