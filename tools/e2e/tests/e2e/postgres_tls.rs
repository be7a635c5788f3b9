use std::time::Duration;

use testkit::pki::Pki;

use crate::support::{
    api, db,
    postgres::OwnPostgres,
    process::{Spec, binary_path},
    scratch::{self, Scratch},
};

/// `postgres://…/pulse_orders` on `server`, verifying its certificate against `ca`.
fn verified_url(server: &OwnPostgres, ca: &Pki) -> String {
    format!("{}?sslmode=verify-full&sslrootcert={}", server.url("pulse_orders"), ca.ca_file().display())
}

/// Orders on a Postgres server that speaks TLS (a server of the test's own,
/// `ssl=on` with a certificate for 127.0.0.1 from a CA made for the test),
/// with `sslmode=verify-full`: the order goes through over encrypted
/// connections; told to trust another CA, orders refuses to start.
#[tokio::test(flavor = "multi_thread")]
async fn orders_runs_over_verified_tls_to_postgres_and_refuses_a_server_it_cannot_verify() {
    let ca = Pki::new("pulse postgres CA");
    let signed = ca.server("postgres");
    let (cert, key) = (signed.cert_pem.clone(), signed.key_pem.clone());
    let postgres = tokio::task::spawn_blocking(move || OwnPostgres::start_with_tls(&cert, &key)).await.unwrap();
    let scratch = Scratch::new().await;
    let _notifications = Spec::notifications(&scratch).start().await;
    let url = verified_url(&postgres, &ca);
    let orders = Spec::orders(&scratch).env("ORDERS_DATABASE_URL", &url).start().await;

    let created = api::create_order(orders.addr(), "tls-db").await;
    let notifications_db = scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids([&created.order_id]), Duration::from_secs(30)).await;
    let orders_db = scratch::pool(&url).await;
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND datname = 'pulse_orders' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&orders_db)
    .await
    .unwrap();
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE NOT ssl AND datname = 'pulse_orders' AND backend_type = 'client backend'",
    )
    .fetch_one(&orders_db)
    .await
    .unwrap();
    assert!(encrypted > 0, "orders' connections use TLS");
    assert_eq!(plain, 0, "no connection of orders is in plaintext");
    orders_db.close().await;

    let stranger = Pki::new("another CA");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary_path("orders"))
            .env_clear()
            .env("ORDERS_DATABASE_URL", verified_url(&postgres, &stranger))
            .env("AMQP_URL", scratch.amqp_url())
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("orders gives up by itself")
    .expect("orders runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "orders started against a server it cannot verify: {printed}");
    assert!(printed.to_lowercase().contains("certificate"), "the reason is given: {printed}");
}
