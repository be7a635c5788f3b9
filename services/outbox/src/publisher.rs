//! The AMQP side of the relay: one connection, one channel in confirm mode,
//! batches published with every confirm in flight together.

use std::time::Duration;

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
}

impl InFlight {
    /// Waits for every confirm. The outcomes match the published rows;
    /// `Some(reason)` means the channel broke (rows without an answer are `Unknown`).
    pub(crate) async fn settle(self, timeout: Duration) -> (Vec<Outcome>, Option<String>) {
        let Self { confirms, mut broken, rows } = self;
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

pub(crate) struct Publisher {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects, opens a confirm-mode channel and declares `exchanges` (durable topic).
    pub(crate) async fn connect(url: &str, name: &str, exchanges: &[String]) -> Result<Self, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        let connection = Connection::connect(url, properties).await?;
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
        let mut confirms = Vec::with_capacity(rows.len());
        let mut broken = None;
        for row in rows {
            let published = self
                .channel
                .basic_publish(
                    ShortString::from(row.exchange.as_str()),
                    ShortString::from(row.routing_key.as_str()),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    &row.payload,
                    properties(row, app_id),
                )
                .await;
            match published {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => {
                    broken = Some(format!("publish failed: {err}"));
                    break;
                }
            }
        }
        InFlight { confirms, broken, rows: rows.len() }
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("relay stopping")).await;
        let _ = self.connection.close(200, ShortString::from("relay stopping")).await;
    }
}

fn properties(row: &PendingRow, app_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in row.headers.iter() {
        headers.insert(ShortString::from(key.as_str()), AMQPValue::LongString(LongString::from(value.as_str())));
    }
    headers.insert(
        ShortString::from("x-aggregate-id"),
        AMQPValue::LongString(LongString::from(row.aggregate_id.as_str())),
    );
    headers.insert(ShortString::from("x-outbox-seq"), AMQPValue::LongLongInt(row.id));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(row.content_type.as_str()))
        .with_type(ShortString::from(row.message_type.as_str()))
        .with_message_id(ShortString::from(row.event_id.to_string()))
        .with_timestamp(row.created_at.timestamp().max(0) as u64)
        .with_app_id(ShortString::from(app_id));
    if let Some(correlation) = row.headers.get(platform::correlation::HEADER) {
        properties = properties.with_correlation_id(ShortString::from(correlation.as_str()));
    }
    properties.with_headers(headers)
}
