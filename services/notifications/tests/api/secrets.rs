//! No credential reaches a log line or an error: the real binary, started
//! against unreachable servers with passwords in their URLs, at debug level.
//! Unusable settings are refused at start, naming the variable.

use std::time::Duration;

const DB_PASSWORD: &str = "s3cretpw";
const AMQP_PASSWORD: &str = "amqps3cret";

/// Runs the binary against unreachable servers with `extra` set (over those
/// settings); its exit status and output.
async fn run_notifications(extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_notifications"))
            .env("NOTIFICATIONS_DATABASE_URL", format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x"))
            .env("AMQP_URL", format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:1/%2f"))
            .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:0")
            .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .envs(extra.iter().copied())
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
        ("INBOX_MAX_MESSAGE_BYTES", "0"),
        ("INBOX_MAX_MESSAGE_BYTES", "1000000000"),
        ("INBOX_MAX_MESSAGE_BYTES", "256KiB"),
    ] {
        let (status, printed) = run_notifications(&[(name, value)]).await;
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(printed.contains(name), "{name}={value}: the variable is named: {printed}");
        assert!(!printed.contains("cannot connect"), "{name}={value}: refused before connecting: {printed}");
    }
}

/// A password no other text contains, one for each place a URL can carry it.
const USERINFO_PASSWORD: &str = "Pw1userinfoQx7";
const QUERY_PASSWORD: &str = "Pw2queryQx7";
const SSL_PASSWORD: &str = "Pw3sslpasswordQx7";
const AMQP_QUERY_PASSWORD: &str = "Pw4amqpqueryQx7";

/// The real binary started against the local Postgres (trust auth: the
/// passwords are never asked for) and RabbitMQ, with passwords in every form
/// the URL parsers accept (userinfo, `password`, `sslpassword` and `sslkey`
/// query parameters; the broker's own `guest` password in userinfo and one
/// more in its query), at debug level, serving and consuming until SIGTERM:
/// not one line it writes shows any of them. Its queues and exchange are its own.
#[tokio::test]
async fn a_running_service_logs_no_password_in_any_url_form() {
    let postgres = testkit::socket_addr_of(&testkit::database_url());
    let broker = testkit::socket_addr_of(&testkit::amqp_url());
    let amqp_url = format!("amqp://guest:guest@{broker}/%2f?heartbeat=30&password={AMQP_QUERY_PASSWORD}");
    for form in 0..3 {
        let name = format!("pulse_secrets_{}", uuid::Uuid::new_v4().simple());
        let database_url = match form {
            0 => format!("postgres://postgres:{USERINFO_PASSWORD}@{postgres}/{name}"),
            1 => format!("postgres://{postgres}/{name}?user=postgres&password={QUERY_PASSWORD}"),
            _ => format!(
                "postgres://postgres@{postgres}/{name}?sslmode=disable&sslpassword={SSL_PASSWORD}&sslkey={SSL_PASSWORD}"
            ),
        };
        let prefix = testkit::unique("test.secrets");
        let exchange = testkit::unique("test.secrets.events");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_notifications"));
        command
            .env("NOTIFICATIONS_DATABASE_URL", &database_url)
            .env("AMQP_URL", &amqp_url)
            .env("NOTIFICATIONS_QUEUE_PREFIX", &prefix)
            .env("NOTIFICATIONS_EXCHANGE", &exchange)
            .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:0")
            .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let ready = ["notifications serving", "inbox consuming"];
        let (status, printed, got_ready) =
            testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(30)).await;

        let topology = inbox::InboxConfig::new(
            secrecy::SecretString::from(testkit::amqp_url()),
            exchange,
            notifications::queue_name(&prefix),
            vec![contracts::events::v1::ORDER_CREATED_ROUTING_KEY.to_owned()],
        )
        .topology();
        testkit::consumer::Broker::connect(Duration::from_secs(5)).await.delete(&topology).await;
        let admin = sqlx::PgPool::connect(&testkit::database_url()).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await.unwrap();
        admin.close().await;

        assert!(got_ready, "form {form}: notifications started and consumed: {printed}");
        assert_eq!(status.code(), Some(0), "form {form}: stopped cleanly on SIGTERM: {printed}");
        let masked = ["postgres:***@", "password=***", "sslpassword=***"][form];
        assert!(printed.contains(masked), "form {form}: the URL is logged masked: {printed}");
        assert!(printed.contains("guest:***@") && printed.contains("heartbeat=30&password=***"), "{printed}");
        for secret in [USERINFO_PASSWORD, QUERY_PASSWORD, SSL_PASSWORD, AMQP_QUERY_PASSWORD, "guest:guest"] {
            let shown: Vec<&str> = printed.lines().filter(|line| line.contains(secret)).collect();
            assert!(shown.is_empty(), "form {form}: {secret} shown in {shown:#?}");
        }
    }
}

/// Servers that do not answer, with a password in the query: the failure is
/// logged, the password is not.
#[tokio::test]
async fn an_unreachable_server_is_reported_without_a_query_password() {
    let (status, printed) = run_notifications(&[(
        "NOTIFICATIONS_DATABASE_URL",
        &format!("postgres://127.0.0.1:1/x?user=postgres&password={QUERY_PASSWORD}&sslpassword={SSL_PASSWORD}"),
    )])
    .await;
    assert!(!status.success());
    assert!(printed.contains("cannot connect"), "the failure is logged with its cause: {printed}");
    for secret in [QUERY_PASSWORD, SSL_PASSWORD, AMQP_PASSWORD] {
        assert!(!printed.contains(secret), "{secret} shown: {printed}");
    }
}
