use std::process::Command;

use sqlx::PgPool;

use crate::helpers::{Options, spawn_app};

/// Runs the real grpcurl binary with reflection only (no proto files given):
/// `grpcurl -plaintext <flags> <addr> <method>`.
async fn grpcurl(flags: &[&str], addr: std::net::SocketAddr, method: &str) -> (bool, String, String) {
    grpcurl_over(&["-plaintext"], flags, addr, method).await
}

/// [`grpcurl`] with `transport` flags instead of `-plaintext` (TLS: `-cacert`, ...).
pub(crate) async fn grpcurl_over(
    transport: &[&str],
    flags: &[&str],
    addr: std::net::SocketAddr,
    method: &str,
) -> (bool, String, String) {
    let mut command = Command::new(testkit::grpcurl());
    command.args(transport).args(["-max-time", "10"]).args(flags).arg(addr.to_string()).arg(method);
    let output = tokio::task::spawn_blocking(move || command.output().expect("grpcurl runs")).await.unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[sqlx::test(migrations = false)]
async fn grpcurl_creates_an_order_through_reflection_and_sees_health(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let body = r#"{"customer_id":"c-grpcurl","amount":"77.50","currency":"EUR"}"#;
    let (ok, out, err) = grpcurl(
        &["-H", "x-correlation-id: grpcurl-1", "-d", body],
        app.addr,
        "pulse.orders.v1.OrderService/CreateOrder",
    )
    .await;
    assert!(ok, "grpcurl CreateOrder failed: {err}");
    let response: serde_json::Value = serde_json::from_str(&out).expect("grpcurl prints JSON");
    assert_eq!(response["correlationId"], "grpcurl-1");
    assert_eq!(response["order"]["amount"], "77.50");
    let order_id = response["orderId"].as_str().expect("orderId in the response");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id::text = $1 AND customer_id = 'c-grpcurl'")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);

    let (ok, out, err) = grpcurl(&[], app.addr, "grpc.health.v1.Health/Check").await;
    assert!(ok, "grpcurl health failed: {err}");
    assert!(out.contains("\"SERVING\""), "{out}");
    let (ok, out, err) =
        grpcurl(&["-d", r#"{"service":"pulse.orders.v1.OrderService"}"#], app.addr, "grpc.health.v1.Health/Check")
            .await;
    assert!(ok, "grpcurl health failed: {err}");
    assert!(out.contains("\"SERVING\""), "{out}");

    let (ok, _, err) =
        grpcurl(&["-d", r#"{"order_id":"nope"}"#], app.addr, "pulse.orders.v1.OrderService/GetOrder").await;
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("order_id"), "{err}");
    app.stop().await;
}

/// Reflection describes the error details too, so grpcurl prints a rejected
/// call's `google.rpc.BadRequest` (which field, why) instead of "not recognized".
#[sqlx::test(migrations = false)]
async fn grpcurl_prints_the_field_violations_of_a_rejected_order(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    let body = r#"{"customer_id":"c-grpcurl","amount":"77.50","currency":"EURO"}"#;
    let (ok, _, err) = grpcurl(&["-d", body], app.addr, "pulse.orders.v1.OrderService/CreateOrder").await;
    assert!(!ok);
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(!err.contains("not recognized"), "{err}");
    assert!(err.contains("type.googleapis.com/google.rpc.BadRequest"), "{err}");
    assert!(err.contains(r#""fieldViolations":[{"field":"currency","description":"must be an ISO 4217"#), "{err}");
    assert!(err.contains(r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#), "{err}");
    assert!(err.contains(r#""reason":"INVALID_FIELD""#), "{err}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0);
    app.stop().await;
}
