//! One CreateOrder, one trace: an in-test OTLP receiver collects the spans of
//! Orders (CreateOrder, the relay's publish) and Notifications (the inbox's
//! processing) running in this process, and finds them chained parent to
//! child under the caller's `traceparent`, each with the correlation id.
//!
//! Its own test binary: the tracing subscriber and the tracer provider are
//! global, so both services share one provider (and one `service.name`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use contracts::orders::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CORRELATION: &str = "corr-trace-1";

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    })
}

/// A fresh database URL on the test server (the services create it on start).
fn fresh_database(prefix: &str) -> (String, String) {
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').expect("database url has a path");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    (format!("{server}/{name}"), name)
}

async fn drop_database(name: &str) {
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_create_order_is_one_trace_across_both_services() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let guard = Arc::new(platform::telemetry::init_with_otlp("pulse-trace-test", Some(format!("http://{otlp}"))));
    assert!(platform::telemetry::otel_active());

    // Notifications, consuming order.created from the real exchange on a queue of its own.
    let (notifications_url, notifications_db) = fresh_database("pulse_trace_notifications");
    let mut inbox = inbox::InboxConfig::new(
        SecretString::from(testkit::amqp_url()),
        contracts::EVENTS_EXCHANGE,
        testkit::unique("test.trace.notifications"),
        vec![contracts::events::v1::ORDER_CREATED_ROUTING_KEY.to_owned()],
    );
    inbox.connection_name = "notifications-trace-test".into();
    let topology = inbox.topology();
    let config = notifications::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(notifications_url),
        pool: platform::db::PoolSettings { max_connections: 4, acquire_timeout: Duration::from_secs(2) },
        consumer_enabled: true,
        inbox,
        health_interval: Duration::from_millis(200),
    };
    let notifications = notifications::build(config).await.expect("notifications builds");
    let mut consuming = notifications.consumer_connected();
    let notifications_stop = CancellationToken::new();
    let notifications_task = tokio::spawn(notifications.run_until_stopped(notifications_stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), consuming.wait_for(|c| *c)).await.unwrap().unwrap();

    // Orders with its relay.
    let (orders_url, orders_db) = fresh_database("pulse_trace_orders");
    let mut relay = outbox::RelayConfig::new(
        SecretString::from(testkit::amqp_url()),
        "pulse-orders",
        vec![contracts::EVENTS_EXCHANGE.to_owned()],
    );
    relay.poll_interval = Duration::from_millis(200);
    relay.rebalance_interval = Duration::from_millis(200);
    let config = orders::config::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretString::from(orders_url),
        pool: platform::db::PoolSettings { max_connections: 4, acquire_timeout: Duration::from_secs(2) },
        role: orders::config::Role::All,
        relay,
        shutdown_grace: Duration::ZERO,
        health_interval: Duration::from_secs(1),
        doorbell_interval: Duration::from_millis(2),
    };
    let orders = orders::startup::App::build(config).await.expect("orders builds");
    let addr = orders.grpc_addr();
    let orders_stop = CancellationToken::new();
    let orders_task = tokio::spawn(orders.run_until_stopped(orders_stop.clone()));

    let mut client = OrderServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(CreateOrderRequest {
        customer_id: "c-trace".into(),
        amount: "9.99".into(),
        currency: "EUR".into(),
        request_id: String::new(),
    });
    request.metadata_mut().insert("traceparent", INCOMING.parse().unwrap());
    request.metadata_mut().insert("x-correlation-id", CORRELATION.parse().unwrap());
    let created = client.create_order(request).await.unwrap().into_inner();

    let trace_id = &INCOMING[3..35];
    let wanted = ["CreateOrder", "publish", "inbox_message"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: HashMap<String, Span> = loop {
        let flushing = Arc::clone(&guard);
        tokio::task::spawn_blocking(move || flushing.flush()).await.unwrap();
        let found: HashMap<String, Span> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id && wanted.contains(&s.name.as_str()))
            .filter(|s| {
                s.name != "publish" && s.name != "inbox_message"
                    || attribute(s, "messaging.message.id").as_deref() == Some(created.event_id.as_str())
            })
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        if found.len() == wanted.len() {
            break found;
        }
        assert!(Instant::now() < deadline, "spans of the trace so far: {:?}", found.keys().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (create, publish, process) = (&spans["CreateOrder"], &spans["publish"], &spans["inbox_message"]);
    assert_eq!(hex(&create.parent_span_id), &INCOMING[36..52], "CreateOrder continues the caller's span");
    assert_eq!(publish.parent_span_id, create.span_id, "the relay's publish is a child of CreateOrder");
    assert_eq!(process.parent_span_id, publish.span_id, "processing is a child of the publish");
    for span in [create, publish, process] {
        assert_eq!(attribute(span, "correlation_id").as_deref(), Some(CORRELATION), "{}", span.name);
    }
    for span in [create, process] {
        assert_eq!(attribute(span, "trace_id").as_deref(), Some(trace_id), "{}'s log lines name the trace", span.name);
    }
    assert_eq!(attribute(create, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(create, "rpc.service").as_deref(), Some("pulse.orders.v1.OrderService"));
    assert_eq!(attribute(create, "rpc.method").as_deref(), Some("CreateOrder"));
    assert_eq!(attribute(create, "db.system").as_deref(), Some("postgresql"));
    assert_eq!(attribute(publish, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attribute(publish, "messaging.destination.name").as_deref(), Some(contracts::EVENTS_EXCHANGE));
    assert_eq!(attribute(process, "messaging.destination.name").as_deref(), Some(topology.main.as_str()));

    orders_stop.cancel();
    orders_task.await.unwrap().unwrap();
    notifications_stop.cancel();
    notifications_task.await.unwrap().unwrap();
    let amqp = testkit::amqp_connection().await;
    let channel = amqp.create_channel().await.unwrap();
    let queues =
        topology.retries.iter().map(|(_, q)| q.clone()).chain([topology.main.clone(), topology.dead_letter.clone()]);
    for queue in queues {
        let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
    }
    drop_database(&orders_db).await;
    drop_database(&notifications_db).await;
}
