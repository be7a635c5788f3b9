//! Logging and tracing: JSON lines by default (one object per line, with the
//! fields of every enclosing span, so the correlation id rides on each line),
//! a human format with `LOG_FORMAT=pretty`, filtered by `RUST_LOG`; and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span exported over OTLP/gRPC
//! with W3C trace context (`traceparent`) propagation.
//!
//! One order is one trace, each hop a child of the one before (parent links,
//! not span links): the `CreateOrder` server span continues the caller's
//! `traceparent` and its own context is what the outbox row stores; the
//! relay's `publish` producer span (one per message) is a child of that stored
//! context and replaces the message's `traceparent` with its own; the inbox's
//! `inbox_message` consumer span is a child of the message's `traceparent`.
//! Without an endpoint nothing is exported and the row keeps a generated
//! `traceparent` (see [`crate::tracecontext`]). Log lines of `CreateOrder` and
//! `inbox_message` carry the `trace_id` field.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{global, trace::TraceContextExt, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Set once an OpenTelemetry layer is installed.
static OTEL_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Flushes telemetry when dropped; keep it alive for the life of `main`.
#[must_use = "telemetry is flushed when the guard is dropped"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Exports the spans ended so far (blocks until the exporter answers).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.force_flush()
        {
            eprintln!("cannot flush traces: {err}");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("cannot flush traces: {err}");
        }
    }
}

/// Installs the global subscriber for `service`. Safe to call more than once
/// (tests): later calls leave the first subscriber in place.
pub fn init(service: &'static str) -> Guard {
    init_with_otlp(service, std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
}

/// [`init`] with the OTLP endpoint given rather than read from the
/// environment (None or empty: no export). For tests and tools.
pub fn init_with_otlp(service: &'static str, endpoint: Option<String>) -> Guard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,h2=warn,tower=warn,hyper=warn"));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let provider = endpoint.filter(|e| !e.trim().is_empty()).and_then(|e| otlp_provider(service, e));
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if pretty {
        registry.with(fmt::layer().with_target(false)).try_init()
    } else {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false)).try_init()
    };
    if result.is_ok() {
        if let Some(provider) = &provider {
            global::set_tracer_provider(provider.clone());
            global::set_text_map_propagator(TraceContextPropagator::new());
            OTEL_ACTIVE.store(true, Ordering::Relaxed);
        }
        tracing::debug!(service, otlp = provider.is_some(), "telemetry initialised");
    }
    Guard { provider: if result.is_ok() { provider } else { None } }
}

/// An OTLP/gRPC span pipeline to `endpoint` (the exporter reads the other
/// `OTEL_EXPORTER_OTLP_*` settings itself). Must run inside a Tokio runtime:
/// the exporter's channel lives there.
fn otlp_provider(service: &'static str, endpoint: String) -> Option<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build() {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build(),
        ),
        Err(err) => {
            eprintln!("OTLP trace export disabled: {err}");
            None
        }
    }
}

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn otel_active() -> bool {
    OTEL_ACTIVE.load(Ordering::Relaxed)
}

/// Makes the span described by `traceparent` the parent of `span`: the span
/// joins that trace. A no-op without OpenTelemetry or with a malformed value.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| otel_active()) else { return };
    let carrier = HashMap::from([(crate::tracecontext::HEADER.to_owned(), traceparent.to_owned())]);
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` naming `span` itself, to hand to whatever continues its
/// work (an outbox row, an AMQP message); None without OpenTelemetry.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !otel_active() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// For test binaries: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = init("test");
    }
}
