//! The real binary's command line and configuration: `--help` and
//! `--version`, every problem of a bad configuration at once (exit 2),
//! unknown variables named at start, and start-up on a server where the
//! role cannot reach the `postgres` maintenance database.

use std::{process::Output, time::Duration};

/// Runs `orders` with `args` and `env` against servers that do not answer.
async fn orders(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(args)
            .env("ORDERS_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("orders exits by itself")
    .expect("orders runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn help_and_version_are_plain_text_and_exit_0() {
    for flag in ["--help", "-h"] {
        let out = orders(&[flag], &[]).await;
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let help = text(&out.stdout);
        assert!(help.starts_with("orders: "), "{help}");
        for word in ["usage: orders", "healthcheck", "ORDERS_", "OUTBOX_", "exit status"] {
            assert!(help.contains(word), "{flag}: {word} missing from {help}");
        }
        assert!(!help.contains('{'), "plain text, not a log line: {help}");
    }
    let out = orders(&["--version"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("orders {}\n", env!("CARGO_PKG_VERSION")));

    let out = orders(&["--frobnicate"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "an unknown argument is a usage error");
    assert!(text(&out.stderr).contains("usage: orders"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn every_configuration_problem_is_printed_at_once_and_exits_2() {
    let bad = [
        ("ORDERS_GRPC_ADDR", "localhost"),
        ("ORDERS_ROLE", "boss"),
        ("ORDERS_DB_WRITERS", "0"),
        ("OUTBOX_GATHER_MS", "5000"),
        ("OUTBOX_BATCH_SIZE", "many"),
        ("ORDERS_DATABASE_URL", "not a url"),
        ("SAGA_STEP_TIMEOUT_MS", "0"),
        ("SAGA_COMPENSATION_RESEND_MS", "soon"),
        ("ORDERS_SAGA_CONSUMER_ENABLED", "maybe"),
    ];
    let out = orders(&[], &[&bad[..], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")]].concat()).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("orders: invalid configuration (9 problems):"), "{stderr}");
    for (name, _) in bad {
        let lines = stderr.lines().filter(|line| line.contains(&format!("environment variable {name} is invalid")));
        assert_eq!(lines.count(), 1, "{name} named once in {stderr}");
    }
    assert!(!stderr.contains("cannot connect"), "refused before connecting: {stderr}");
    assert!(!stderr.contains('{'), "plain text, not log lines: {stderr}");
}

#[tokio::test]
async fn unknown_variables_with_the_service_prefixes_are_warned_about_by_name() {
    let out = orders(&[], &[("ORDERS_DB_WRITER", "4"), ("OUTBOX_FROBNICATE", "1"), ("OUTBOX_BATCH_SIZE", "100")]).await;
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the unreachable database stops it: {printed}");
    assert!(
        printed.contains("unknown variable ORDERS_DB_WRITER ignored; did you mean ORDERS_DB_WRITERS?"),
        "{printed}"
    );
    assert!(printed.contains("unknown variable OUTBOX_FROBNICATE ignored"), "{printed}");
    assert!(!printed.contains("OUTBOX_BATCH_SIZE"), "a known variable is not warned about: {printed}");
}

/// A managed server lets the service's role into its own database only. The
/// local server grants CONNECT on `postgres` to PUBLIC, which no REVOKE on one
/// role takes back, so a setting on the role in that database makes every
/// login of it there fail instead (the role and its settings are dropped after).
#[tokio::test]
async fn starts_when_the_role_cannot_reach_the_postgres_database_but_its_own_exists() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (role, database) = (format!("pulse_managed_{suffix}"), format!("pulse_managed_{suffix}"));
    let admin = sqlx::PgPool::connect(&testkit::database_url()).await.unwrap();
    for statement in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("CREATE DATABASE \"{database}\" OWNER \"{role}\""),
        format!("ALTER ROLE \"{role}\" IN DATABASE postgres SET session_preload_libraries = 'pulse_no_such_library'"),
    ] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    let server = testkit::socket_addr_of(&testkit::database_url());
    let url = |db: &str| format!("postgres://{role}@{server}/{db}");
    let reaches_postgres = sqlx::PgPool::connect(&url("postgres")).await.is_ok();

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"));
    command
        .env("ORDERS_DATABASE_URL", url(&database))
        .env("ORDERS_ROLE", "api")
        .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
        .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let (status, printed, got_ready) =
        testkit::run_until_ready_then_terminate(command, &["orders listening"], Duration::from_secs(30)).await;
    let own = sqlx::PgPool::connect(&url(&database)).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders'")
        .fetch_one(&own)
        .await
        .unwrap();
    own.close().await;
    for statement in [format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"), format!("DROP ROLE \"{role}\"")] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    admin.close().await;

    assert!(!reaches_postgres, "the role is kept out of the postgres database");
    assert!(got_ready, "orders started: {printed}");
    assert_eq!(status.code(), Some(0), "and stopped cleanly on SIGTERM: {printed}");
    assert_eq!(tables, 1, "its migrations ran in its own database");
}
