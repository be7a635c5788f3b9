//! The headers the inbox reads and writes, and the pure rules behind retries:
//! which tier a failed message goes to, what a dead-lettered copy carries, what
//! a replayed copy loses.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Failed processing attempts so far; absent on a message never tried.
pub const ATTEMPT: &str = "x-attempt";
/// Why a message was dead-lettered, one of [`DeadLetterReason`].
pub const REASON: &str = "x-dead-letter-reason";
/// The last error, as text.
pub const ERROR: &str = "x-error";
/// The queue the message was consumed from when it was dead-lettered.
pub const SOURCE_QUEUE: &str = "x-source-queue";
/// When it was dead-lettered, RFC 3339 in UTC.
pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// Correlation id, kept on every copy.
pub const CORRELATION_ID: &str = telemetry::correlation::HEADER;
/// When the event was committed, in milliseconds since the epoch (set by the
/// outbox relay); the AMQP `timestamp` property (whole seconds) is the fallback.
pub const OCCURRED_AT: &str = "x-occurred-at";

/// The only `content_type` the inbox decodes: a protobuf payload.
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// Headers the broker adds when it dead-letters a message out of a queue, or
/// (`x-delivery-count`) redelivers it from a quorum queue; dropped on
/// republish so they do not pile up on every round trip.
const BROKER_DEATH_HEADERS: [&str; 8] = [
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// Longest `x-error` kept, so a huge error cannot push a frame past the broker's limits.
const MAX_ERROR_LEN: usize = 2000;

/// Why a message went to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The payload is not a valid protobuf message of the expected type.
    DecodeError,
    /// The AMQP `type` property is missing or names another message.
    UnknownType,
    /// The AMQP `message_id` is missing or not a UUID.
    InvalidMessageId,
    /// The decoded event failed the handler's validation.
    ValidationFailed,
    /// The handler said the event can never succeed.
    HandlerRejected,
    /// Every allowed attempt failed with a transient error.
    MaxAttemptsExceeded,
    /// The payload's event id is not the AMQP `message_id`: a copy under
    /// another id would escape deduplication, so neither is trusted.
    EventIdMismatch,
    /// The AMQP `content_type` is missing or not [`CONTENT_TYPE`].
    UnsupportedContentType,
    /// The body is larger than the consumer accepts.
    TooLarge,
    /// The broker gave up on it: delivered more than the main queue's delivery
    /// limit without an acknowledgement (each delivery crashed its consumer).
    DeliveryLimit,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DecodeError => "decode_error",
            Self::UnknownType => "unknown_type",
            Self::InvalidMessageId => "invalid_message_id",
            Self::ValidationFailed => "validation_failed",
            Self::HandlerRejected => "handler_rejected",
            Self::MaxAttemptsExceeded => "max_attempts_exceeded",
            Self::EventIdMismatch => "event_id_mismatch",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::TooLarge => "too_large",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// What to do with a message whose attempt number `attempts_made` just failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Park it in retry tier `tier` for `delay`.
    Retry {
        tier: usize,
        delay: Duration,
    },
    DeadLetter,
}

/// The retry tier that follows `attempts_made` failed attempts: tiers in
/// order, the last one repeating. None before any failure or without tiers.
pub(crate) fn tier_for(attempts_made: u32, delays: &[Duration]) -> Option<(usize, Duration)> {
    let last = delays.len().checked_sub(1)?;
    let index = (attempts_made.checked_sub(1)? as usize).min(last);
    Some((index, delays[index]))
}

pub(crate) fn next_step(attempts_made: u32, max_attempts: u32, delays: &[Duration]) -> Next {
    if attempts_made >= max_attempts {
        return Next::DeadLetter;
    }
    match tier_for(attempts_made, delays) {
        Some((tier, delay)) => Next::Retry { tier, delay },
        None => Next::DeadLetter,
    }
}

/// The event's commit time in milliseconds since the epoch, from
/// [`OCCURRED_AT`] or else the `timestamp` property.
pub fn occurred_at_millis(properties: &BasicProperties) -> Option<i64> {
    let header = properties.headers().as_ref().and_then(|h| h.inner().get(OCCURRED_AT)).and_then(|value| match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().and_then(|s| s.trim().parse().ok()),
        _ => None,
    });
    header.or_else(|| properties.timestamp().and_then(|t| i64::try_from(t).ok()).map(|t| t.saturating_mul(1000)))
}

/// Reads `x-attempt` leniently (any integer or numeric string); a missing or
/// nonsensical value counts as no attempt so far.
pub fn attempts_made(headers: Option<&FieldTable>) -> u32 {
    let Some(value) = headers.and_then(|h| h.inner().get(ATTEMPT)) else { return 0 };
    let number: Option<i128> = match value {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some((*v).into()),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().and_then(|s| s.trim().parse().ok()),
        _ => None,
    };
    number.map_or(0, |n| n.clamp(0, i128::from(u32::MAX)) as u32)
}

