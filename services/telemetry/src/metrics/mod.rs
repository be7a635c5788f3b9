//! Metrics: one [`Registry`] per service instance, each instrument registered
//! under two names: its Prometheus name, served as `GET /metrics` in the text
//! exposition format on a small HTTP server of its own, and its OpenTelemetry
//! name and UCUM unit, under which [`otlp::push`] sends the same registry over
//! OTLP/gRPC when an endpoint is configured. The Prometheus names follow the
//! OpenTelemetry ones the Prometheus way (`.` becomes `_`, the unit becomes a
//! suffix: `rpc.server.duration` in `s` is `rpc_server_duration_seconds`).
//!
//! Labels are named as OpenTelemetry attributes (`rpc.method`); Prometheus
//! sees them with `_` for `.` (`rpc_method`).
//!
//! A registry per instance rather than a global one keeps several services
//! (or several tests) in one process apart.

mod convert;
pub mod otlp;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get};
pub use prometheus::{Gauge, Histogram, HistogramVec, IntCounterVec, IntGauge};
use prometheus::{HistogramOpts, Opts, TextEncoder, core::Collector, proto::MetricFamily};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use otlp::OtlpExport;

/// Buckets, in seconds, for latencies from a millisecond to several minutes.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Buckets for batch sizes (messages per batch).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// An instrument's names.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    /// What `/metrics` shows; for counters without the `_total` Prometheus adds by convention.
    pub prometheus: &'static str,
    /// The OpenTelemetry instrument name, e.g. `rpc.server.duration`.
    pub otel: &'static str,
    /// The UCUM unit, e.g. `s` or `{message}`.
    pub unit: &'static str,
}

/// How an instrument travels over OTLP, keyed by its Prometheus family name.
#[derive(Debug, Clone)]
struct Instrument {
    otel: &'static str,
    unit: &'static str,
    /// Whole numbers (int counters and gauges) go out as `as_int`.
    integer: bool,
    /// Prometheus label name to attribute name, where they differ.
    attributes: Vec<(String, &'static str)>,
}

/// A Prometheus registry that also knows each instrument's OpenTelemetry name and unit.
#[derive(Clone)]
pub struct Registry {
    prometheus: prometheus::Registry,
    instruments: Arc<Mutex<HashMap<String, Instrument>>>,
    /// Where the cumulative series start (a service makes its registry as it starts).
    created: SystemTime,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self { prometheus: prometheus::Registry::new(), instruments: Arc::default(), created: SystemTime::now() }
    }

    /// Every metric family with at least one series, as `/metrics` renders them.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.prometheus.gather()
    }

    /// Registers `collector`; a name registered twice in one registry (two
    /// components handed the same registry) is logged and left unregistered
    /// instead of failing the service.
    fn register<C: Collector + Clone + 'static>(&self, family: String, instrument: Instrument, collector: C) -> C {
        match self.prometheus.register(Box::new(collector.clone())) {
            Ok(()) => {
                self.instruments.lock().expect("instrument map poisoned").insert(family, instrument);
            }
            Err(err) => tracing::warn!(error = %err, "metric not registered"),
        }
        collector
    }
}

fn instrument(name: Name, integer: bool, labels: &[&'static str]) -> Instrument {
    let attributes =
        labels.iter().filter(|label| label.contains('.')).map(|label| (prometheus_label(label), *label)).collect();
    Instrument { otel: name.otel, unit: name.unit, integer, attributes }
}

/// `rpc.grpc.status_code` as a Prometheus label: `rpc_grpc_status_code`.
fn prometheus_label(attribute: &str) -> String {
    attribute.replace('.', "_")
}

fn prometheus_labels(labels: &[&'static str]) -> Vec<String> {
    labels.iter().map(|label| prometheus_label(label)).collect()
}

/// A counter per label set.
pub fn counter_vec(registry: &Registry, name: Name, help: &str, labels: &[&'static str]) -> IntCounterVec {
    let family = format!("{}_total", name.prometheus);
    let names = prometheus_labels(labels);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let counter = IntCounterVec::new(Opts::new(family.clone(), help), &names).expect("valid counter");
    registry.register(family, instrument(name, true, labels), counter)
}

pub fn gauge(registry: &Registry, name: Name, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name.prometheus, help).expect("valid gauge");
    registry.register(name.prometheus.to_owned(), instrument(name, true, &[]), gauge)
}

/// A gauge holding a fractional value (ages, ratios).
pub fn float_gauge(registry: &Registry, name: Name, help: &str) -> Gauge {
    let gauge = Gauge::new(name.prometheus, help).expect("valid gauge");
    registry.register(name.prometheus.to_owned(), instrument(name, false, &[]), gauge)
}

pub fn histogram(registry: &Registry, name: Name, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name.prometheus, help).buckets(buckets.to_vec());
    let histogram = Histogram::with_opts(opts).expect("valid histogram");
    registry.register(name.prometheus.to_owned(), instrument(name, false, &[]), histogram)
}

pub fn histogram_vec(
    registry: &Registry,
    name: Name,
    help: &str,
    labels: &[&'static str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name.prometheus, help).buckets(buckets.to_vec());
    let names = prometheus_labels(labels);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let histogram = HistogramVec::new(opts, &names).expect("valid histogram");
    registry.register(name.prometheus.to_owned(), instrument(name, false, labels), histogram)
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_else(|err| format!("# encoding failed: {err}\n"))
}

/// Binds the metrics listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot bind the metrics address {addr}: {err}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = axum::Router::new().route("/metrics", get(scrape)).with_state(registry);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

async fn scrape(State(registry): State<Registry>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGES: Name = Name { prometheus: "inbox_messages", otel: "inbox.messages", unit: "{message}" };

    #[test]
    fn renders_counters_with_their_suffix() {
        let registry = Registry::new();
        let counter = counter_vec(&registry, MESSAGES, "messages by outcome", &["outcome"]);
        counter.with_label_values(&["processed"]).inc_by(3);
        let again = counter_vec(&registry, MESSAGES, "registered twice", &["outcome"]);
        again.with_label_values(&["processed"]).inc();
        let text = render(&registry);
        assert!(text.contains("inbox_messages_total{outcome=\"processed\"} 3"), "{text}");
    }

    #[test]
    fn attribute_names_become_prometheus_labels() {
        let registry = Registry::new();
        let name = Name { prometheus: "rpc_server_duration_seconds", otel: "rpc.server.duration", unit: "s" };
        let duration = histogram_vec(&registry, name, "calls", &["rpc.method", "rpc.grpc.status_code"], &[1.0]);
        duration.with_label_values(&["CreateOrder", "0"]).observe(0.5);
        let text = render(&registry);
        assert!(
            text.contains("rpc_server_duration_seconds_count{rpc_grpc_status_code=\"0\",rpc_method=\"CreateOrder\"} 1"),
            "{text}"
        );
    }
}
