//! The console's side of the broker: taking the dead-letter queue into the
//! table, and republishing a stored dead letter to its source queue.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, DeadLetterRow, NewDeadLetter};
use crate::{headers, topology::Topology};

/// Header a replayed copy carries: the id of the dead letter it came from, so
/// that if it fails again its attempts are counted on.
pub const REPLAY_OF: &str = "x-replay-of";

/// How long a replayed copy may wait for its publisher confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Most messages one call takes from the queue; the rest wait for the next call.
const MAX_INGEST: usize = 10_000;

/// A confirming channel on a connection of its own, closed when dropped.
pub(crate) struct ConsoleChannel {
    connection: Connection,
    pub(crate) channel: Channel,
}

impl ConsoleChannel {
    pub(crate) async fn open(amqp_url: &SecretString, topology: &Topology) -> anyhow::Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name(LongString::from("inbox-console"));
        let connection = infra::amqp::connect(amqp_url.expose_secret(), properties).await.context("cannot connect")?;
        topology.declare(&connection).await.context("cannot declare the topology")?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { connection, channel })
    }

    pub(crate) async fn close(self) {
        self.channel.close(200, ShortString::from("console done")).await.ok();
        self.connection.close(200, ShortString::from("console done")).await.ok();
    }
}

/// Moves what waits in the dead-letter queue into the table: each message is
/// acknowledged only once its row is committed, so an interruption leaves it
/// in the queue (or, if the ack is lost, stores it once: see the fingerprint).
pub(crate) async fn ingest(pool: &PgPool, channel: &Channel, topology: &Topology) -> anyhow::Result<u64> {
    let mut taken = 0;
    while taken < MAX_INGEST as u64 {
        let Some(message) =
            channel.basic_get(ShortString::from(topology.dead_letter.as_str()), BasicGetOptions::default()).await?
        else {
            break;
        };
        let delivery = message.delivery;
        let new = dead_letter(&delivery.properties, delivery.data.clone(), Utc::now());
        store::insert(pool, &new).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        taken += 1;
    }
    if taken > 0 {
        tracing::info!(taken, queue = %topology.dead_letter, "took dead letters into the console");
    }
    Ok(taken)
}

/// The row for a message from the dead-letter queue, read from its headers.
pub(crate) fn dead_letter(properties: &BasicProperties, payload: Vec<u8>, now: DateTime<Utc>) -> NewDeadLetter {
    let table = properties.headers().as_ref();
    let text = |name| headers::text(table, name).unwrap_or_default();
    let raw_at = text(headers::DEAD_LETTERED_AT);
    let dead_lettered_at = DateTime::parse_from_rfc3339(&raw_at).map_or(now, |at| at.with_timezone(&Utc));
    let message_id = properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
    let attempts = headers::attempts_made(table).min(i32::MAX as u32) as i32;
    let reason = Some(text(headers::REASON)).filter(|r| !r.is_empty()).unwrap_or_else(|| "unknown".to_owned());
    let correlation_id = Some(text(headers::CORRELATION_ID))
        .filter(|c| !c.is_empty())
        .or_else(|| properties.correlation_id().as_ref().map(|c| c.as_str().to_owned()))
        .unwrap_or_default();
    // Without the time the inbox wrote there is nothing to tell two copies
    // apart from two failures: each take is then its own row.
    let fingerprint = if raw_at.is_empty() {
        Uuid::new_v4().to_string()
    } else {
        format!("{message_id}|{raw_at}|{attempts}|{reason}")
    };
    NewDeadLetter {
        fingerprint,
        message_id,
        message_type: properties.kind().as_ref().map(|k| k.as_str().to_owned()).unwrap_or_default(),
        correlation_id,
        reason,
        error: text(headers::ERROR),
        attempts,
        source_queue: text(headers::SOURCE_QUEUE),
        dead_lettered_at,
        headers: headers_json(table),
        properties: properties_json(properties),
        payload,
        replay_of: Uuid::parse_str(&text(REPLAY_OF)).ok(),
    }
}

