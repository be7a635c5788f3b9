//! With OpenTelemetry on, a span continues the trace of an incoming
//! `traceparent` and names itself in the one it hands on. Its own test binary:
//! the subscriber and the propagator are global.

use telemetry::tracecontext::TraceParent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_joins_the_incoming_trace_and_hands_on_its_own_context() {
    // Nothing listens there: exports fail quietly, which is all this test needs.
    let _guard = telemetry::init_with_otlp("trace-test", Some("http://127.0.0.1:1".to_owned()));
    assert!(telemetry::otel_active());

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let span = tracing::info_span!("CreateOrder", correlation_id = "corr-1");
    telemetry::set_parent(&span, Some(incoming));
    let handed_on = telemetry::traceparent_of(&span).expect("an exported span has a context");
    let handed_on = TraceParent::parse(&handed_on).expect("a valid traceparent");
    let parent = TraceParent::parse(incoming).unwrap();
    assert_eq!(handed_on.trace_id, parent.trace_id, "same trace");
    assert_ne!(handed_on.span_id, parent.span_id, "the span's own id");

    let child = tracing::info_span!(parent: &span, "publish");
    let child_context = TraceParent::parse(&telemetry::traceparent_of(&child).unwrap()).unwrap();
    assert_eq!(child_context.trace_id, parent.trace_id);

    let fresh = tracing::info_span!("unrelated");
    telemetry::set_parent(&fresh, Some("garbage"));
    let fresh = TraceParent::parse(&telemetry::traceparent_of(&fresh).unwrap()).unwrap();
    assert_ne!(fresh.trace_id, parent.trace_id, "a malformed traceparent starts a new trace");
}