/// The `x-death` entries (queue, reason) the broker wrote, most recent first.
pub(crate) fn deaths(headers: Option<&FieldTable>) -> Vec<(String, String)> {
    let Some(AMQPValue::FieldArray(entries)) = headers.and_then(|h| h.inner().get("x-death")) else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(entry) => {
                let entry = Some(entry);
                Some((text(entry, "queue")?, text(entry, "reason")?))
            }
            _ => None,
        })
        .collect()
}

/// Failed attempts before this delivery, as Pulse counted them: `x-attempt`
/// is believed only on a copy the broker dead-lettered out of one of our
/// retry tiers (its `x-death` says so), since the inbox rewrote `x-attempt`
/// before parking it there. On any other message, straight from a publisher,
/// the header is not ours and a forged one must not shorten its attempts.
pub(crate) fn trusted_attempts(headers: Option<&FieldTable>, from_retry_tier: impl Fn(&str) -> bool) -> u32 {
    let returned = deaths(headers).iter().any(|(queue, reason)| reason == "expired" && from_retry_tier(queue));
    if returned { attempts_made(headers) } else { 0 }
}

/// A text header (long or short string), if present and UTF-8.
pub fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn without(headers: Option<&FieldTable>, drop: &[&str]) -> std::collections::BTreeMap<ShortString, AMQPValue> {
    let mut map = headers.map(|h| h.inner().clone()).unwrap_or_default();
    map.retain(|key, _| !drop.contains(&key.as_str()));
    map
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The original headers with `x-attempt` set, for a copy parked in a retry tier.
pub(crate) fn retry_headers(original: Option<&FieldTable>, attempts_made: u32) -> FieldTable {
    let mut map = without(original, &BROKER_DEATH_HEADERS);
    map.insert(ShortString::from(ATTEMPT), AMQPValue::LongLongInt(attempts_made.into()));
    FieldTable::from(map)
}

/// The original headers plus the dead-letter headers.
pub(crate) fn dead_letter_headers(
    original: Option<&FieldTable>,
    attempts_made: u32,
    reason: DeadLetterReason,
    error: &str,
    source_queue: &str,
    at: DateTime<Utc>,
) -> FieldTable {
    let mut map = without(original, &BROKER_DEATH_HEADERS);
    let error = match error.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => &error[..cut],
        None => error,
    };
    map.insert(ShortString::from(ATTEMPT), AMQPValue::LongLongInt(attempts_made.into()));
    map.insert(ShortString::from(REASON), long(reason.as_str()));
    map.insert(ShortString::from(ERROR), long(error));
    map.insert(ShortString::from(SOURCE_QUEUE), long(source_queue));
    map.insert(ShortString::from(DEAD_LETTERED_AT), long(&at.to_rfc3339_opts(SecondsFormat::Millis, true)));
    FieldTable::from(map)
}

/// The headers of a replayed message: the original ones, as first published.
pub(crate) fn replay_headers(original: Option<&FieldTable>) -> FieldTable {
    let mut drop = vec![ATTEMPT, REASON, ERROR, SOURCE_QUEUE, DEAD_LETTERED_AT];
    drop.extend(BROKER_DEATH_HEADERS);
    FieldTable::from(without(original, &drop))
}

/// The original properties with new headers, made persistent. `expiration` is
/// dropped so a copy cannot silently expire out of the dead-letter queue, and
/// `user_id` because the broker refuses a user id other than our own login.
pub(crate) fn forward_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let copy =
        |p: BasicProperties, value: &Option<ShortString>, set: fn(BasicProperties, ShortString) -> BasicProperties| {
            match value {
                Some(v) => set(p, v.clone()),
                None => p,
            }
        };
    properties = copy(properties, original.content_type(), BasicProperties::with_content_type);
    properties = copy(properties, original.content_encoding(), BasicProperties::with_content_encoding);
    properties = copy(properties, original.correlation_id(), BasicProperties::with_correlation_id);
    properties = copy(properties, original.reply_to(), BasicProperties::with_reply_to);
    properties = copy(properties, original.message_id(), BasicProperties::with_message_id);
    properties = copy(properties, original.kind(), BasicProperties::with_type);
    properties = copy(properties, original.app_id(), BasicProperties::with_app_id);
    properties = copy(properties, original.cluster_id(), BasicProperties::with_cluster_id);
    if let Some(priority) = original.priority() {
        properties = properties.with_priority(*priority);
    }
    if let Some(timestamp) = original.timestamp() {
        properties = properties.with_timestamp(*timestamp);
    }
    properties
}

#[cfg(test)]
mod tests;
