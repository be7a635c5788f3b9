//! The real binary: it creates its database, consumes, relays, and stops
//! cleanly (exit 0) on SIGTERM.

use std::time::Duration;

use inventory::config::{queue_name, routing_keys};

#[tokio::test]
async fn the_binary_starts_on_a_new_database_and_stops_cleanly_on_sigterm() {
    let name = format!("pulse_inventory_test_{}", uuid::Uuid::new_v4().simple());
    let mut database_url = url::Url::parse(&testkit::database_url()).expect("DATABASE_URL is a URL");
    database_url.set_path(&format!("/{name}"));
    let prefix = testkit::unique("test.inventory.process");
    let exchange = testkit::unique("test.inventory.process.events");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_inventory"));
    command
        .env("INVENTORY_DATABASE_URL", database_url.as_str())
        .env("AMQP_URL", testkit::amqp_url())
        .env("INVENTORY_QUEUE_PREFIX", &prefix)
        .env("INVENTORY_EXCHANGE", &exchange)
        .env("INVENTORY_GRPC_ADDR", "127.0.0.1:0")
        .env("INVENTORY_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let ready = ["inventory listening", "inbox consuming", "relay connected to the broker"];
    let (status, printed, got_ready) =
        testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(30)).await;

    let topology = inbox::InboxConfig::new(
        secrecy::SecretString::from(testkit::amqp_url()),
        exchange,
        queue_name(&prefix),
        routing_keys(),
    )
    .topology();
    testkit::consumer::Broker::connect(Duration::from_secs(5)).await.delete(&topology).await;
    let admin = sqlx::PgPool::connect(&testkit::database_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await.unwrap();
    admin.close().await;

    assert!(got_ready, "inventory started, consumed and relayed: {printed}");
    assert_eq!(status.code(), Some(0), "stopped cleanly on SIGTERM: {printed}");
    assert!(printed.contains("inventory stopped"), "{printed}");
    assert!(!printed.contains("guest:guest"), "the broker's password is not logged: {printed}");
}
