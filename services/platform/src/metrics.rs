//! Metrics: one Prometheus [`Registry`] per service instance, instruments named
//! after the OpenTelemetry semantic conventions as Prometheus renders them
//! (`.` becomes `_`, the unit becomes a suffix: `rpc.server.duration` in
//! seconds is `rpc_server_duration_seconds`), and `GET /metrics` in the text
//! exposition format on a small HTTP server of its own.
//!
//! A registry per instance rather than a global one keeps several services
//! (or several tests) in one process apart.

use std::net::SocketAddr;

use axum::{extract::State, http::header, response::IntoResponse, routing::get};
pub use prometheus::{Gauge, Histogram, HistogramVec, IntCounterVec, IntGauge, Registry};
use prometheus::{HistogramOpts, Opts, TextEncoder, core::Collector};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Buckets, in seconds, for latencies from a millisecond to several minutes.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Buckets for batch sizes (messages per batch).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// Registers `collector`; a name registered twice in one registry (two
/// components handed the same registry) is logged and left unregistered
/// instead of failing the service.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(err) = registry.register(Box::new(collector.clone())) {
        tracing::warn!(error = %err, "metric not registered");
    }
    collector
}

/// A counter per label set; `name` without the `_total` suffix Prometheus adds by convention.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(format!("{name}_total"), help), labels).expect("valid counter");
    register(registry, counter)
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

/// A gauge holding a fractional value (ages, ratios).
pub fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("valid gauge"))
}

pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid histogram"))
}

pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid histogram"))
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

    #[test]
    fn renders_counters_with_their_suffix() {
        let registry = Registry::new();
        let counter = counter_vec(&registry, "inbox_messages", "messages by outcome", &["outcome"]);
        counter.with_label_values(&["processed"]).inc_by(3);
        let again = counter_vec(&registry, "inbox_messages", "registered twice", &["outcome"]);
        again.with_label_values(&["processed"]).inc();
        let text = render(&registry);
        assert!(text.contains("inbox_messages_total{outcome=\"processed\"} 3"), "{text}");
    }
}
