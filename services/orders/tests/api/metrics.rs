//! `GET /metrics`: the outbox backlog through a broker outage, the relay's
//! latency and batch instruments, and gRPC durations by method and status.

use std::{net::SocketAddr, time::Duration};

use futures::{StreamExt, stream};
use sqlx::PgPool;
use testkit::FaultProxy;

use crate::helpers::{Options, order, spawn_app};

const EVENTS: usize = 500;

async fn backlog(addr: SocketAddr) -> (f64, f64) {
    let text = testkit::scrape_metrics(addr).await;
    let pending = testkit::metric_sample(&text, "outbox_pending_messages", &[]).expect("pending gauge");
    let age = testkit::metric_sample(&text, "outbox_oldest_pending_age_seconds", &[]).expect("age gauge");
    (pending, age)
}

#[sqlx::test(migrations = false)]
async fn the_backlog_rises_during_a_broker_outage_and_drains_to_zero_after(pool: PgPool) {
    // A queue of its own bound to the events exchange: on a fresh broker
    // nothing else may be, and unroutable events are refused, never drained.
    let amqp = testkit::amqp_connection().await;
    let _bound = testkit::subscribe(&amqp, contracts::EVENTS_EXCHANGE, "order.created").await;
    let proxy = FaultProxy::start(testkit::socket_addr_of(&testkit::amqp_url())).await;
    let app = spawn_app(
        &pool,
        Options { relay: true, amqp_url: Some(testkit::via(&testkit::amqp_url(), proxy.addr())), ..Options::default() },
    )
    .await;
    let metrics = app.metrics_addr;
    let owned = || async move {
        testkit::metric_sample(&testkit::scrape_metrics(metrics).await, "outbox_owned_partitions", &[])
            .is_some_and(|owned| owned > 0.0)
    };
    assert!(testkit::eventually(Duration::from_secs(10), owned).await, "the relay owns partitions");

    proxy.cut();
    let created = stream::iter(0..EVENTS)
        .map(|i| {
            let mut client = app.client.clone();
            async move { client.create_order(order(&format!("c-{i}"), "1.00", "EUR")).await.is_ok() }
        })
        .buffer_unordered(16)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(created, EVENTS, "orders are taken during the outage");
    // Each order's OrderCreated and ProcessPayment.
    let full = || async move { backlog(metrics).await.0 == 2.0 * EVENTS as f64 };
    assert!(testkit::eventually(Duration::from_secs(10), full).await, "the gauge shows the whole backlog");
    let (_, first_age) = backlog(metrics).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (pending, later_age) = backlog(metrics).await;
    assert_eq!(pending, 2.0 * EVENTS as f64, "nothing leaves during the outage");
    assert!(later_age >= first_age + 1.0, "the oldest row ages: {first_age} then {later_age}");

    proxy.restore();
    let drained = || async move { backlog(metrics).await == (0.0, 0.0) };
    assert!(testkit::eventually(Duration::from_secs(30), drained).await, "the backlog drains to zero");
    let text = testkit::scrape_metrics(metrics).await;
    let confirmed = testkit::metric_sample(&text, "outbox_commit_to_confirm_duration_seconds_count", &[]).unwrap();
    assert!(confirmed >= EVENTS as f64, "every row's latency recorded: {confirmed}");
    let slow = confirmed
        - testkit::metric_sample(&text, "outbox_commit_to_confirm_duration_seconds_bucket", &[("le", "1")]).unwrap();
    assert!(slow >= EVENTS as f64, "rows that waited out the outage took over a second: {slow}");
    assert!(testkit::metric_sample(&text, "outbox_batch_size_messages_sum", &[]).unwrap() >= EVENTS as f64);
    assert!(testkit::metric_sample(&text, "outbox_publish_retries_total", &[]).unwrap() > 0.0, "the relay retried");
    let created_ok = [("rpc_method", "CreateOrder"), ("rpc_grpc_status_code", "0")];
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &created_ok), Some(EVENTS as f64));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn grpc_calls_are_counted_by_method_and_status_code(pool: PgPool) {
    let mut app = spawn_app(&pool, Options::default()).await;
    app.client.create_order(order("c-1", "2.00", "EUR")).await.unwrap();
    let refused = app.client.create_order(order("c-1", "not money", "EUR")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let text = testkit::scrape_metrics(app.metrics_addr).await;
    let labels = |code| {
        [
            ("rpc_system", "grpc"),
            ("rpc_service", "pulse.orders.v1.OrderService"),
            ("rpc_method", "CreateOrder"),
            ("rpc_grpc_status_code", code),
        ]
    };
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &labels("0")), Some(1.0), "{text}");
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &labels("3")), Some(1.0), "{text}");
    assert!(text.contains("# TYPE rpc_server_duration_seconds histogram"));
    app.stop().await;
}

/// Every retry cause and failure reason has its series at 0 before anything
/// happened, so `increase()` in an alert sees the first one after a start.
#[sqlx::test(migrations = false)]
async fn a_fresh_relay_shows_every_retry_cause_and_failure_reason_at_zero(pool: PgPool) {
    let app = spawn_app(&pool, Options { relay: true, ..Options::default() }).await;
    let text = testkit::scrape_metrics(app.metrics_addr).await;
    for cause in ["broker_unreachable", "database_unreachable", "channel_broken", "rejected"] {
        let sample = testkit::metric_sample(&text, "outbox_publish_retries_total", &[("cause", cause)]);
        assert_eq!(sample, Some(0.0), "{cause}: {text}");
    }
    for reason in ["rejected", "unconfirmed"] {
        let sample = testkit::metric_sample(&text, "outbox_publish_failures_total", &[("reason", reason)]);
        assert_eq!(sample, Some(0.0), "{reason}: {text}");
    }
    assert_eq!(testkit::metric_sample(&text, "target_info", &[("service_name", "orders")]), Some(1.0), "{text}");
    app.stop().await;
}

/// One raw unary call to `path` with an empty message: the status and the
/// correlation id the answer (trailers-only, as every refusal) carries.
async fn raw_call(addr: SocketAddr, path: &'static str, correlation: &str) -> (String, String) {
    use tonic::codegen::{Service, http};
    let mut channel = crate::helpers::channel(addr).await;
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-correlation-id", correlation)
        .body(tonic::body::Body::new(String::from("\0\0\0\0\0")))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = channel.call(request).await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (header("grpc-status"), header("x-correlation-id"))
}

#[sqlx::test(migrations = false)]
async fn calls_to_methods_the_server_does_not_offer_are_measured_as_other(pool: PgPool) {
    let app = spawn_app(&pool, Options::default()).await;
    for path in ["/pulse.orders.v1.OrderService/Nope", "/no.such.v1.Service/Call", "/favicon.ico"] {
        let (status, correlation) = raw_call(app.addr, path, "corr-nope").await;
        assert_eq!(status, (tonic::Code::Unimplemented as i32).to_string(), "{path}");
        assert_eq!(correlation, "corr-nope", "{path}: the correlation id is echoed on refusals too");
    }
    let text = testkit::scrape_metrics(app.metrics_addr).await;
    let other =
        [("rpc_system", "grpc"), ("rpc_service", "_OTHER"), ("rpc_method", "_OTHER"), ("rpc_grpc_status_code", "12")];
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &other), Some(3.0), "{text}");
    for name in ["Nope", "no.such", "favicon"] {
        assert!(!text.contains(name), "{name} became a label value: {text}");
    }
    app.stop().await;
}
