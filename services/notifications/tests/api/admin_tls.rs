//! The dead-letter console over mutual TLS, through the real `notifications
//! dlq` command line: a verified client certificate named in
//! `NOTIFICATIONS_ADMIN_CLIENT_NAMES` is an admin credential on its own; one
//! not named is refused PERMISSION_DENIED unless the call also carries the
//! token; a certificate from another CA does not get a connection.

use std::{net::SocketAddr, path::Path, process::Command};

use platform::tls::ServerTls;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::pki::{Pki, Signed};

use crate::helpers::*;

const TOKEN: &str = "console-token-mtls-4b1e";

/// `notifications dlq groups --json` over TLS trusting `pki`, presenting
/// `client` and the token in `token_file` when given: (success, stdout, stderr).
fn groups(pki: &Pki, client: Option<&Signed>, token_file: Option<&Path>, addr: SocketAddr) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notifications"));
    command.env_clear().env("RUST_LOG", "warn").env("NOTIFICATIONS_ADMIN_CA_FILE", pki.ca_file());
    if let Some(client) = client {
        command.env("NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE", &client.cert_file);
        command.env("NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE", &client.key_file);
    }
    if let Some(token_file) = token_file {
        command.env("NOTIFICATIONS_ADMIN_TOKEN_FILE", token_file);
    }
    let output = command.args(["dlq", "groups", "--json", "--addr", &addr.to_string()]).output().expect("runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn an_allowed_client_certificate_is_an_admin_credential_through_the_cli(_: PgPoolOptions, db: PgConnectOptions) {
    let pki = Pki::new("pulse admin test CA");
    let server = pki.server("notifications");
    let (admin, intruder) = (pki.client("ops-admin"), pki.client("intruder"));
    let token_file = pki.dir().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();

    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    config.admin_token_file = Some(token_file.clone());
    config.admin_client_names = vec!["ops-admin".to_owned(), "admin.example.com".to_owned()];
    let ca = Some(pki.ca_pem().as_bytes().to_vec());
    config.tls = Some(ServerTls::from_pem(server.cert_pem.into_bytes(), server.key_pem.into_bytes(), ca).unwrap());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let addr = app.addr;
    let run = move |client: Option<Signed>, token: Option<std::path::PathBuf>, pki: std::sync::Arc<Pki>| {
        tokio::task::spawn_blocking(move || groups(&pki, client.as_ref(), token.as_deref(), addr))
    };
    let pki = std::sync::Arc::new(pki);

    let (ok, out, err) = run(Some(admin), None, pki.clone()).await.unwrap();
    assert!(ok, "the allowed certificate alone is admitted: {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert!(answer.is_object() || answer.is_array(), "groups answer: {out}");

    let (ok, _, err) = run(Some(intruder), None, pki.clone()).await.unwrap();
    assert!(!ok && err.contains("PermissionDenied"), "a certificate off the list is refused: {err}");
    let intruder = pki.client("intruder-with-token");
    let (ok, _, err) = run(Some(intruder), Some(token_file), pki.clone()).await.unwrap();
    assert!(ok, "the token still admits a verified client off the list: {err}");

    let other_ca = Pki::new("another CA");
    let stranger = other_ca.client("ops-admin");
    let (ok, _, err) = run(Some(stranger), None, pki.clone()).await.unwrap();
    assert!(!ok && !err.contains("PermissionDenied"), "a certificate of another CA gets no call: {err}");

    app.stop().await;
    Broker::connect().await.delete(&topology).await;
}
