//! From a raw delivery to something the handler can take, or to the reason it
//! never will.

use lapin::{BasicProperties, message::Delivery};
use telemetry::propagation::Incoming;
use tracing::Span;
use uuid::Uuid;

use crate::{
    handler::{Handler, MessageContext},
    headers::{self, DeadLetterReason},
    topology::Topology,
};

/// One delivery on its way through a batch.
pub(crate) struct Item<E> {
    pub(crate) delivery: Delivery,
    /// Failed attempts before this one: `x-attempt` on a copy back from a
    /// retry tier, else 0.
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

/// What a delivery must satisfy before its event reaches the handler.
pub(crate) struct Checks<E> {
    /// The AMQP `type` properties accepted.
    pub(crate) message_types: &'static [&'static str],
    pub(crate) max_bytes: usize,
    /// Decodes a payload of one of the accepted types.
    pub(crate) decode: fn(&str, &[u8]) -> Result<E, prost::DecodeError>,
    /// The event id the payload carries.
    pub(crate) event_id: fn(&E) -> &str,
    pub(crate) validate: fn(&E) -> Result<(), String>,
}

impl<E> Checks<E> {
    pub(crate) fn of<H: Handler<Event = E>>(max_bytes: usize) -> Self {
        Self {
            message_types: H::MESSAGE_TYPES,
            max_bytes,
            decode: H::decode,
            event_id: H::event_id,
            validate: H::validate,
        }
    }
}

