//! Metrics pushed over OTLP: an in-test OTLP metrics receiver collects what
//! Orders (API and relay) and Notifications running in this process export,
//! and finds the counts `/metrics` would show under their OpenTelemetry names
//! and units; a stopping service pushes its last values; a collector that
//! never answers costs the service nothing.
//!
//! The export interval comes from [`OtlpExport`] values built here, never from
//! the environment: tests share one process.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

mod in_process;

use contracts::orders::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    metrics::v1::{AggregationTemporality, HistogramDataPoint, Metric, metric::Data, number_data_point},
};
use orders::{
    config::{Config, Role},
    startup::App,
};
use sqlx::{Connection, PgConnection, PgPool};
use telemetry::metrics::{LATENCY_BUCKETS, OtlpExport};
use tokio_util::sync::CancellationToken;

const ORDERS: &str = "orders-otlp-test";
const NOTIFICATIONS: &str = "notifications-otlp-test";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Keeps every request it is sent.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on 127.0.0.1:0; returns the endpoint to export to.
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(receiver.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, format!("http://{addr}"))
    }

    /// How many requests came from `service`.
    fn requests_from(&self, service: &str) -> usize {
        self.requests.lock().unwrap().iter().filter(|r| service_of(r).as_deref() == Some(service)).count()
    }

    /// `name` as `service` last sent it: each export carries every series's
    /// cumulative value, so the newest one is the current state.
    fn latest(&self, service: &str, name: &str) -> Option<Metric> {
        let requests = self.requests.lock().unwrap();
        requests.iter().rev().filter(|r| service_of(r).as_deref() == Some(service)).find_map(|request| {
            request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .find(|m| m.name == name)
                .cloned()
        })
    }

    /// The resource attributes `service` sent.
    fn resource(&self, service: &str) -> Vec<KeyValue> {
        let requests = self.requests.lock().unwrap();
        let request = requests.iter().find(|r| service_of(r).as_deref() == Some(service)).expect("an export");
        request.resource_metrics[0].resource.clone().unwrap().attributes
    }
}

fn service_of(request: &ExportMetricsServiceRequest) -> Option<String> {
    let resource = request.resource_metrics.first()?.resource.as_ref()?;
    string(&resource.attributes, "service.name")
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    })
}

fn histogram(metric: &Metric) -> &[HistogramDataPoint] {
    match &metric.data {
        Some(Data::Histogram(h)) => {
            assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32, "{}", metric.name);
            &h.data_points
        }
        other => panic!("{} is not a histogram: {other:?}", metric.name),
    }
}

/// The calls of `method` counted by `rpc.server.duration`, whatever their status.
fn calls(metric: &Metric, method: &str) -> u64 {
    histogram(metric)
        .iter()
        .filter(|p| string(&p.attributes, "rpc.method").as_deref() == Some(method))
        .map(|p| p.count)
        .sum()
}

fn total(metric: &Metric) -> u64 {
    histogram(metric).iter().map(|p| p.count).sum()
}

/// The value of the monotonic sum `metric` for the series with `key` = `value`.
fn counted(metric: &Metric, key: &str, value: &str) -> Option<i64> {
    let Some(Data::Sum(sum)) = &metric.data else { panic!("{} is not a sum: {:?}", metric.name, metric.data) };
    assert!(sum.is_monotonic, "{}", metric.name);
    assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32, "{}", metric.name);
    sum.data_points.iter().find(|p| string(&p.attributes, key).as_deref() == Some(value)).map(|p| match p.value {
        Some(number_data_point::Value::AsInt(n)) => n,
        other => panic!("{} is not an integer: {other:?}", metric.name),
    })
}

fn export(endpoint: &str, service: &str, interval: Duration) -> OtlpExport {
    OtlpExport { interval, ..OtlpExport::new(endpoint, service, VERSION) }
}

fn order(customer: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        amount: "4.20".into(),
        currency: "EUR".into(),
        request_id: String::new(),
    }
}

/// The database of `pool` (made by `#[sqlx::test]`) as a URL the service can use.
fn url_of(pool: &PgPool) -> String {
    let name = pool.connect_options().get_database().expect("test database has a name").to_owned();
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').expect("database url has a path");
    format!("{server}/{name}")
}

