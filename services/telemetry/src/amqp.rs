//! The messaging spans of RabbitMQ messages, as OpenTelemetry's messaging
//! conventions describe them: the relay's `publish` producer span and the
//! inbox's `process` consumer span, both naming the exchange the message was
//! published to as `messaging.destination.name` and its routing key as
//! `messaging.rabbitmq.destination.routing_key`. The consumer span continues
//! the trace the message carries (its `traceparent`, which the producer span
//! set), so one order is one trace across services.

use tracing::Span;

use crate::{
    otel_active,
    propagation::{self, Incoming},
};

/// `messaging.system`.
pub const SYSTEM: &str = "rabbitmq";

/// What AMQP names the default exchange, which has the empty name.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// One message as its spans describe it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Message<'a> {
    /// The exchange it is (was) published to.
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// `messaging.message.id`: the AMQP `message_id`, Pulse's event id.
    pub message_id: &'a str,
    pub correlation_id: Option<&'a str>,
    /// The trace context the message carries (consumer) or its row stored (producer).
    pub trace: Incoming<'a>,
}

impl Message<'_> {
    fn destination(&self) -> &str {
        if self.exchange.is_empty() { DEFAULT_EXCHANGE } else { self.exchange }
    }
}

/// The producer span of publishing `message`, child of the context it
/// carries: hand [`propagation::traceparent_of`] of it on in the message.
/// [`Span::none`] while spans are not exported (it would only cost).
pub fn publish_span(message: &Message<'_>) -> Span {
    if !otel_active() {
        return Span::none();
    }
    let destination = message.destination();
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        messaging.system = SYSTEM,
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = message.routing_key,
        messaging.message.id = message.message_id,
        correlation_id = message.correlation_id.unwrap_or(""),
    );
    propagation::continue_trace(&span, message.trace);
    span
}

/// The consumer span of processing one delivery of `message` from `queue`
/// (its `attempt`th, from 1), continuing the trace the message carries; every
/// log line about the message carries its fields. Made whether or not spans
/// are exported: without export its `trace_id` and `span_id` fields still name
/// the message's trace (when it carries one) for the log lines.
pub fn continue_trace(message: &Message<'_>, queue: &str, attempt: u32) -> Span {
    let destination = message.destination();
    let span = tracing::info_span!(
        "inbox_message",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        messaging.system = SYSTEM,
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = message.routing_key,
        messaging.message.id = message.message_id,
        queue,
        event_id = message.message_id,
        correlation_id = message.correlation_id.unwrap_or(""),
        attempt,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    propagation::continue_trace(&span, message.trace);
    span
}
