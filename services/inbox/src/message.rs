//! From a raw delivery to something the handler can take, or to the reason it
//! never will.

use lapin::{BasicProperties, message::Delivery};
use platform::tracecontext::TraceParent;
use tracing::Span;
use uuid::Uuid;

use crate::{
    handler::{Handler, MessageContext},
    headers::{self, DeadLetterReason},
};

/// One delivery on its way through a batch.
pub(crate) struct Item<E> {
    pub(crate) delivery: Delivery,
    /// `x-attempt` as received: failed attempts before this one.
    pub(crate) attempts_before: u32,
    /// Carries `event_id` and `correlation_id` to every log line about this message.
    pub(crate) span: Span,
    pub(crate) parsed: Option<(E, MessageContext)>,
    pub(crate) outcome: Outcome,
}

/// Where a delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Valid and not yet applied.
    Pending,
    /// Applied and committed.
    Processed,
    /// Already applied by an earlier copy; nothing written.
    Duplicate,
    /// Failed for now; goes to the next retry tier.
    Retry(String),
    /// Goes to the dead-letter queue.
    DeadLetter(DeadLetterReason, String),
}

impl<E> Item<E> {
    pub(crate) fn event_id(&self) -> Option<Uuid> {
        self.parsed.as_ref().map(|(_, ctx)| ctx.event_id)
    }
}

/// Decodes and checks a delivery for `H`, opening its log span.
pub(crate) fn prepare<H: Handler>(delivery: Delivery, queue: &str) -> Item<H::Event> {
    let properties = &delivery.properties;
    let attempts_before = headers::attempts_made(properties.headers().as_ref());
    let correlation_id = headers::text(properties.headers().as_ref(), headers::CORRELATION_ID)
        .or_else(|| properties.correlation_id().as_ref().map(|c| c.as_str().to_owned()));
    let event_id = properties.message_id().as_ref().map_or("", |id| id.as_str());
    let traceparent = headers::text(properties.headers().as_ref(), platform::tracecontext::HEADER);
    let otel = platform::telemetry::otel_active();
    // Without OpenTelemetry the log lines still name the order's trace: the
    // message's generated `traceparent` with a span id for this processing.
    let generated = traceparent.as_deref().filter(|_| !otel).and_then(TraceParent::parse).map(TraceParent::child);
    let (trace_id, span_id) = generated.map(|t| (t.trace_id_hex(), format!("{:016x}", t.span_id))).unzip();
    let span = tracing::info_span!(
        "inbox_message",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.message.id = event_id,
        queue,
        event_id,
        correlation_id = correlation_id.as_deref().unwrap_or(""),
        attempt = attempts_before.saturating_add(1),
        trace_id = trace_id.as_deref(),
        span_id = span_id.as_deref(),
    );
    if otel {
        // The processing span is a child of the relay's publish span (the
        // message's `traceparent`): one trace from CreateOrder on.
        platform::telemetry::set_parent(&span, traceparent.as_deref());
        if let Some(own) = platform::telemetry::traceparent_of(&span).and_then(|t| TraceParent::parse(&t)) {
            span.record("trace_id", own.trace_id_hex());
            span.record("span_id", format!("{:016x}", own.span_id));
        }
    }
    let (parsed, outcome) = match parse::<H::Event>(properties, &delivery.data, H::MESSAGE_TYPE, H::validate) {
        Ok((event, event_id)) => {
            let ctx = MessageContext {
                event_id,
                correlation_id,
                attempt: attempts_before.saturating_add(1),
                redelivered: delivery.redelivered,
                span: span.clone(),
            };
            (Some((event, ctx)), Outcome::Pending)
        }
        Err((reason, error)) => (None, Outcome::DeadLetter(reason, error)),
    };
    Item { delivery, attempts_before, span, parsed, outcome }
}

/// The checks, in order: a UUID `message_id`, the expected `type`, a payload
/// that decodes, an event that validates.
pub(crate) fn parse<E: prost::Message + Default>(
    properties: &BasicProperties,
    data: &[u8],
    expected_type: &str,
    validate: fn(&E) -> Result<(), String>,
) -> Result<(E, Uuid), (DeadLetterReason, String)> {
    let event_id = match properties.message_id() {
        None => return Err((DeadLetterReason::InvalidMessageId, "message has no message_id".into())),
        Some(raw) => Uuid::parse_str(raw.as_str()).map_err(|err| {
            (DeadLetterReason::InvalidMessageId, format!("message_id {:?} is not a UUID: {err}", raw.as_str()))
        })?,
    };
    match properties.kind() {
        Some(kind) if kind.as_str() == expected_type => {}
        Some(kind) => {
            return Err((DeadLetterReason::UnknownType, format!("type {:?} is not {expected_type}", kind.as_str())));
        }
        None => return Err((DeadLetterReason::UnknownType, "message has no type property".into())),
    }
    let event =
        E::decode(data).map_err(|err| (DeadLetterReason::DecodeError, format!("payload does not decode: {err}")))?;
    validate(&event).map_err(|err| (DeadLetterReason::ValidationFailed, err))?;
    Ok((event, event_id))
}

#[cfg(test)]
mod tests {
    use lapin::types::ShortString;
    use prost::Message;

    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Ping {
        #[prost(string, tag = "1")]
        name: String,
    }

    fn named(ping: &Ping) -> Result<(), String> {
        if ping.name.is_empty() { Err("name is required".into()) } else { Ok(()) }
    }

    fn props(id: Option<&str>, kind: Option<&str>) -> BasicProperties {
        let mut p = BasicProperties::default();
        if let Some(id) = id {
            p = p.with_message_id(ShortString::from(id));
        }
        if let Some(kind) = kind {
            p = p.with_type(ShortString::from(kind));
        }
        p
    }

    #[test]
    fn sorts_bad_messages_by_reason() {
        let id = Uuid::new_v4().to_string();
        let good = Ping { name: "a".into() }.encode_to_vec();
        let empty = Ping { name: String::new() }.encode_to_vec();
        let reason =
            |p: BasicProperties, data: &[u8]| parse::<Ping>(&p, data, "test.Ping", named).map(|_| ()).unwrap_err().0;
        assert_eq!(reason(props(None, Some("test.Ping")), &good), DeadLetterReason::InvalidMessageId);
        assert_eq!(reason(props(Some("42"), Some("test.Ping")), &good), DeadLetterReason::InvalidMessageId);
        assert_eq!(reason(props(Some(&id), None), &good), DeadLetterReason::UnknownType);
        assert_eq!(reason(props(Some(&id), Some("test.Pong")), &good), DeadLetterReason::UnknownType);
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), b"\xff\xff\xff"), DeadLetterReason::DecodeError);
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), &empty), DeadLetterReason::ValidationFailed);
        let (ping, parsed_id) = parse::<Ping>(&props(Some(&id), Some("test.Ping")), &good, "test.Ping", named).unwrap();
        assert_eq!((ping.name.as_str(), parsed_id.to_string()), ("a", id));
    }
}
