//! The real binary: creates its database, serves, consumes and relays, and
//! stops cleanly on SIGTERM.

use std::time::Duration;

#[tokio::test]
async fn the_binary_creates_its_database_runs_every_part_and_stops_on_sigterm() {
    let name = format!("pulse_payments_{}", uuid::Uuid::new_v4().simple());
    let mut database_url = url::Url::parse(&testkit::database_url()).unwrap();
    database_url.set_path(&format!("/{name}"));
    let prefix = testkit::unique("test.payments.binary");
    let exchange = testkit::unique("test.payments.binary.events");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payments"));
    command
        .env("PAYMENTS_DATABASE_URL", database_url.as_str())
        .env("AMQP_URL", testkit::amqp_url())
        .env("PAYMENTS_QUEUE_PREFIX", &prefix)
        .env("PAYMENTS_EXCHANGE", &exchange)
        .env("PAYMENTS_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYMENTS_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let ready = ["payments serving", "inbox consuming", "relay connected to the database"];
    let (status, printed, got_ready) =
        testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(30)).await;

    let admin = sqlx::PgPool::connect(&testkit::database_url()).await.unwrap();
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await.unwrap();
    admin.close().await;
    let topology = inbox::InboxConfig::new(
        secrecy::SecretString::from(testkit::amqp_url()),
        exchange,
        payments::queue_name(&prefix),
        payments::config::routing_keys(),
    )
    .topology();
    testkit::consumer::Broker::connect(Duration::from_secs(5)).await.delete(&topology).await;

    assert!(got_ready, "payments started, consumed and relayed: {printed}");
    assert_eq!(created, 1, "the database was created");
    assert_eq!(status.code(), Some(0), "stopped cleanly on SIGTERM: {printed}");
    assert!(printed.contains("payments stopped"), "{printed}");
    assert!(!printed.contains("postgres:postgres@"), "the database URL is logged masked");
}
