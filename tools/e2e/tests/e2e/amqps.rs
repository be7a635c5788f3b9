use std::time::Duration;

use testkit::pki::Pki;

use crate::support::{
    api, db,
    process::{Spec, binary_path},
    rabbitmq::OwnRabbit,
    scratch::Scratch,
};

/// Both services reach the broker over TLS only (`amqps://`; a RabbitMQ node
/// of the test's own whose one listener is TLS, its certificate from a CA
/// made for the test and trusted through `SSL_CERT_FILE`): an order's event
/// is relayed and consumed. Told to trust no such CA, the consumer never
/// connects and says why.
#[tokio::test(flavor = "multi_thread")]
async fn events_flow_over_amqps_to_a_broker_with_a_private_ca() {
    let pki = Pki::new("pulse broker CA");
    let broker = tokio::task::block_in_place(|| OwnRabbit::start_with_tls(&pki));
    let scratch = Scratch::new().await;
    let ca = pki.ca_file().display().to_string();
    let over_tls = |spec: Spec| spec.env("AMQP_URL", &broker.url()).env("SSL_CERT_FILE", &ca);
    let _notifications = over_tls(Spec::notifications(&scratch)).start().await;
    let orders = over_tls(Spec::orders(&scratch)).start().await;

    let created = api::create_order(orders.addr(), "amqps").await;
    let notifications_db = scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids([&created.order_id]), Duration::from_secs(30)).await;

    let stranger = Pki::new("another CA");
    let mut command = tokio::process::Command::new(binary_path("notifications"));
    command
        .env_clear()
        .env("NOTIFICATIONS_DATABASE_URL", scratch.notifications_db_url())
        .env("AMQP_URL", broker.url())
        .env("SSL_CERT_FILE", stranger.ca_file())
        .env("NOTIFICATIONS_GRPC_ADDR", "127.0.0.1:0")
        .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
        .env("NOTIFICATIONS_QUEUE_PREFIX", "pulse-untrusted");
    let ready = ["inbox consuming"];
    let (_, printed, connected) =
        testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(8)).await;
    assert!(!connected, "the consumer connected to a broker it cannot verify: {printed}");
    assert!(printed.to_lowercase().contains("certificate"), "the reason is logged: {printed}");
    drop(orders);
    drop(broker);
}