/// Republishes `row` to its source queue (the consumer's main queue) with its
/// original properties and headers, less the dead-letter ones, plus
/// [`REPLAY_OF`]; returns once the broker confirmed the copy.
pub(crate) async fn republish(channel: &Channel, topology: &Topology, row: &DeadLetterRow) -> anyhow::Result<()> {
    let original = headers_from_json(&row.headers);
    let mut replayed = headers::replay_headers(Some(&original));
    replayed.insert(ShortString::from(REPLAY_OF), AMQPValue::LongString(LongString::from(row.id.to_string())));
    let properties = headers::forward_properties(&properties_from_json(&row.properties), replayed);
    // Only the consumer's main queue: a message the broker moved via `.poison`
    // names that queue as its source, and nothing there would process it.
    let queue = &topology.main;
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue.as_str()),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            &row.payload,
            properties,
        )
        .await?;
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await.context("no publisher confirm")?? {
        Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("the broker did not take the replayed copy: {other:?}"),
    }
}

/// Headers as JSON: strings as strings, numbers as numbers, booleans as
/// booleans; anything else as its debug text (shown, and republished as text).
pub(crate) fn headers_json(table: Option<&FieldTable>) -> Value {
    let map: Map<String, Value> = table
        .map(|t| t.inner().iter().map(|(k, v)| (k.as_str().to_owned(), value_json(v))).collect())
        .unwrap_or_default();
    Value::Object(map)
}

fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Timestamp(v) => json!(v),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        other => json!(format!("{other:?}")),
    }
}

pub(crate) fn headers_from_json(headers: &Value) -> FieldTable {
    let mut map = BTreeMap::new();
    for (name, value) in headers.as_object().into_iter().flatten() {
        let value = match value {
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        map.insert(ShortString::from(name.as_str()), value);
    }
    FieldTable::from(map)
}

fn properties_json(p: &BasicProperties) -> Value {
    let short = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    json!({
        "message_id": short(p.message_id()),
        "type": short(p.kind()),
        "correlation_id": short(p.correlation_id()),
        "content_type": short(p.content_type()),
        "content_encoding": short(p.content_encoding()),
        "reply_to": short(p.reply_to()),
        "app_id": short(p.app_id()),
        "cluster_id": short(p.cluster_id()),
        "timestamp": p.timestamp(),
        "priority": p.priority(),
    })
}

fn properties_from_json(value: &Value) -> BasicProperties {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(ShortString::from);
    let mut p = BasicProperties::default();
    fn set(
        p: BasicProperties,
        v: Option<ShortString>,
        f: fn(BasicProperties, ShortString) -> BasicProperties,
    ) -> BasicProperties {
        match v {
            Some(v) => f(p, v),
            None => p,
        }
    }
    p = set(p, text("message_id"), BasicProperties::with_message_id);
    p = set(p, text("type"), BasicProperties::with_type);
    p = set(p, text("correlation_id"), BasicProperties::with_correlation_id);
    p = set(p, text("content_type"), BasicProperties::with_content_type);
    p = set(p, text("content_encoding"), BasicProperties::with_content_encoding);
    p = set(p, text("reply_to"), BasicProperties::with_reply_to);
    p = set(p, text("app_id"), BasicProperties::with_app_id);
    p = set(p, text("cluster_id"), BasicProperties::with_cluster_id);
    if let Some(timestamp) = value.get("timestamp").and_then(Value::as_u64) {
        p = p.with_timestamp(timestamp);
    }
    if let Some(priority) = value.get("priority").and_then(Value::as_u64) {
        p = p.with_priority(priority.min(255) as u8);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_table() {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("traceparent"), AMQPValue::LongString(LongString::from("00-abc-def-01")));
        table.insert(ShortString::from("x-occurred-at"), AMQPValue::LongLongInt(1_765_000_000_000));
        table.insert(ShortString::from("x-flag"), AMQPValue::Boolean(true));
        assert_eq!(headers_from_json(&headers_json(Some(&table))), table);
    }

    #[test]
    fn properties_survive_the_table() {
        let p = BasicProperties::default()
            .with_message_id(ShortString::from("m-1"))
            .with_type(ShortString::from("pulse.events.v1.OrderCreated"))
            .with_correlation_id(ShortString::from("c-1"))
            .with_content_type(ShortString::from(headers::CONTENT_TYPE))
            .with_timestamp(1_765_000_000);
        assert_eq!(properties_from_json(&properties_json(&p)), p);
    }
}