/// Orders started with `export`: its gRPC address, `/metrics` address, stop token and task.
struct Running {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_orders(config: Config, export: OtlpExport) -> Running {
    let app = App::build(config).await.expect("orders builds").with_metrics_export(Some(export));
    let (addr, metrics_addr) = (app.grpc_addr(), app.metrics_addr());
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running { addr, metrics_addr, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("orders task").expect("orders stops cleanly");
    }
}

async fn create_orders(addr: SocketAddr, count: usize) -> Vec<uuid::Uuid> {
    let mut client = OrderServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut events = Vec::new();
    for i in 0..count {
        let created = client.create_order(order(&format!("c-otlp-{i}"))).await.unwrap().into_inner();
        events.push(created.event_id.parse().unwrap());
    }
    events
}

#[sqlx::test(migrations = false)]
async fn both_services_push_their_metrics_with_opentelemetry_names_and_units(pool: PgPool) {
    telemetry::init_for_tests();
    const SENT: usize = 4;
    let (receiver, endpoint) = Receiver::start().await;
    let interval = Duration::from_millis(200);

    // Notifications, consuming order.created from the real exchange on a queue of its own.
    let mut leftovers = in_process::Leftovers::default();
    let (notifications_url, notifications_db) = in_process::fresh_database("pulse_otlp_notifications");
    let (config, topology) = in_process::notifications_config(&notifications_url, "test.otlp.notifications");
    leftovers.queues(&topology);
    leftovers.database(&notifications_db);
    let notifications = notifications::build(config)
        .await
        .expect("notifications builds")
        .with_metrics_export(Some(export(&endpoint, NOTIFICATIONS, interval)));
    let mut consuming = notifications.consumer_connected();
    let notifications_stop = CancellationToken::new();
    let notifications_task = tokio::spawn(notifications.run_until_stopped(notifications_stop.clone()));
    assert!(testkit::wait_for_flag(&mut consuming, true, Duration::from_secs(20)).await, "notifications stopped");

    let orders =
        start_orders(in_process::orders_config(&url_of(&pool), Role::All), export(&endpoint, ORDERS, interval)).await;
    let events = create_orders(orders.addr, SENT).await;

    let mut processed_db = PgConnection::connect(&notifications_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)")
            .bind(&events)
            .fetch_one(&mut processed_db)
            .await
            .unwrap();
        let rpc = receiver.latest(ORDERS, "rpc.server.duration").map(|m| calls(&m, "CreateOrder"));
        let confirmed = receiver.latest(ORDERS, "outbox.commit_to_confirm.duration").map(|m| total(&m));
        let processed =
            receiver.latest(NOTIFICATIONS, "inbox.messages").and_then(|m| counted(&m, "outcome", "processed"));
        if ours == SENT as i64
            && rpc == Some(SENT as u64)
            && confirmed >= Some(SENT as u64)
            && processed >= Some(SENT as i64)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processed in the database: {ours}; exported: CreateOrder {rpc:?}, confirmed {confirmed:?}, processed {processed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Names, units and shapes, as a collector would see them.
    let duration = receiver.latest(ORDERS, "rpc.server.duration").unwrap();
    assert_eq!(duration.unit, "s");
    let point = histogram(&duration)
        .iter()
        .find(|p| string(&p.attributes, "rpc.method").as_deref() == Some("CreateOrder"))
        .unwrap();
    assert_eq!(string(&point.attributes, "rpc.service").as_deref(), Some(contracts::orders::v1::SERVICE_NAME));
    assert_eq!(string(&point.attributes, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(point.explicit_bounds, LATENCY_BUCKETS);
    assert_eq!(point.bucket_counts.len(), LATENCY_BUCKETS.len() + 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count, "per-bucket counts add up to the count");
    assert!(point.sum.unwrap() > 0.0);
    assert!(0 < point.start_time_unix_nano && point.start_time_unix_nano < point.time_unix_nano);
    for (service, name, unit) in [
        (ORDERS, "outbox.commit_to_confirm.duration", "s"),
        (ORDERS, "outbox.batch.size", "{message}"),
        (ORDERS, "outbox.pending", "{message}"),
        (ORDERS, "outbox.partitions.owned", "{partition}"),
        (NOTIFICATIONS, "inbox.messages", "{message}"),
        (NOTIFICATIONS, "inbox.lag", "s"),
        (NOTIFICATIONS, "messaging.process.duration", "s"),
        (NOTIFICATIONS, "inbox.batch.duration", "s"),
    ] {
        let metric = receiver.latest(service, name).unwrap_or_else(|| panic!("{service} exported {name}"));
        assert_eq!(metric.unit, unit, "{name}");
        assert!(!metric.description.is_empty(), "{name}");
    }
    let Some(Data::Gauge(pending)) = receiver.latest(ORDERS, "outbox.pending").unwrap().data else {
        panic!("outbox.pending is a gauge")
    };
    assert!(matches!(pending.data_points[0].value, Some(number_data_point::Value::AsInt(_))));
    assert!(total(&receiver.latest(NOTIFICATIONS, "inbox.lag").unwrap()) >= SENT as u64);
    assert!(total(&receiver.latest(NOTIFICATIONS, "messaging.process.duration").unwrap()) >= 1);
    for service in [ORDERS, NOTIFICATIONS] {
        let resource = receiver.resource(service);
        assert_eq!(string(&resource, "service.version").as_deref(), Some(VERSION), "{service}");
        assert!(string(&resource, "service.instance.id").is_some_and(|id| !id.is_empty()), "{service}");
    }

    // After the stop, the last push holds the final values. The queue is bound to the
    // shared exchange, so orders of tests running beside this one may arrive too:
    // the counter must equal what the database recorded, which includes our orders.
    orders.stop().await;
    notifications_stop.cancel();
    notifications_task.await.unwrap().unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&mut processed_db).await.unwrap();
    let processed = receiver.latest(NOTIFICATIONS, "inbox.messages").and_then(|m| counted(&m, "outcome", "processed"));
    assert_eq!(processed, Some(recorded), "the last push counts every processed event");
    assert_eq!(receiver.latest(ORDERS, "rpc.server.duration").map(|m| calls(&m, "CreateOrder")), Some(SENT as u64));

    processed_db.close().await.unwrap();
    leftovers.remove().await;
}

#[sqlx::test(migrations = false)]
async fn a_stopping_service_pushes_its_last_values(pool: PgPool) {
    telemetry::init_for_tests();
    let (receiver, endpoint) = Receiver::start().await;
    // Far longer than the test: only the push on shutdown can deliver anything.
    let orders = start_orders(
        in_process::orders_config(&url_of(&pool), Role::Api),
        export(&endpoint, ORDERS, Duration::from_secs(3600)),
    )
    .await;
    create_orders(orders.addr, 3).await;
    assert_eq!(receiver.requests_from(ORDERS), 0, "nothing is pushed before the interval");

    orders.stop().await;
    assert_eq!(receiver.requests_from(ORDERS), 1, "one push on shutdown");
    let duration = receiver.latest(ORDERS, "rpc.server.duration").unwrap();
    assert_eq!(calls(&duration, "CreateOrder"), 3);
}

#[sqlx::test(migrations = false)]
async fn a_collector_that_never_answers_costs_the_service_nothing(pool: PgPool) {
    telemetry::init_for_tests();
    // Connections complete in the kernel's backlog and are never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let export =
        OtlpExport { timeout: Duration::from_millis(300), ..export(&endpoint, ORDERS, Duration::from_millis(50)) };
    let orders = start_orders(in_process::orders_config(&url_of(&pool), Role::Api), export).await;

    create_orders(orders.addr, 3).await;
    let text = testkit::scrape_metrics(orders.metrics_addr).await;
    let created = [("rpc_method", "CreateOrder")];
    assert_eq!(testkit::metric_sample(&text, "rpc_server_duration_seconds_count", &created), Some(3.0));

    let started = Instant::now();
    orders.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the final push gives up after its timeout: {:?}",
        started.elapsed()
    );
    drop(silent);
}
