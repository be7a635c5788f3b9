//! What the trace test reads from the spans an in-test OTLP receiver collects.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use sqlx::postgres::PgConnectOptions;

pub(crate) use testkit::otlp::{Receiver, attribute, hex};

pub(crate) fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    })
}

/// The spans named `name` whose parent is `parent`.
pub(crate) fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name && s.parent_span_id == parent.span_id).collect()
}

/// The one span named `name` under `parent`; panics naming what is there instead.
pub(crate) fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    match children(spans, parent, name)[..] {
        [one] => one,
        ref other => panic!("{} has {} {name:?} children", parent.name, other.len()),
    }
}

/// An RPC server span, named `package.Service/Method`, as OpenTelemetry's RPC
/// conventions describe it, for a call to a local port that answered OK.
pub(crate) fn assert_server_span(span: &Span, port: u16) {
    let (service, method) = span.name.split_once('/').expect("named package.Service/Method");
    assert_eq!(span.kind, SpanKind::Server as i32, "{}", span.name);
    assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"), "{}", span.name);
    assert_eq!(attribute(span, "rpc.service").as_deref(), Some(service), "{}", span.name);
    assert_eq!(attribute(span, "rpc.method").as_deref(), Some(method), "{}", span.name);
    assert_eq!(int_attribute(span, "rpc.grpc.status_code"), Some(0), "{} answered OK", span.name);
    assert_eq!(attribute(span, "server.address").as_deref(), Some("127.0.0.1"), "{}", span.name);
    assert_eq!(int_attribute(span, "server.port"), Some(i64::from(port)), "{}", span.name);
    assert_eq!(attribute(span, "trace_id").as_deref(), Some(hex(&span.trace_id).as_str()), "{}", span.name);
    assert!(attribute(span, "correlation_id").is_some_and(|id| !id.is_empty()), "{}", span.name);
}

/// A database client span: the stable OpenTelemetry attributes, the name
/// `"{operation} {table}"`, and what it returns: its `db.operation.batch.size`.
pub(crate) fn assert_statement(
    span: &Span,
    operation: &str,
    table: &str,
    database: &str,
    server: &PgConnectOptions,
) -> Option<i64> {
    assert_eq!(span.name, format!("{operation} {table}"));
    assert_eq!(span.kind, SpanKind::Client as i32, "{} is a client span", span.name);
    assert_eq!(attribute(span, "db.system.name").as_deref(), Some("postgresql"), "{}", span.name);
    assert_eq!(attribute(span, "db.operation.name").as_deref(), Some(operation), "{}", span.name);
    assert_eq!(attribute(span, "db.collection.name").as_deref(), Some(table), "{}", span.name);
    assert_eq!(attribute(span, "db.namespace").as_deref(), Some(database), "{}", span.name);
    assert_eq!(attribute(span, "server.address").as_deref(), Some(server.get_host()), "{}", span.name);
    assert_eq!(int_attribute(span, "server.port"), Some(i64::from(server.get_port())), "{}", span.name);
    let batch = int_attribute(span, "db.operation.batch.size");
    assert!(batch.is_none_or(|n| n >= 2), "a batch has two operations or more: {batch:?}");
    batch
}

/// Each row of a batch statement has a span with the statement's batch size:
/// `n` spans of size `n` per batch, so their count is a multiple of `n`. Only
/// for statements that see nothing but this test's rows (the inbox's queue
/// also gets other tests' events: they share its batches, not its trace).
pub(crate) fn assert_batches_add_up(spans: &[&Span]) {
    let mut by_size: HashMap<i64, i64> = HashMap::new();
    for span in spans {
        if let Some(n) = int_attribute(span, "db.operation.batch.size") {
            *by_size.entry(n).or_default() += 1;
        }
    }
    for (size, count) in by_size {
        assert_eq!(count % size, 0, "{count} spans of {:?} say they were in batches of {size}", spans[0].name);
    }
}
