//! One CreateOrder, one trace: an in-test OTLP receiver collects the spans of
//! Orders (CreateOrder, the INSERT it may share with concurrent calls, the
//! relay's publish and the DELETE that marks the row done) and Notifications
//! (the inbox's processing and its statements) running in this process, and
//! finds them chained parent to child under the caller's `traceparent`, each
//! with the correlation id, the statements as client spans with
//! OpenTelemetry's database attributes. Both services' RPC server spans carry
//! the same attributes (they come from one layer, `platform::rpc`).
//!
//! Its own test binary: the tracing subscriber and the tracer provider are
//! global, so both services share one provider (and one `service.name`).

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

mod in_process;
mod spans;

use contracts::{
    notifications::v1::{ListNotificationsRequest, notification_service_client::NotificationServiceClient},
    orders::v1::{CreateOrderRequest, GetOrderRequest, order_service_client::OrderServiceClient},
};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use spans::*;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CORRELATION: &str = "corr-trace-1";
const CREATE: &str = "pulse.orders.v1.OrderService/CreateOrder";
const GET: &str = "pulse.orders.v1.OrderService/GetOrder";
const LIST: &str = "pulse.notifications.v1.NotificationService/ListNotifications";
/// Orders created at once, so that the relay and the inbox may batch them.
const ORDERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_create_order_is_one_trace_across_both_services() {
    let (receiver, otlp) = Receiver::start().await;
    let guard = Arc::new(telemetry::init_with_otlp("pulse-trace-test", Some(format!("http://{otlp}"))));
    assert!(telemetry::otel_active());

    // Notifications, consuming order.created from the real exchange on a queue of its own.
    let mut leftovers = in_process::Leftovers::default();
    let (notifications_url, notifications_db) = in_process::fresh_database("pulse_trace_notifications");
    let (config, topology) = in_process::notifications_config(&notifications_url, "test.trace.notifications");
    leftovers.queues(&topology);
    leftovers.database(&notifications_db);
    let notifications = notifications::build(config).await.expect("notifications builds");
    let mut consuming = notifications.consumer_connected();
    let notifications_addr = notifications.grpc_addr();
    let notifications_stop = CancellationToken::new();
    let notifications_task = tokio::spawn(notifications.run_until_stopped(notifications_stop.clone()));
    assert!(testkit::wait_for_flag(&mut consuming, true, Duration::from_secs(20)).await, "notifications stopped");

    // Orders with its relay.
    let (orders_url, orders_db) = in_process::fresh_database("pulse_trace_orders");
    leftovers.database(&orders_db);
    let mut config = in_process::orders_config(&orders_url, orders::config::Role::All);
    // One hop: each order's OrderCreated alone, so the relay's batches hold nothing but the events traced here.
    config.saga.enabled = false;
    let orders = orders::startup::App::build(config).await.expect("orders builds");
    let addr = orders.grpc_addr();
    let orders_stop = CancellationToken::new();
    let orders_task = tokio::spawn(orders.run_until_stopped(orders_stop.clone()));

    let mut client = OrderServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let calls = (0..ORDERS).map(|i| {
        let mut client = client.clone();
        async move {
            let mut request = tonic::Request::new(CreateOrderRequest {
                customer_id: format!("c-trace-{i}"),
                amount: "9.99".into(),
                currency: "EUR".into(),
                request_id: String::new(),
                lines: Vec::new(),
            });
            request.metadata_mut().insert("traceparent", INCOMING.parse().unwrap());
            request.metadata_mut().insert("x-correlation-id", CORRELATION.parse().unwrap());
            client.create_order(request).await.unwrap().into_inner()
        }
    });
    let created = futures::future::join_all(calls).await;
    let mut request = tonic::Request::new(GetOrderRequest { order_id: created[0].order_id.clone() });
    request.metadata_mut().insert("traceparent", INCOMING.parse().unwrap());
    client.get_order(request).await.unwrap();
    let mut notifications_client =
        NotificationServiceClient::connect(format!("http://{notifications_addr}")).await.unwrap();
    let mut request =
        tonic::Request::new(ListNotificationsRequest { order_id: created[0].order_id.clone(), ..Default::default() });
    request.metadata_mut().insert("traceparent", INCOMING.parse().unwrap());
    request.metadata_mut().insert("x-correlation-id", CORRELATION.parse().unwrap());
    let listed = notifications_client.list_notifications(request).await.unwrap();
    assert_eq!(
        listed.metadata().get("x-correlation-id").unwrap(),
        CORRELATION,
        "Notifications echoes it as Orders does"
    );

    // Every order's publish has its DELETE, every message's processing its two INSERTs.
    let trace_id = &INCOMING[3..35];
    let event_ids: Vec<&str> = created.iter().map(|c| c.event_id.as_str()).collect();
    let (publish_name, process_name) =
        (format!("publish {}", contracts::EVENTS_EXCHANGE), format!("process {}", contracts::EVENTS_EXCHANGE));
    let complete = |spans: &[Span]| {
        let of_events = |name: &str| {
            spans
                .iter()
                .filter(|s| s.name == name)
                .filter(|s| attribute(s, "messaging.message.id").is_some_and(|id| event_ids.contains(&id.as_str())))
                .collect::<Vec<_>>()
        };
        let (published, processed) = (of_events(&publish_name), of_events(&process_name));
        published.len() == ORDERS
            && processed.len() == ORDERS
            && published.iter().all(|p| children(spans, p, "DELETE outbox_messages").len() == 1)
            && processed.iter().all(|p| {
                children(spans, p, "INSERT processed_events").len() == 1
                    && children(spans, p, "INSERT notifications").len() == 1
            })
            && spans.iter().any(|s| s.name == "SELECT orders")
            && spans.iter().any(|s| s.name == LIST)
            && spans.iter().filter(|s| s.name == "INSERT orders").count() == ORDERS
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<Span> = loop {
        let flushing = Arc::clone(&guard);
        tokio::task::spawn_blocking(move || flushing.flush()).await.unwrap();
        let in_trace: Vec<Span> =
            receiver.collected().into_iter().map(|c| c.span).filter(|s| hex(&s.trace_id) == trace_id).collect();
        if complete(&in_trace) {
            break in_trace;
        }
        let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
        assert!(Instant::now() < deadline, "spans of the trace so far: {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let server = PgConnectOptions::from_str(&testkit::database_url()).unwrap();
    let named = |name: &str, event_id: &str| {
        spans
            .iter()
            .find(|s| s.name == name && attribute(s, "messaging.message.id").as_deref() == Some(event_id))
            .unwrap_or_else(|| panic!("no {name} span for {event_id}"))
    };
    let (mut inserts, mut deletes) = (Vec::new(), Vec::new());
    for event_id in &event_ids {
        let (publish, process) = (named(&publish_name, event_id), named(&process_name, event_id));
        let create = spans
            .iter()
            .find(|s| s.name == CREATE && s.span_id == publish.parent_span_id)
            .expect("the relay's publish is a child of CreateOrder");
        assert_eq!(hex(&create.parent_span_id), &INCOMING[36..52], "CreateOrder continues the caller's span");
        assert_eq!(process.parent_span_id, publish.span_id, "processing is a child of the publish");
        for span in [create, publish, process] {
            assert_eq!(attribute(span, "correlation_id").as_deref(), Some(CORRELATION), "{}", span.name);
        }
        for span in [create, process] {
            assert_eq!(
                attribute(span, "trace_id").as_deref(),
                Some(trace_id),
                "{}'s log lines name the trace",
                span.name
            );
            assert_eq!(attribute(span, "span_id"), Some(hex(&span.span_id)), "{}'s log lines name the span", span.name);
        }
        assert_server_span(create, addr.port());
        assert_eq!(attribute(publish, "messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(attribute(publish, "messaging.destination.name").as_deref(), Some(contracts::EVENTS_EXCHANGE));
        assert_eq!(attribute(process, "messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(attribute(publish, "messaging.operation.name").as_deref(), Some("publish"));
        assert_eq!(publish.kind, SpanKind::Producer as i32);
        assert_eq!(attribute(process, "messaging.operation.name").as_deref(), Some("process"));
        assert_eq!(process.kind, SpanKind::Consumer as i32);
        // Both sides name the exchange, not the queue the consumer happens to read.
        assert_eq!(attribute(process, "messaging.destination.name").as_deref(), Some(contracts::EVENTS_EXCHANGE));
        for span in [publish, process] {
            assert_eq!(
                attribute(span, "messaging.rabbitmq.destination.routing_key").as_deref(),
                Some(contracts::events::v1::ORDER_CREATED_ROUTING_KEY),
                "{}",
                span.name
            );
        }

        // The statements: one INSERT writes the order and its outbox row,
        // shared with the orders of concurrent calls (group commit), at most all of this test's.
        let insert = child(&spans, create, "INSERT orders");
        let group = assert_statement(insert, "INSERT", "orders", &orders_db, &server);
        assert!(group.is_none_or(|n| n <= ORDERS as i64), "{group:?} orders in one INSERT, of {ORDERS}");
        inserts.push(insert);
        assert!(insert.start_time_unix_nano >= create.start_time_unix_nano);
        assert!(insert.end_time_unix_nano <= create.end_time_unix_nano, "the INSERT ends before the call");
        let delete = child(&spans, publish, "DELETE outbox_messages");
        assert_statement(delete, "DELETE", "outbox_messages", &orders_db, &server);
        deletes.push(delete);
        let record = child(&spans, process, "INSERT processed_events");
        assert_statement(record, "INSERT", "processed_events", &notifications_db, &server);
        let notify = child(&spans, process, "INSERT notifications");
        assert_statement(notify, "INSERT", "notifications", &notifications_db, &server);
    }
    // This test's database holds only this test's orders and its relay publishes only them.
    assert_batches_add_up(&inserts);
    assert_batches_add_up(&deletes);

    let get = spans.iter().find(|s| s.name == GET).expect("GetOrder joins the caller's trace");
    assert_eq!(hex(&get.parent_span_id), &INCOMING[36..52]);
    assert_server_span(get, addr.port());
    let list = spans.iter().find(|s| s.name == LIST).expect("ListNotifications joins the caller's trace");
    assert_eq!(hex(&list.parent_span_id), &INCOMING[36..52]);
    assert_server_span(list, notifications_addr.port());
    assert_eq!(attribute(list, "correlation_id").as_deref(), Some(CORRELATION));
    assert_statement(child(&spans, get, "SELECT orders"), "SELECT", "orders", &orders_db, &server);

    orders_stop.cancel();
    orders_task.await.unwrap().unwrap();
    notifications_stop.cancel();
    notifications_task.await.unwrap().unwrap();
    leftovers.remove().await;
}