/// Decodes and checks a delivery for `H`, opening its log span.
pub(crate) fn prepare<H: Handler>(delivery: Delivery, topology: &Topology, max_bytes: usize) -> Item<H::Event> {
    let queue = topology.main.as_str();
    let properties = &delivery.properties;
    let attempts_before =
        headers::trusted_attempts(properties.headers().as_ref(), |queue| topology.is_retry_queue(queue));
    let correlation_id = headers::text(properties.headers().as_ref(), headers::CORRELATION_ID)
        .or_else(|| properties.correlation_id().as_ref().map(|c| c.as_str().to_owned()));
    let event_id = properties.message_id().as_ref().map_or("", |id| id.as_str());
    let traceparent = headers::text(properties.headers().as_ref(), telemetry::tracecontext::HEADER);
    let tracestate = headers::text(properties.headers().as_ref(), telemetry::propagation::TRACESTATE);
    let message = telemetry::amqp::Message {
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
        message_id: event_id,
        correlation_id: correlation_id.as_deref(),
        trace: Incoming { traceparent: traceparent.as_deref(), tracestate: tracestate.as_deref() },
    };
    let span = telemetry::amqp::continue_trace(&message, queue, attempts_before.saturating_add(1));
    let (parsed, outcome) = match parse(properties, &delivery.data, &Checks::of::<H>(max_bytes)) {
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

/// The checks, in order: a body within the size limit (before anything is
/// decoded), a UUID `message_id`, the expected `type`, the protobuf
/// `content_type`, a payload that decodes, a payload event id that is a UUID
/// and the `message_id`, an event that validates.
pub(crate) fn parse<E>(
    properties: &BasicProperties,
    data: &[u8],
    checks: &Checks<E>,
) -> Result<(E, Uuid), (DeadLetterReason, String)> {
    if data.len() > checks.max_bytes {
        let error = format!("body of {} bytes is over the limit of {} bytes", data.len(), checks.max_bytes);
        return Err((DeadLetterReason::TooLarge, error));
    }
    let message_id = match properties.message_id() {
        None => return Err((DeadLetterReason::InvalidMessageId, "message has no message_id".into())),
        Some(raw) => Uuid::try_parse(raw.as_str()).map_err(|err| {
            (DeadLetterReason::InvalidMessageId, format!("message_id {:?} is not a UUID: {err}", raw.as_str()))
        })?,
    };
    let message_type = match properties.kind() {
        Some(kind) if checks.message_types.contains(&kind.as_str()) => kind.as_str(),
        Some(kind) => {
            let expected = checks.message_types.join(" or ");
            return Err((DeadLetterReason::UnknownType, format!("type {:?} is not {expected}", kind.as_str())));
        }
        None => return Err((DeadLetterReason::UnknownType, "message has no type property".into())),
    };
    check_content_type(properties).map_err(|error| (DeadLetterReason::UnsupportedContentType, error))?;
    let event = (checks.decode)(message_type, data)
        .map_err(|err| (DeadLetterReason::DecodeError, format!("payload does not decode: {err}")))?;
    let carried = (checks.event_id)(&event);
    let event_id = Uuid::try_parse(carried).map_err(|_| {
        (DeadLetterReason::ValidationFailed, format!("event_id: {carried:?} in the payload is not a UUID"))
    })?;
    if event_id != message_id {
        let error = format!("message_id {message_id} is not the payload's event_id {event_id}");
        return Err((DeadLetterReason::EventIdMismatch, error));
    }
    (checks.validate)(&event).map_err(|err| (DeadLetterReason::ValidationFailed, err))?;
    Ok((event, event_id))
}

/// `application/x-protobuf`, in any case, parameters allowed.
fn check_content_type(properties: &BasicProperties) -> Result<(), String> {
    let Some(raw) = properties.content_type() else {
        return Err(format!("message has no content_type (expected {})", headers::CONTENT_TYPE));
    };
    let media_type = raw.as_str().split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(headers::CONTENT_TYPE) {
        Ok(())
    } else {
        Err(format!("content_type {:?} is not {}", raw.as_str(), headers::CONTENT_TYPE))
    }
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
        #[prost(string, tag = "2")]
        event_id: String,
    }

    const CHECKS: Checks<Ping> = Checks {
        message_types: &["test.Ping"],
        max_bytes: 100,
        decode: |_, data| Ping::decode(data),
        event_id: |ping| &ping.event_id,
        validate: |ping| if ping.name.is_empty() { Err("name is required".into()) } else { Ok(()) },
    };

    fn props(id: Option<&str>, kind: Option<&str>) -> BasicProperties {
        let mut p = BasicProperties::default().with_content_type(ShortString::from(headers::CONTENT_TYPE));
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
        let ping = |name: &str, event_id: &str| Ping { name: name.into(), event_id: event_id.into() }.encode_to_vec();
        let good = ping("a", &id);
        let empty = ping("", &id);
        let reason = |p: BasicProperties, data: &[u8]| parse(&p, data, &CHECKS).map(|_| ()).unwrap_err().0;
        assert_eq!(reason(props(None, Some("test.Ping")), &good), DeadLetterReason::InvalidMessageId);
        assert_eq!(reason(props(Some("42"), Some("test.Ping")), &good), DeadLetterReason::InvalidMessageId);
        assert_eq!(reason(props(Some(&id), None), &good), DeadLetterReason::UnknownType);
        assert_eq!(reason(props(Some(&id), Some("test.Pong")), &good), DeadLetterReason::UnknownType);
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), b"\xff\xff\xff"), DeadLetterReason::DecodeError);
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), &empty), DeadLetterReason::ValidationFailed);
        let other = Uuid::new_v4().to_string();
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), &ping("a", &other)), DeadLetterReason::EventIdMismatch);
        assert_eq!(reason(props(Some(&id), Some("test.Ping")), &ping("a", "")), DeadLetterReason::ValidationFailed);
        assert_eq!(
            reason(props(Some(&id), Some("test.Ping")), &ping(&"a".repeat(100), &id)),
            DeadLetterReason::TooLarge
        );
        for content_type in [None, Some("application/json"), Some("text/plain")] {
            let mut p = props(Some(&id), Some("test.Ping"));
            p = match content_type {
                Some(c) => p.with_content_type(ShortString::from(c)),
                None => BasicProperties::default()
                    .with_message_id(ShortString::from(id.as_str()))
                    .with_type(ShortString::from("test.Ping")),
            };
            assert_eq!(reason(p, &good), DeadLetterReason::UnsupportedContentType, "{content_type:?}");
        }
        let lenient = props(Some(&id), Some("test.Ping"))
            .with_content_type(ShortString::from("Application/X-Protobuf; proto=test.Ping"));
        assert!(parse(&lenient, &good, &CHECKS).is_ok());
        let (ping, parsed_id) = parse(&props(Some(&id), Some("test.Ping")), &good, &CHECKS).unwrap();
        assert_eq!((ping.name.as_str(), parsed_id.to_string()), ("a", id));
    }

    #[derive(Debug, PartialEq)]
    enum Either {
        Ping(Ping),
        Pong(Ping),
    }

    /// One queue, two types: each decodes into its own variant, a third is refused.
    #[test]
    fn takes_each_of_several_types_by_its_type_property() {
        let checks: Checks<Either> = Checks {
            message_types: &["test.Ping", "test.Pong"],
            max_bytes: 100,
            decode: |message_type, data| {
                let ping = Ping::decode(data)?;
                Ok(if message_type == "test.Pong" { Either::Pong(ping) } else { Either::Ping(ping) })
            },
            event_id: |either| match either {
                Either::Ping(ping) | Either::Pong(ping) => &ping.event_id,
            },
            validate: |_| Ok(()),
        };
        let id = Uuid::new_v4().to_string();
        let body = Ping { name: "a".into(), event_id: id.clone() }.encode_to_vec();
        let parsed = |kind| parse(&props(Some(&id), Some(kind)), &body, &checks).map(|(event, _)| event);
        assert!(matches!(parsed("test.Ping"), Ok(Either::Ping(_))));
        assert!(matches!(parsed("test.Pong"), Ok(Either::Pong(_))));
        let refused = parsed("test.Pang").unwrap_err();
        assert_eq!(refused.0, DeadLetterReason::UnknownType);
        assert!(refused.1.contains("test.Ping or test.Pong"), "{}", refused.1);
    }
}
