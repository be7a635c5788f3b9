//! TLS on the gRPC port, with certificates made for the test: a client that
//! trusts the server's CA is served (the API, health and reflection through
//! grpcurl), a plaintext one is not; with mutual TLS only a client
//! certificate from the configured CA gets in.

use platform::tls::ServerTls;
use sqlx::PgPool;
use testkit::pki::{Pki, Signed};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    grpcurl::grpcurl_over,
    helpers::{Options, channel, order, spawn_app, tls_channel},
};

fn server_tls(pki: &Pki, client_ca: Option<&Pki>) -> ServerTls {
    let Signed { cert_pem, key_pem, .. } = pki.server("orders");
    ServerTls::from_pem(
        cert_pem.into_bytes(),
        key_pem.into_bytes(),
        client_ca.map(|ca| ca.ca_pem().as_bytes().to_vec()),
    )
    .expect("valid TLS files")
}

fn trusting(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem()))
}

fn with_identity(tls: ClientTlsConfig, signed: &Signed) -> ClientTlsConfig {
    tls.identity(Identity::from_pem(&signed.cert_pem, &signed.key_pem))
}

/// Whether a health check over `tls` succeeds.
async fn served(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> bool {
    let Ok(channel) = tls_channel(addr, tls).await else { return false };
    HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.is_ok()
}

#[sqlx::test(migrations = false)]
async fn a_client_trusting_the_ca_is_served_over_tls_and_plaintext_is_not(pool: PgPool) {
    orders::db::migrate(&pool).await.unwrap();
    let pki = Pki::new("pulse test CA");
    let tls = (server_tls(&pki, None), trusting(&pki));
    let mut app = spawn_app(&pool, Options { tls: Some(tls), ..Options::default() }).await;

    let created = app.client.create_order(order("tls-customer", "12.50", "EUR")).await.expect("CreateOrder over TLS");
    assert_eq!(created.into_inner().order.expect("order").customer_id, "tls-customer");
    assert_eq!(app.count("orders").await, 1);

    let plaintext = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        HealthClient::new(channel(app.addr).await).check(HealthCheckRequest { service: String::new() }).await
    });
    assert!(!matches!(plaintext.await, Ok(Ok(_))), "a plaintext client is not served");
    let stranger = Pki::new("another CA");
    assert!(!served(app.addr, trusting(&stranger)).await, "a client trusting another CA refuses the server");

    // Reflection over TLS, as an operator would use it.
    let ca = pki.ca_file().display().to_string();
    let (ok, listed, err) = grpcurl_over(&["-cacert", &ca, "-servername", "localhost"], &[], app.addr, "list").await;
    assert!(ok, "grpcurl: {err}");
    assert!(listed.contains("pulse.orders.v1.OrderService"), "{listed}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_its_ca(pool: PgPool) {
    orders::db::migrate(&pool).await.unwrap();
    let pki = Pki::new("pulse test CA");
    let clients = Pki::new("pulse client CA");
    let admitted = clients.client("operator");
    let tls = (server_tls(&pki, Some(&clients)), with_identity(trusting(&pki), &admitted));
    let mut app = spawn_app(&pool, Options { tls: Some(tls), ..Options::default() }).await;

    app.client
        .create_order(order("mtls-customer", "3.00", "EUR"))
        .await
        .expect("CreateOrder with a client certificate");
    assert!(!served(app.addr, trusting(&pki)).await, "no client certificate: refused");
    let outsider = Pki::new("outsider CA").client("operator");
    assert!(
        !served(app.addr, with_identity(trusting(&pki), &outsider)).await,
        "a certificate from another CA: refused"
    );
    assert!(served(app.addr, with_identity(trusting(&pki), &clients.client("another"))).await);
    assert_eq!(app.count("orders").await, 1);
    app.stop().await;
}
