//! Continuing a caller's trace: the W3C trace context (`traceparent`, and
//! `tracestate` when it comes along) of an incoming call or message becomes
//! the parent of the span that handles it, and that span's own context is
//! what is handed on.

use std::collections::HashMap;

use opentelemetry::{global, trace::TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{otel_active, tracecontext::TraceParent};

/// gRPC metadata key and AMQP header of the vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// The trace context an incoming call or message carries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Incoming<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// Makes the span described by `traceparent` the parent of `span`: the span
/// joins that trace. A no-op without OpenTelemetry or with a malformed value.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    set_parent_from(span, Incoming { traceparent, tracestate: None });
}

fn set_parent_from(span: &Span, incoming: Incoming<'_>) {
    let Some(traceparent) = incoming.traceparent.filter(|_| otel_active()) else { return };
    let mut carrier = HashMap::from([(crate::tracecontext::HEADER.to_owned(), traceparent.to_owned())]);
    if let Some(state) = incoming.tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` naming `span` itself, to hand to whatever continues its
/// work (an outbox row, an AMQP message); None without OpenTelemetry.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if !otel_active() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// Joins `span` (which has empty `trace_id` and `span_id` fields) to the
/// incoming trace and records there the context its log lines name. With
/// OpenTelemetry that is the span's own context; without it, the incoming
/// trace with a generated span id, or None when nothing well-formed came in.
pub fn continue_trace(span: &Span, incoming: Incoming<'_>) -> Option<TraceParent> {
    let trace = if otel_active() {
        set_parent_from(span, incoming);
        traceparent_of(span).and_then(|own| TraceParent::parse(&own))
    } else {
        incoming.traceparent.and_then(TraceParent::parse).map(TraceParent::child)
    };
    if let Some(trace) = &trace {
        record(span, trace);
    }
    trace
}

/// Records `trace` as the `trace_id` and `span_id` of `span`'s log lines.
pub fn record(span: &Span, trace: &TraceParent) {
    span.record("trace_id", trace.trace_id_hex());
    span.record("span_id", format!("{:016x}", trace.span_id));
}
