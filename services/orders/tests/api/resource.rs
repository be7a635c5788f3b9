//! The real binary's OpenTelemetry resource: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name it on the spans an in-test OTLP receiver
//! collects and on `target_info` in `/metrics`, which the collector scrapes.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use contracts::orders::v1::order_service_client::OrderServiceClient;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use sqlx::PgPool;

use crate::helpers::{database_url, order};

/// A resource's string attributes.
type Attributes = Vec<(String, String)>;

/// The resource of every export.
#[derive(Clone, Default)]
struct Receiver {
    resources: Arc<Mutex<Vec<Attributes>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut resources = self.resources.lock().unwrap();
        for spans in request.into_inner().resource_spans {
            let attributes = spans.resource.map(|r| r.attributes).unwrap_or_default();
            resources.push(
                attributes
                    .into_iter()
                    .filter_map(|kv| match kv.value?.value? {
                        Value::StringValue(s) => Some((kv.key, s)),
                        _ => None,
                    })
                    .collect(),
            );
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

#[sqlx::test(migrations = false)]
async fn the_resource_variables_name_the_service_in_traces_and_metrics(pool: PgPool) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let (grpc, metrics) = (free_local_addr(), free_local_addr());
    let mut orders = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .env("ORDERS_DATABASE_URL", database_url(&pool, None))
        .env("AMQP_URL", testkit::amqp_url())
        .env("ORDERS_ROLE", "api")
        .env("ORDERS_GRPC_ADDR", grpc.to_string())
        .env("ORDERS_METRICS_ADDR", metrics.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "orders-eu")
        // service.name here loses to OTEL_SERVICE_NAME, as the specification says.
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,deployment.environment.name=staging")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("orders starts");

    let url = format!("http://{grpc}");
    let connected = testkit::eventually(Duration::from_secs(30), || {
        let url = url.clone();
        async move { OrderServiceClient::connect(url).await.is_ok() }
    })
    .await;
    assert!(connected, "orders serves");
    let mut client = OrderServiceClient::connect(url).await.unwrap();
    client.create_order(order("c-resource", "1.00", "EUR")).await.expect("the order is taken");

    let text = testkit::scrape_metrics(metrics).await;
    let labels = [("service_name", "orders-eu"), ("deployment_environment_name", "staging")];
    assert_eq!(testkit::metric_sample(&text, "target_info", &labels), Some(1.0), "{text}");

    let exported =
        testkit::eventually(Duration::from_secs(20), || async { !receiver.resources.lock().unwrap().is_empty() }).await;
    assert!(exported, "spans are exported");
    for resource in receiver.resources.lock().unwrap().iter() {
        let get = |key: &str| resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("service.name"), Some("orders-eu"), "{resource:?}");
        assert_eq!(get("deployment.environment.name"), Some("staging"), "{resource:?}");
    }
    orders.kill().await.expect("orders stops");
}
