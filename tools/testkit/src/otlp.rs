//! An OTLP trace receiver on 127.0.0.1 that keeps every span exported to it
//! with its resource's service name, and ways to read the spans.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::Span,
};

/// A span as it arrived, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Collected {
    pub service: String,
    pub span: Span,
}

/// Every span exported to it so far.
#[derive(Clone, Default)]
pub struct Receiver {
    collected: Arc<Mutex<Vec<Collected>>>,
}

impl Receiver {
    /// Serves on a free port of 127.0.0.1 for the rest of the test's runtime.
    pub async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("bound address");
        let server = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, addr)
    }

    /// What has arrived so far.
    pub fn collected(&self) -> Vec<Collected> {
        self.collected.lock().expect("receiver lock").clone()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut collected = self.collected.lock().expect("receiver lock");
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string_of(&attributes, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                collected.extend(scope.spans.into_iter().map(|span| Collected { service: service.clone(), span }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Lower-case hex of an id's bytes, as `traceparent` spells it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The attribute `key` of `span`, as text.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    string_of(&span.attributes, key)
}

fn string_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    })
}
