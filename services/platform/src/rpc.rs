//! The tower layer every inbound gRPC call passes through, in both services
//! (see [`crate::grpc::router_with_health_and_reflection`]). For each call it
//! opens the server span (OpenTelemetry's RPC conventions: `rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address` and
//! `server.port`, named `package.Service/Method`), continues the caller's
//! trace from its `traceparent`/`tracestate` metadata, takes the caller's
//! `x-correlation-id` (or makes one) and echoes it on the response, and
//! records `rpc.server.duration`. Handlers find the correlation id and the
//! trace context in the request's extensions ([`CallContext`]) and run inside
//! the span (`Span::current()`).
//!
//! A method the server does not offer is recorded as `_OTHER` (service and
//! method alike, on the metric and the span, which keeps the path as
//! `rpc.method_original`): label values stay bounded whatever clients send.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use prost::Message as _;
use telemetry::{
    correlation::{self, CorrelationId},
    metrics::{self, HistogramVec, Name, Registry},
    propagation::{self, Incoming, TRACESTATE},
    tracecontext::{self, TraceParent},
};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

/// What an unknown service or method is recorded as.
pub const OTHER: &str = "_OTHER";

/// The methods a server offers, as `package.Service/Method`.
#[derive(Debug, Clone, Default)]
pub struct KnownMethods(HashSet<String>);

impl KnownMethods {
    /// The methods of `services` described in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s); services not named are left out.
    pub fn new(services: &[&str], descriptor_sets: &[&[u8]]) -> anyhow::Result<Self> {
        let mut known = HashSet::new();
        for set in descriptor_sets {
            for file in prost_types::FileDescriptorSet::decode(*set)?.file {
                let package = file.package();
                for service in &file.service {
                    let full = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    if services.contains(&full.as_str()) {
                        known.extend(service.method.iter().map(|m| format!("{full}/{}", m.name())));
                    }
                }
            }
        }
        Ok(Self(known))
    }

    /// The service and method of a known `/package.Service/Method` path.
    fn find<'a>(&self, path: &'a str) -> Option<(&'a str, &'a str)> {
        let full = path.strip_prefix('/')?;
        if self.0.contains(full) { full.split_once('/') } else { None }
    }
}

/// What the layer hands a handler in the request's extensions.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The caller's correlation id, or a fresh one; echoed on the response.
    pub correlation: CorrelationId,
    /// The call's own trace context (its span's, with OpenTelemetry), to hand on.
    pub trace: TraceParent,
}

impl CallContext {
    /// The context the layer put on `request`; a fresh one for a request
    /// that did not pass through it.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self { correlation: CorrelationId::generate(), trace: TraceParent::new_root() })
    }
}

/// See the module documentation. `rpc.server.duration` is recorded in
/// seconds (as `rpc_server_duration_seconds`) with `rpc.system`,
/// `rpc.service`, `rpc.method` and `rpc.grpc.status_code`; it runs until the
/// response headers: the whole call for unary RPCs. The status is the
/// `grpc-status` of a trailers-only response (how tonic answers an error) and
/// OK otherwise, so a stream that fails after its first message counts as OK.
#[derive(Clone)]
pub struct RpcLayer {
    duration: HistogramVec,
    known: Arc<KnownMethods>,
}

impl RpcLayer {
    pub fn new(registry: &Registry, known: KnownMethods) -> Self {
        let duration = metrics::histogram_vec(
            registry,
            Name { prometheus: "rpc_server_duration_seconds", otel: "rpc.server.duration", unit: "s" },
            "Duration of inbound gRPC calls",
            &["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"],
            metrics::LATENCY_BUCKETS,
        );
        Self { duration, known: Arc::new(known) }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc { inner, duration: self.duration.clone(), known: Arc::clone(&self.known) }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    duration: HistogramVec,
    known: Arc<KnownMethods>,
}

impl<S, B, R> Service<http::Request<B>> for Rpc<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let found = self.known.find(path);
        let (service, method) = found.unwrap_or((OTHER, OTHER));
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let correlation = CorrelationId::from_header(text(correlation::HEADER));
        let authority = request.uri().authority();
        let span = tracing::info_span!(
            "rpc",
            // An unknown method's path is the caller's to choose: it names no span.
            otel.name = found.map_or("grpc", |_| &path[1..]),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.method_original = found.is_none().then_some(path),
            rpc.grpc.status_code = Empty,
            server.address = authority.map(|a| a.host()),
            // Integers as i64: the OpenTelemetry layer exports u64 as text.
            server.port = authority.and_then(|a| a.port_u16()).map(i64::from),
            correlation_id = %correlation,
            trace_id = Empty,
            span_id = Empty,
        );
        let traceparent = text(tracecontext::HEADER);
        let incoming = Incoming { traceparent, tracestate: text(TRACESTATE) };
        let trace = propagation::continue_trace(&span, incoming).unwrap_or_else(|| {
            let trace = TraceParent::continue_or_start(traceparent);
            propagation::record(&span, &trace);
            trace
        });
        let labels = [service.to_owned(), method.to_owned()];
        let echo = http::HeaderValue::from_str(correlation.as_str()).ok();
        request.extensions_mut().insert(CallContext { correlation, trace });

        let started = Instant::now();
        let duration = self.duration.clone();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let mut result = call.instrument(span.clone()).await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                // UNKNOWN: the transport answers for us.
                Err(_) => 2,
            };
            duration
                .with_label_values(&["grpc", &labels[0], &labels[1], &code.to_string()])
                .observe(started.elapsed().as_secs_f64());
            span.record("rpc.grpc.status_code", i64::from(code));
            if is_server_error(code) {
                span.record("otel.status_code", "error");
            }
            // On the response headers, which are also the status metadata
            // of a trailers-only (error) answer.
            if let (Ok(response), Some(value)) = (&mut result, echo) {
                response.headers_mut().insert(correlation::HEADER, value);
            }
            result
        })
    }
}

/// The codes that make a server span an error, as OpenTelemetry's gRPC
/// conventions list them: the server failed, not the caller's request.
fn is_server_error(code: i32) -> bool {
    use tonic::Code;
    [Code::Unknown, Code::DeadlineExceeded, Code::Unimplemented, Code::Internal, Code::Unavailable, Code::DataLoss]
        .iter()
        .any(|c| *c as i32 == code)
}

#[cfg(test)]
mod tests {
    use super::KnownMethods;

    #[test]
    fn only_the_offered_services_methods_are_known() {
        let known = KnownMethods::new(
            &["grpc.health.v1.Health"],
            &[tonic_health::pb::FILE_DESCRIPTOR_SET, tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET],
        )
        .unwrap();
        assert_eq!(known.find("/grpc.health.v1.Health/Check"), Some(("grpc.health.v1.Health", "Check")));
        assert_eq!(known.find("/grpc.health.v1.Health/Nope"), None);
        assert_eq!(known.find("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), None, "not offered");
        assert_eq!(known.find("/favicon.ico"), None);
        assert_eq!(known.find("grpc.health.v1.Health/Check"), None);
    }
}
