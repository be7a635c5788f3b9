//! Moving dead-lettered messages back to the main queue, once whatever made
//! them fail is fixed.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    Confirmation, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{FieldTable, LongString, ShortString},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{headers, topology::Topology};

/// Republishes up to `limit` messages (all when None) from the dead-letter
/// queue to the main queue, oldest first, and returns how many moved.
///
/// Each copy keeps its body, properties and original headers, loses the
/// dead-letter headers and starts again at attempt 1. A message is removed
/// from the dead-letter queue only after the broker confirmed its copy, so an
/// interrupted replay duplicates at worst (the inbox deduplicates). Only the
/// messages present when the replay starts are moved, so ones that fail again
/// while it runs are not replayed in a loop.
pub async fn replay_dead_letters(
    amqp_url: &SecretString,
    topology: &Topology,
    limit: Option<u64>,
) -> anyhow::Result<u64> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from("inbox-replay"));
    let connection = infra::amqp::connect(amqp_url.expose_secret(), properties).await.context("cannot connect")?;
    topology.declare(&connection).await.context("cannot declare the topology")?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let waiting = channel
        .queue_declare(
            ShortString::from(topology.dead_letter.as_str()),
            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let budget = limit.map_or(u64::from(waiting), |limit| limit.min(u64::from(waiting)));
    let mut moved = 0;
    while moved < budget {
        let Some(message) =
            channel.basic_get(ShortString::from(topology.dead_letter.as_str()), BasicGetOptions::default()).await?
        else {
            break;
        };
        let delivery = message.delivery;
        let headers = headers::replay_headers(delivery.properties.headers().as_ref());
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(topology.main.as_str()),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &delivery.data,
                headers::forward_properties(&delivery.properties, headers),
            )
            .await?;
        match tokio::time::timeout(Duration::from_secs(30), confirm).await.context("no publisher confirm")?? {
            Confirmation::Ack(None) => {}
            other => anyhow::bail!("the broker did not take the replayed copy: {other:?}"),
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    channel.close(200, ShortString::from("replay done")).await.ok();
    connection.close(200, ShortString::from("replay done")).await.ok();
    tracing::info!(moved, from = %topology.dead_letter, to = %topology.main, "replayed dead letters");
    Ok(moved)
}
