//! The real binary's command line: help naming the commands and variables,
//! and a configuration with several problems refused all at once (exit 2).

use std::process::{Command, Output};

/// Runs `payments` with `args` and `env` against servers that do not answer,
/// so that a command line taken for a run fails fast instead of serving.
fn payments(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payments"))
        .args(args)
        .env("PAYMENTS_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("PAYMENTS_GRPC_ADDR", "127.0.0.1:1")
        .env("PAYMENTS_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("payments runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_the_commands_and_the_variables() {
    let out = payments(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for word in [
        "serve",
        "replay-dlq",
        "healthcheck",
        "PAYMENTS_GRPC_ADDR",
        "PAYMENTS_DATABASE_URL",
        "PAYMENTS_QUEUE_PREFIX",
        "PAYMENTS_DEFAULT_CREDIT",
        "PAYMENTS_ADMIN_TOKEN_FILE",
        "OUTBOX_",
        "INBOX_",
        "exit status",
    ] {
        assert!(help.contains(word), "{word} missing from {help}");
    }
    let out = payments(&["serv"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'serv'"));
}

#[test]
fn every_configuration_problem_is_printed_at_once_and_exits_2() {
    let out = payments(
        &[],
        &[
            ("PAYMENTS_DEFAULT_CREDIT", "-5"),
            ("PAYMENTS_GRPC_ADDR", "nowhere"),
            ("PAYMENTS_PREFETCH", "many"),
            ("OUTBOX_BATCH_SIZE", "0"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for name in ["PAYMENTS_DEFAULT_CREDIT", "PAYMENTS_GRPC_ADDR", "PAYMENTS_PREFETCH", "OUTBOX_BATCH_SIZE"] {
        assert!(stderr.contains(name), "{name} missing from {stderr}");
    }
}

#[test]
fn unknown_variables_are_warned_about_by_name() {
    let env = [("PAYMENTS_DEFAULT_CREDT", "10"), ("OUTBOX_BATCH_SIZ", "10"), ("INBOX_FOO", "1")];
    let out = payments(&[], &env);
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the unreachable database stops it: {printed}");
    for warning in [
        "unknown variable PAYMENTS_DEFAULT_CREDT ignored; did you mean PAYMENTS_DEFAULT_CREDIT?",
        "unknown variable OUTBOX_BATCH_SIZ ignored; did you mean OUTBOX_BATCH_SIZE?",
        "unknown variable INBOX_FOO ignored",
    ] {
        assert!(printed.contains(warning), "{warning}: {printed}");
    }
}
