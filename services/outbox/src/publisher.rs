//! The AMQP side of the relay: one connection, one channel in confirm mode,
//! batches published with every confirm in flight together.

use std::{task::Poll, time::Duration};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::ownership::PendingRow;

/// What the broker said of one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Confirmed and routed: the row can go.
    Confirmed,
    /// Refused (nack) or unroutable (returned under `mandatory`): the row stays, with this reason.
    Rejected(String),
    /// No answer (the channel failed): the row stays and is sent again.
    Unknown,
}

/// A published batch whose confirms are still on their way.
pub(crate) struct InFlight {
    confirms: Vec<PublisherConfirm>,
    broken: Option<String>,
    rows: usize,
    /// With OpenTelemetry, the context (`traceparent`) of each row's publish
    /// span; empty without.
    contexts: Vec<Option<String>>,
}

impl InFlight {
    /// The publish spans' contexts, for the work that follows on each row
    /// after its publish (marking it done); empty without OpenTelemetry.
    pub(crate) fn take_contexts(&mut self) -> Vec<Option<String>> {
        std::mem::take(&mut self.contexts)
    }

    /// Waits for every confirm. The outcomes match the published rows;
    /// `Some(reason)` means the channel broke (rows without an answer are `Unknown`).
    pub(crate) async fn settle(self, timeout: Duration) -> (Vec<Outcome>, Option<String>) {
        let Self { confirms, mut broken, rows, .. } = self;
        let mut outcomes: Vec<Outcome> = match tokio::time::timeout(timeout, join_all(confirms)).await {
            Ok(results) => results
                .into_iter()
                .map(|result| match result {
                    Ok(Confirmation::Ack(None)) => Outcome::Confirmed,
                    Ok(Confirmation::Ack(Some(returned))) => {
                        Outcome::Rejected(format!("unroutable: {} {}", returned.reply_code, returned.reply_text))
                    }
                    Ok(Confirmation::Nack(_)) => Outcome::Rejected("negatively acknowledged by the broker".into()),
                    Ok(Confirmation::NotRequested) => Outcome::Unknown,
                    Err(err) => {
                        broken.get_or_insert_with(|| format!("confirm failed: {err}"));
                        Outcome::Unknown
                    }
                })
                .collect(),
            Err(_) => {
                broken.get_or_insert_with(|| format!("no confirm within {timeout:?}"));
                Vec::new()
            }
        };
        outcomes.resize_with(rows, || Outcome::Unknown);
        (outcomes, broken)
    }
}

/// Publishes started together; see [`Publisher::publish`].
const PUBLISH_CHUNK: usize = 100;

pub(crate) struct Publisher {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects to a node of `urls` (see [`infra::amqp::connect`]), opens a
    /// confirm-mode channel and declares `exchanges` (durable topic).
    pub(crate) async fn connect(urls: &str, name: &str, exchanges: &[String]) -> anyhow::Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        let connection = infra::amqp::connect(urls, properties).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        for exchange in exchanges {
            channel
                .exchange_declare(
                    ShortString::from(exchange.as_str()),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Self { connection, channel })
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes every row without waiting; the returned batch settles once
    /// the broker has answered them all.
    pub(crate) async fn publish(&self, rows: &[PendingRow], app_id: &str) -> InFlight {
        // lapin's publish future resolves once its I/O thread has written the
        // frames: awaiting them one by one costs a thread hand-off per message
        // (about 5,000 messages/s on a busy 2-core machine). All of a batch's
        // publishes are therefore driven together; polling them in row order
        // hands their frames to the channel, and numbers their confirms, in
        // row order, which keeps each aggregate's events in sequence.
        // With OpenTelemetry: a producer span per message, child of the span
        // that wrote the row (its stored `traceparent`), open until the batch is
        // written; the message carries the producer span's context, so the
        // consumer's span is its child.
        let spans: Vec<tracing::Span> = rows.iter().map(publish_span).collect();
        let contexts: Vec<Option<String>> = spans.iter().map(telemetry::traceparent_of).collect();
        let mut results: Vec<Option<Result<PublisherConfirm, lapin::Error>>> = Vec::with_capacity(rows.len());
        // A hundred at a time: each publish future holds its frames until
        // the I/O loop has written them, and a whole batch of them at once is
        // what set the relay's peak memory.
        for (chunk, offset) in rows.chunks(PUBLISH_CHUNK).zip((0..).step_by(PUBLISH_CHUNK)) {
            let mut pending: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let traceparent = contexts.get(offset + i).cloned().flatten();
                    Box::pin(self.channel.basic_publish(
                        ShortString::from(row.exchange.as_str()),
                        ShortString::from(row.routing_key.as_str()),
                        BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                        &row.payload,
                        properties(row, app_id, traceparent),
                    ))
                })
                .collect();
            let mut done: Vec<Option<Result<PublisherConfirm, lapin::Error>>> = chunk.iter().map(|_| None).collect();
            std::future::poll_fn(|cx| {
                let mut all = true;
                for (future, result) in pending.iter_mut().zip(done.iter_mut()) {
                    if result.is_none() {
                        match future.as_mut().poll(cx) {
                            Poll::Ready(outcome) => *result = Some(outcome),
                            Poll::Pending => all = false,
                        }
                    }
                }
                if all { Poll::Ready(()) } else { Poll::Pending }
            })
            .await;
            results.extend(done);
        }
        drop(spans);

