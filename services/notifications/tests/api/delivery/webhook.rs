//! Webhook deliveries to a real HTTP receiver: signed, retried on the
//! (short) schedule, refused or failed as the answers say.

use std::time::Duration;

use contracts::notifications::v1::{
    DeliveryStatus, DisableEndpointRequest, EnableEndpointRequest, RecoverEndpointRequest, RetryDeliveryRequest,
    RotateEndpointSecretRequest,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::receiver::{Reply, WebhookReceiver};

use super::support::*;
use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn delivered_once_signed_with_the_pinned_headers(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    let (endpoint_id, secret) = setup.webhook(&receiver.url("/hooks/pulse"), &["order.created"]).await;
    let (order_id, correlation) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!(
        (delivery.attempts, delivery.last_status_code, delivery.endpoint_id.as_str()),
        (1, 200, endpoint_id.as_str())
    );
    assert!(delivery.delivered_at.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "delivered once");
    let request = &received[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/hooks/pulse"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("webhook-id"), Some(delivery.delivery_id.as_str()));
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 30);
    assert_eq!(request.header("x-correlation-id"), Some(correlation.as_str()));
    let traceparent = request.header("traceparent").expect("a traceparent");
    assert!(telemetry::tracecontext::TraceParent::parse(traceparent).is_some(), "{traceparent}");
    assert!(request.header("user-agent").unwrap().starts_with("pulse-notifications/"));
    assert!(verifies(&secret, request), "the signature does not verify");
    assert!(!verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", request), "any secret verifies");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "order.created");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(body["data"]["order_id"], order_id.as_str());
    assert_eq!(body["data"]["amount"], "77.50");
    assert_eq!(body["data"]["correlation_id"], correlation.as_str());
    assert_eq!(attempts(&setup.pool, &delivery.delivery_id).await, [(1, Some(200), String::new())]);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn server_errors_are_retried_on_the_schedule_with_the_same_id(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500), Reply::status(200)]);
    let (_, secret) = setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!(delivery.attempts, 3);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.header("webhook-id") == Some(delivery.delivery_id.as_str())));
    assert!(received.iter().all(|r| verifies(&secret, r)));
    // 200 ms then 400 ms, each ±20 %.
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(160) && gaps[0] < Duration::from_millis(1500), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(320) && gaps[1] < Duration::from_millis(1800), "{gaps:?}");
    let recorded = attempts(&setup.pool, &delivery.delivery_id).await;
    let codes: Vec<Option<i32>> = recorded.iter().map(|(_, code, _)| *code).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)]);
    assert!(recorded[0].2.contains("500"), "{recorded:?}");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn retry_after_is_honoured(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.script([Reply::status(429).retry_after("2")]);
    setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!((delivery.attempts, delivery.last_status_code), (2, 200));
    let received = receiver.received();
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(1950), "retried after {gap:?}, before Retry-After's 2 s");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_client_error_fails_at_once(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.default_reply(Reply::status(400));
    setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert_eq!((delivery.attempts, delivery.last_status_code), (1, 400));
    assert!(delivery.last_error.contains("400"), "{}", delivery.last_error);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 1);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_hanging_endpoint_times_out_and_is_retried(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.script([Reply::hang()]);
    setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!(delivery.attempts, 2);
    let recorded = attempts(&setup.pool, &delivery.delivery_id).await;
    assert_eq!(recorded[0].1, None);
    assert!(recorded[0].2.contains("timed out"), "{recorded:?}");
    let received = receiver.received();
    assert!(
        received[1].at - received[0].at >= Duration::from_millis(1000),
        "the first attempt did not wait for its timeout"
    );
    setup.app.stop().await;
}

