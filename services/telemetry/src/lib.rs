//! Logging and tracing: JSON lines by default ([`crate::logformat`]: one
//! object per line with the fields of every enclosing span, so the
//! correlation id rides on each line, and the line's `trace_id` and
//! `span_id`), a human format with `LOG_FORMAT=pretty`, filtered by
//! `RUST_LOG`; and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span
//! exported over OTLP/gRPC with W3C trace context (`traceparent`) propagation.
//!
//! One order is one trace, each hop a child of the one before (parent links,
//! not span links): the `CreateOrder` server span continues the caller's
//! `traceparent` and its own context is what the outbox row stores; the
//! relay's `publish` producer span (one per message) is a child of that stored
//! context and replaces the message's `traceparent` with its own; the inbox's
//! `inbox_message` consumer span is a child of the message's `traceparent`.
//!
//! Database statements are client spans with the OpenTelemetry database
//! attributes (see [`DbTarget::span`]): `INSERT orders` under `CreateOrder`,
//! `SELECT orders` under `GetOrder`. With export on, each message also gets
//! one for every batch statement that wrote it, though the statement is shared
//! by up to a batch of messages (`db.operation.batch.size`): `INSERT
//! processed_events` and the handler's `INSERT notifications` under its
//! `inbox_message`, and the relay's `DELETE outbox_messages` under its
//! `publish`. These per-message spans are made only when [`otel_active`]
//! ([`DbTarget::span`] and [`amqp::publish_span`] ask it themselves): with
//! export off they would cost tens of thousands of spans a second for nothing.
//!
//! Without an endpoint nothing is exported and the row keeps a generated
//! `traceparent` (see [`crate::tracecontext`]); `CreateOrder`, `GetOrder` and
//! `inbox_message` then record its `trace_id` and a `span_id` of their own as
//! fields, which is where log lines take them from.

pub mod amqp;
pub mod correlation;
pub mod logformat;
pub mod metrics;
pub mod propagation;
mod resource;
pub mod tracecontext;

pub use propagation::{set_parent, traceparent_of};
pub use resource::resource;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tracing::Span;
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
        registry.with(crate::logformat::layer()).try_init()
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
        Ok(exporter) => {
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource(service)).build())
        }
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

/// Where a service's database is, for the attributes of its database spans:
/// taken from the parsed connection options once (never from the URL, which
/// may hold a password), then cloned.
#[derive(Debug, Clone)]
pub struct DbTarget {
    /// `db.namespace`: the database name.
    namespace: Arc<str>,
    /// `server.address`: host name, IP address or Unix socket directory.
    address: Arc<str>,
    port: u16,
}

tokio::task_local! {
    static CURRENT_DB: DbTarget;
}

impl DbTarget {
    pub fn new(options: &PgConnectOptions) -> Self {
        let address = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => options.get_host().to_owned(),
        };
        // Without a database name Postgres connects to the user's namesake.
        let namespace = options.get_database().unwrap_or(options.get_username());
        Self { namespace: namespace.into(), address: address.into(), port: options.get_port() }
    }

    /// Where `pool` connects to (reads its options; parses nothing).
    pub fn of(pool: &PgPool) -> Self {
        Self::new(&pool.connect_options())
    }

    /// A client span for one statement, named `"{operation} {collection}"`
    /// (`INSERT orders`), with the stable OpenTelemetry database attributes.
    /// `batch_size` is how many operations the statement applies at once
    /// (`db.operation.batch.size`, recorded from 2 on). The span is a child of
    /// `parent`; with [`Span::none`] it is a root, for [`set_parent`] to place.
    /// Only while spans are exported, [`Span::none`] otherwise: per-row
    /// statement spans would cost tens of thousands of spans a second that
    /// nobody reads, so callers need not ask.
    pub fn span(&self, parent: &Span, operation: &'static str, collection: &'static str, batch_size: usize) -> Span {
        if !otel_active() {
            return Span::none();
        }
        self.statement_span(parent, operation, collection, batch_size)
    }

    fn statement_span(
        &self,
        parent: &Span,
        operation: &'static str,
        collection: &'static str,
        batch_size: usize,
    ) -> Span {
        let span = tracing::info_span!(
            parent: parent,
            "db",
            otel.name = %format_args!("{operation} {collection}"),
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = operation,
            db.collection.name = collection,
            db.namespace = &*self.namespace,
            server.address = &*self.address,
            // Integers as i64: the OpenTelemetry layer exports u64 as text.
            server.port = i64::from(self.port),
            db.operation.batch.size = tracing::field::Empty,
        );
        if batch_size > 1 {
            span.record("db.operation.batch.size", batch_size as i64);
        }
        span
    }

    /// Runs `future` with this target as [`DbTarget::current`]: how the inbox
    /// tells a handler, which is only handed a connection, where it leads.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT_DB.scope(self, future).await
    }

    /// The target of the enclosing [`DbTarget::scope`], if any.
    pub fn current() -> Option<Self> {
        CURRENT_DB.try_with(Self::clone).ok()
    }
}

/// For test binaries: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = init("test");
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::logformat::tests::Captured;

    #[test]
    fn statement_spans_name_the_database_and_server_but_never_the_password() {
        let options = PgConnectOptions::from_str("postgres://app:s3cretpw@db.internal:6543/shop").unwrap();
        let target = DbTarget::new(&options);
        assert!(!format!("{target:?}").contains("s3cretpw"), "{target:?}");

        let out = Captured::default();
        let writer = out.clone();
        let subscriber =
            tracing_subscriber::registry().with(crate::logformat::layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let message = tracing::info_span!("inbox_message", correlation_id = "corr-9");
            let batch = target.statement_span(&message, "INSERT", "notifications", 3);
            batch.in_scope(|| tracing::info!("in a batch"));
            let single = target.statement_span(&message, "SELECT", "orders", 1);
            assert!(target.span(&message, "SELECT", "orders", 1).is_none(), "nothing is made when nothing is exported");
            single.in_scope(|| tracing::info!("alone"));
        });
        let lines = out.lines();
        let field = |line: usize, key: &str| lines[line].get(key).cloned().unwrap_or_default();
        assert_eq!(field(0, "otel.name"), "INSERT notifications");
        assert_eq!(field(0, "otel.kind"), "client");
        assert_eq!(field(0, "db.system.name"), "postgresql");
        assert_eq!(field(0, "db.operation.name"), "INSERT");
        assert_eq!(field(0, "db.collection.name"), "notifications");
        assert_eq!(field(0, "db.namespace"), "shop");
        assert_eq!(field(0, "server.address"), "db.internal");
        assert_eq!(field(0, "server.port"), 6543);
        assert_eq!(field(0, "db.operation.batch.size"), 3);
        assert_eq!(field(0, "correlation_id"), "corr-9", "a statement's lines keep the message's correlation id");
        assert_eq!(field(1, "otel.name"), "SELECT orders");
        assert!(!lines[1].contains_key("db.operation.batch.size"), "one operation is no batch: {:?}", lines[1]);
        assert!(lines.iter().all(|l| !serde_json::to_string(l).unwrap().contains("s3cretpw")));
    }

    #[tokio::test]
    async fn a_scope_hands_its_target_to_the_code_it_runs() {
        assert!(DbTarget::current().is_none());
        let target = DbTarget::new(&PgConnectOptions::from_str("postgres://u@h:1/inner").unwrap());
        let seen = target.scope(async { DbTarget::current().map(|t| t.namespace) }).await;
        assert_eq!(seen.as_deref(), Some("inner"));
        assert!(DbTarget::current().is_none(), "only inside the scope");
    }
}