        let mut confirms = Vec::with_capacity(rows.len());
        let mut broken = None;
        for result in results.into_iter().flatten() {
            match result {
                // After a failure, later confirms prove nothing about order: drop them.
                Ok(confirm) if broken.is_none() => confirms.push(confirm),
                Ok(_) => {}
                Err(err) => {
                    broken.get_or_insert_with(|| format!("publish failed: {err}"));
                }
            }
        }
        InFlight { confirms, broken, rows: rows.len(), contexts }
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("relay stopping")).await;
        let _ = self.connection.close(200, ShortString::from("relay stopping")).await;
    }
}

fn publish_span(row: &PendingRow) -> tracing::Span {
    let header = |name: &str| row.headers.get(name).map(String::as_str);
    telemetry::amqp::publish_span(&telemetry::amqp::Message {
        exchange: &row.exchange,
        routing_key: &row.routing_key,
        message_id: &row.event_id.to_string(),
        correlation_id: header(telemetry::correlation::HEADER),
        trace: telemetry::propagation::Incoming {
            traceparent: header(telemetry::tracecontext::HEADER),
            tracestate: header(telemetry::propagation::TRACESTATE),
        },
    })
}

/// The message's properties; `traceparent`, when given, replaces the row's.
fn properties(row: &PendingRow, app_id: &str, traceparent: Option<String>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in row.headers.iter() {
        headers.insert(ShortString::from(key.as_str()), AMQPValue::LongString(LongString::from(value.as_str())));
    }
    if let Some(traceparent) = traceparent {
        headers.insert(
            ShortString::from(telemetry::tracecontext::HEADER),
            AMQPValue::LongString(LongString::from(traceparent)),
        );
    }
    headers.insert(
        ShortString::from("x-aggregate-id"),
        AMQPValue::LongString(LongString::from(row.aggregate_id.as_str())),
    );
    headers.insert(ShortString::from("x-outbox-seq"), AMQPValue::LongLongInt(row.id));
    // Commit time to the millisecond, for consumers' end-to-end lag (the
    // `timestamp` property has whole seconds only).
    headers.insert(ShortString::from("x-occurred-at"), AMQPValue::LongLongInt(row.created_at.timestamp_millis()));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(row.content_type.as_str()))
        .with_type(ShortString::from(row.message_type.as_str()))
        .with_message_id(ShortString::from(row.event_id.to_string()))
        .with_timestamp(row.created_at.timestamp().max(0) as u64)
        .with_app_id(ShortString::from(app_id));
    if let Some(correlation) = row.headers.get(telemetry::correlation::HEADER) {
        properties = properties.with_correlation_id(ShortString::from(correlation.as_str()));
    }
    properties.with_headers(headers)
}