/// The head of the answer decides: a 2xx whose body is still arriving when
/// the attempt's time is up is delivered, not sent again.
#[sqlx::test(migrations = false)]
async fn a_success_whose_body_never_ends_is_delivered_once(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.script([Reply::status(200).endless_body()]);
    setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!((delivery.attempts, delivery.last_status_code), (1, 200));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 1, "sent once");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_failed_delivery_goes_out_on_retry_and_on_recover(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let mut client = setup.client().await;
    let receiver = WebhookReceiver::start().await;
    receiver.script(vec![Reply::status(503); 3]);
    let (endpoint_id, _) = setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert_eq!((failed.attempts, failed.last_status_code), (3, 503));
    let retried =
        client.retry_delivery(RetryDeliveryRequest { delivery_id: failed.delivery_id.clone() }).await.unwrap();
    assert_eq!(retried.into_inner().delivery.unwrap().status, DeliveryStatus::Pending as i32);
    let delivered = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!(delivered.attempts, 4);

    receiver.script(vec![Reply::status(503); 3]);
    let (second_order, _) = setup.order().await;
    setup.settled(&second_order, DeliveryStatus::Failed).await;
    let recovered = client
        .recover_endpoint(RecoverEndpointRequest { endpoint_id: endpoint_id.clone(), since: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.retried, 1);
    setup.settled(&second_order, DeliveryStatus::Delivered).await;
    assert_eq!(receiver.received().len(), 8);
    let of_endpoint = setup.deliveries_of_endpoint(&endpoint_id).await;
    assert_eq!(of_endpoint.iter().map(|d| d.attempts).collect::<Vec<_>>(), [4, 4]);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_slow_endpoint_does_not_delay_another(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = config(&db);
    config.delivery.timeout = std::time::Duration::from_secs(5);
    let setup = start(config, &db).await;
    let slow = WebhookReceiver::start().await;
    slow.default_reply(Reply::status(200).after(Duration::from_secs(2)));
    let fast = WebhookReceiver::start().await;
    setup.webhook(&slow.url("/slow"), &[]).await;
    setup.webhook(&fast.url("/fast"), &[]).await;
    let started = std::time::Instant::now();
    for _ in 0..12 {
        setup.order().await;
    }
    let received = fast.wait_for(12, WAIT).await;
    assert_eq!(received.len(), 12);
    let took = received.last().unwrap().at - started;
    // The slow endpoint takes 2 s a request, 4 at a time: 6 s for its 12.
    assert!(took < Duration::from_secs(2), "the fast endpoint waited {took:?}");
    assert!(slow.received().len() <= 8, "more than its concurrency went to the slow endpoint at once");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn private_addresses_are_refused_unless_allowed(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = config(&db);
    config.delivery.allow_private_networks = false;
    let setup = start(config, &db).await;
    let receiver = WebhookReceiver::start().await;
    let port = receiver.addr().port();
    setup.webhook(&format!("http://localhost:{port}/by-name"), &[]).await;
    let (order_id, _) = setup.order().await;
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert!(failed.last_error.contains("127.0.0.1") || failed.last_error.contains("::1"), "{}", failed.last_error);
    assert!(failed.last_error.contains("DELIVERY_ALLOW_PRIVATE_NETWORKS"), "{}", failed.last_error);
    assert_eq!(failed.attempts, 1);

    let mut client = setup.client().await;
    let endpoint = setup.deliveries_of_order(&order_id).await[0].endpoint_id.clone();
    client.disable_endpoint(DisableEndpointRequest { endpoint_id: endpoint }).await.unwrap();
    setup.webhook(&receiver.url("/literal"), &[]).await;
    let (order_id, _) = setup.order().await;
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert!(failed.last_error.contains("127.0.0.1"), "{}", failed.last_error);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "a private address was reached");
    setup.app.stop().await;
}

/// An https endpoint is reached over TLS, its certificate checked against the
/// public roots: one signed by a CA of its own fails every handshake, with
/// the reason recorded, and the endpoint receives nothing.
#[sqlx::test(migrations = false)]
async fn an_https_endpoint_whose_certificate_no_public_ca_signed_is_not_sent_to(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

    let pki = testkit::pki::Pki::new("pulse webhook test CA");
    let signed = pki.server("receiver");
    let cert = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(signed.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (handshakes, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = handshakes.send(acceptor.accept(tcp).await.is_ok());
        }
    });

    let setup = start(config(&db), &db).await;
    setup.webhook(&format!("https://localhost:{port}/hooks"), &[]).await;
    let (order_id, _) = setup.order().await;
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert_eq!(failed.attempts, 3, "retried as any failure to connect is");
    assert!(failed.last_error.contains("UnknownIssuer"), "{}", failed.last_error);
    let mut seen = Vec::new();
    while let Ok(accepted) = outcomes.try_recv() {
        seen.push(accepted);
    }
    assert!(!seen.is_empty() && seen.iter().all(|accepted| !accepted), "handshakes: {seen:?}");
    server.abort();
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_disabled_endpoint_receives_nothing_until_enabled(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = config(&db);
    config.delivery.retry_schedule = vec![Duration::from_secs(1), Duration::from_secs(1)];
    let setup = start(config, &db).await;
    let mut client = setup.client().await;
    let receiver = WebhookReceiver::start().await;
    receiver.script([Reply::status(500)]);
    let (endpoint_id, _) = setup.webhook(&receiver.url("/"), &[]).await;
    let (pending_order, _) = setup.order().await;
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);
    client.disable_endpoint(DisableEndpointRequest { endpoint_id: endpoint_id.clone() }).await.unwrap();
    // Made while disabled: no delivery at all.
    let (unsent_order, _) = setup.order().await;
    eventually(|| async { count(&setup.pool, "SELECT count(*) FROM notifications").await == 2 }).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(receiver.received().len(), 1, "a disabled endpoint was sent to");
    assert!(setup.deliveries_of_order(&unsent_order).await.is_empty());
    assert_eq!(setup.deliveries_of_order(&pending_order).await[0].status, DeliveryStatus::Pending as i32);
    client.enable_endpoint(EnableEndpointRequest { endpoint_id }).await.unwrap();
    let delivered = setup.settled(&pending_order, DeliveryStatus::Delivered).await;
    assert_eq!(delivered.attempts, 2);
    assert_eq!(receiver.received().len(), 2);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn both_secrets_sign_during_a_rotation(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    let (endpoint_id, old) = setup.webhook(&receiver.url("/"), &["order.created"]).await;
    let rotated = setup
        .client()
        .await
        .rotate_endpoint_secret(RotateEndpointSecretRequest { endpoint_id })
        .await
        .unwrap()
        .into_inner();
    let (order_id, _) = setup.order().await;
    setup.settled(&order_id, DeliveryStatus::Delivered).await;
    let request = &receiver.received()[0];
    assert_eq!(request.header("webhook-signature").unwrap().split(' ').count(), 2);
    assert!(verifies(&old, request), "the previous secret no longer verifies");
    assert!(verifies(&rotated.secret, request), "the new secret does not verify");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn only_subscribed_event_types_are_delivered_and_counted(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    setup.webhook(&receiver.url("/"), &["order.failed"]).await;
    let all = WebhookReceiver::start().await;
    setup.webhook(&all.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert!(receiver.received().is_empty());
    let metrics = testkit::scrape_metrics(setup.app.metrics_addr).await;
    let delivered = testkit::metric_sample(
        &metrics,
        "notifications_deliveries_total",
        &[("outcome", "delivered"), ("kind", "webhook")],
    );
    assert_eq!(delivered, Some(1.0), "{metrics}");
    assert!(metrics.contains("notifications_delivery_attempt_duration_seconds_count{kind=\"webhook\"} 1"), "{metrics}");
    for gauge in [
        "notifications_deliveries_pending",
        "notifications_delivery_oldest_pending_age_seconds",
        "notifications_endpoints_disabled",
    ] {
        assert!(testkit::metric_sample(&metrics, gauge, &[]).is_some(), "{gauge} missing: {metrics}");
    }
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_endpoint_failing_too_long_is_disabled_with_a_notification(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = config(&db);
    config.delivery.retry_schedule = vec![Duration::from_millis(200); 12];
    config.delivery.disable_after = Duration::from_secs(1);
    let setup = start(config, &db).await;
    let receiver = WebhookReceiver::start().await;
    receiver.default_reply(Reply::status(500));
    let (endpoint_id, _) = setup.webhook(&receiver.url("/"), &[]).await;
    let (order_id, _) = setup.order().await;
    let pool = &setup.pool;
    eventually(|| async move { count(pool, "SELECT count(*) FROM delivery_endpoints WHERE NOT enabled").await == 1 })
        .await;
    let endpoint = setup
        .client()
        .await
        .list_endpoints(contracts::notifications::v1::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints
        .remove(0);
    assert!(!endpoint.enabled);
    assert!(endpoint.disabled_reason.contains("failed continuously since"), "{}", endpoint.disabled_reason);
    let about: Vec<String> =
        sqlx::query_scalar("SELECT message FROM notifications WHERE message LIKE '%was disabled%'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(about.len(), 1);
    assert!(about[0].contains(&endpoint_id), "{about:?}");
    // What it still had waits, PENDING, for the endpoint to be enabled again.
    // The first failure starts the clock; a later one, a second on, disables.
    let sent = receiver.received().len();
    assert!((2..=12).contains(&sent), "{sent} attempts");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), sent, "a disabled endpoint was sent to");
    assert_eq!(setup.deliveries_of_order(&order_id).await[0].status, DeliveryStatus::Pending as i32);
    let metrics_addr = setup.app.metrics_addr;
    eventually(|| async move {
        let metrics = testkit::scrape_metrics(metrics_addr).await;
        testkit::metric_sample(&metrics, "notifications_endpoints_disabled", &[]) == Some(1.0)
    })
    .await;
    setup.app.stop().await;
}
