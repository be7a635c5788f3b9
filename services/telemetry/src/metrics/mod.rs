//! Metrics: one [`Registry`] per service instance, served as `GET /metrics`
//! in the Prometheus text exposition format on a small HTTP server of its own.
//! That endpoint is the one way metrics leave a service: Prometheus scrapes it,
//! and so does the OpenTelemetry Collector (`deploy/otel-collector.yaml`), which
//! forwards to any backend over OTLP with its own TLS and headers.
//!
//! Each instrument follows an OpenTelemetry one (its [`Name`]), named the
//! Prometheus way (`.` becomes `_`, the unit becomes a suffix:
//! `rpc.server.duration` in `s` is `rpc_server_duration_seconds`); labels are
//! attribute names with `_` for `.` (`rpc.method` is `rpc_method`).
//! `target_info` carries the service's resource (see [`target_info`]).
//!
//! A registry per instance rather than a global one keeps several services
//! (or several tests) in one process apart.

use std::{collections::HashMap, net::SocketAddr};

use axum::{extract::State, http::header, response::IntoResponse, routing::get};
use opentelemetry_sdk::Resource;
pub use prometheus::{Gauge, Histogram, HistogramVec, IntCounterVec, IntGauge};
use prometheus::{HistogramOpts, Opts, TextEncoder, core::Collector, proto::MetricFamily};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    /// The OpenTelemetry instrument it follows, e.g. `rpc.server.duration`.
    pub otel: &'static str,
    /// The UCUM unit, e.g. `s` or `{message}`.
    pub unit: &'static str,
}

/// A Prometheus registry; clones share it.
#[derive(Clone, Default)]
pub struct Registry {
    prometheus: prometheus::Registry,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every metric family with at least one series, as `/metrics` renders them.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.prometheus.gather()
    }

    /// Registers `collector`; a name registered twice in one registry (two
    /// components handed the same registry) is logged and left unregistered
    /// instead of failing the service.
    fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        if let Err(err) = self.prometheus.register(Box::new(collector.clone())) {
            tracing::warn!(error = %err, "metric not registered");
        }
        collector
    }
}

/// `rpc.grpc.status_code` as a Prometheus label: `rpc_grpc_status_code`.
fn prometheus_label(attribute: &str) -> String {
    attribute.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")
}

fn prometheus_labels(labels: &[&'static str]) -> Vec<String> {
    labels.iter().map(|label| prometheus_label(label)).collect()
}

/// Registers `target_info` = 1, labelled with the attributes of `resource`
/// (names the Prometheus way): the OpenTelemetry convention by which a
/// collector scraping `/metrics` restores the resource, and a query joins it.
/// Attributes no label can name (a leading digit, the reserved `__`) are left out.
pub fn target_info(registry: &Registry, resource: &Resource) {
    let labels: HashMap<String, String> = resource
        .iter()
        .map(|(key, value)| (prometheus_label(key.as_str()), value.to_string()))
        .filter(|(label, _)| {
            label.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && !label.starts_with("__")
        })
        .collect();
    let opts = Opts::new("target_info", "Target metadata: the service's OpenTelemetry resource").const_labels(labels);
    match IntGauge::with_opts(opts) {
        Ok(gauge) => registry.register(gauge).set(1),
        Err(err) => tracing::warn!(error = %err, "target_info not registered"),
    }
}

/// A counter per label set, with a series at 0 for each of the `known` label
/// sets: `increase()` over a counter that appears with its first increment
/// sees no increase, so an alert on it would miss the first event after a start.
pub fn counter_vec(
    registry: &Registry,
    name: Name,
    help: &str,
    labels: &[&'static str],
    known: &[&[&str]],
) -> IntCounterVec {
    let family = format!("{}_total", name.prometheus);
    let names = prometheus_labels(labels);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let counter = registry.register(IntCounterVec::new(Opts::new(family, help), &names).expect("valid counter"));
    for values in known {
        counter.with_label_values(values);
    }
    counter
}

pub fn gauge(registry: &Registry, name: Name, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name.prometheus, help).expect("valid gauge");
    registry.register(gauge)
}

/// A gauge holding a fractional value (ages, ratios).
pub fn float_gauge(registry: &Registry, name: Name, help: &str) -> Gauge {
    let gauge = Gauge::new(name.prometheus, help).expect("valid gauge");
    registry.register(gauge)
}

pub fn histogram(registry: &Registry, name: Name, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name.prometheus, help).buckets(buckets.to_vec());
    let histogram = Histogram::with_opts(opts).expect("valid histogram");
    registry.register(histogram)
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
    registry.register(histogram)
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
        let counter = counter_vec(&registry, MESSAGES, "messages by outcome", &["outcome"], &[]);
        counter.with_label_values(&["processed"]).inc_by(3);
        let again = counter_vec(&registry, MESSAGES, "registered twice", &["outcome"], &[]);
        again.with_label_values(&["processed"]).inc();
        let text = render(&registry);
        assert!(text.contains("inbox_messages_total{outcome=\"processed\"} 3"), "{text}");
    }

    #[test]
    fn known_label_sets_start_at_zero() {
        let registry = Registry::new();
        let known: &[&[&str]] = &[&["q", "processed"], &["q", "poison"]];
        let counter = counter_vec(&registry, MESSAGES, "messages by outcome", &["queue", "outcome"], known);
        let text = render(&registry);
        assert!(text.contains("inbox_messages_total{outcome=\"poison\",queue=\"q\"} 0"), "{text}");
        assert!(text.contains("inbox_messages_total{outcome=\"processed\",queue=\"q\"} 0"), "{text}");
        counter.with_label_values(&["q", "poison"]).inc();
        let text = render(&registry);
        assert!(text.contains("inbox_messages_total{outcome=\"poison\",queue=\"q\"} 1"), "{text}");
    }

    #[test]
    fn target_info_carries_the_resource() {
        let registry = Registry::new();
        let resource = Resource::builder_empty()
            .with_service_name("orders-eu")
            .with_attribute(opentelemetry::KeyValue::new("deployment.environment.name", "staging"))
            .with_attribute(opentelemetry::KeyValue::new("9lives", "dropped"))
            .build();
        target_info(&registry, &resource);
        let text = render(&registry);
        assert!(
            text.contains("target_info{deployment_environment_name=\"staging\",service_name=\"orders-eu\"} 1"),
            "{text}"
        );
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
