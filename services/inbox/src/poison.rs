//! Moving the messages the broker dead-lettered itself (over the main queue's
//! delivery limit: each delivery ended its consumer before the ack) on to the
//! dead-letter queue. The broker's copy carries only `x-death`; the console
//! groups dead letters by `x-dead-letter-reason`, so the copy gets the same
//! headers as the inbox's own dead letters, reason `delivery_limit`.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::{
    Channel, Confirmation, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicPublishOptions},
    types::{FieldTable, ShortString},
};
use tokio_util::sync::CancellationToken;

use crate::{
    headers::{self, DeadLetterReason},
    metrics::{Counted, InboxMetrics},
    stats::InboxStats,
    topology::{POISON_DELIVERY_LIMIT, Topology},
};

/// What the forwarding loop needs besides its channel and consumer.
pub(crate) struct Mover {
    pub(crate) topology: Topology,
    pub(crate) confirm_timeout: Duration,
    pub(crate) stats: std::sync::Arc<InboxStats>,
    pub(crate) metrics: InboxMetrics,
}

impl Mover {
    /// Moves each poison message to the dead-letter queue until `stop` fires.
    /// An `Err` means the channel cannot be trusted; what was not acked stays
    /// in the poison queue for the next session.
    pub(crate) async fn run(
        self,
        channel: Channel,
        mut consumer: Consumer,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return Err(anyhow::Error::new(err).context("poison queue consumer failed")),
                None => anyhow::bail!("the broker cancelled the poison queue consumer"),
            };
            self.move_one(&channel, &delivery).await?;
        }
    }

    /// Publishes the dead-lettered copy, waits for its confirm, then acks.
    async fn move_one(&self, channel: &Channel, delivery: &Delivery) -> anyhow::Result<()> {
        let original = delivery.properties.headers().as_ref();
        let (attempts, source) = attempts_and_source(original, &self.topology);
        let event_id = delivery.properties.message_id().as_ref().map_or("", |id| id.as_str());
        let error = format!(
            "delivered more than {POISON_DELIVERY_LIMIT} times from {source} without an acknowledgement: \
             each delivery ended its consumer before the ack"
        );
        let reason = DeadLetterReason::DeliveryLimit;
        tracing::error!(event_id, queue = %source, attempt = attempts, reason = reason.as_str(), "{error}; dead-lettered");
        let headers = headers::dead_letter_headers(original, attempts, reason, &error, &source, Utc::now());
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.topology.dead_letter.as_str()),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &delivery.data,
                headers::forward_properties(&delivery.properties, headers),
            )
            .await?;
        let dead_letter = &self.topology.dead_letter;
        match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Err(_) => anyhow::bail!("no publisher confirm from {dead_letter} within {:?}", self.confirm_timeout),
            Ok(Err(err)) => return Err(anyhow::Error::new(err).context(format!("confirm from {dead_letter} failed"))),
            Ok(Ok(Confirmation::Ack(None))) => {}
            Ok(Ok(other)) => anyhow::bail!("{dead_letter} did not take the message: {other:?}"),
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        self.stats.count_forwarded(0, 1);
        self.metrics.settled(&self.topology.main, Counted::Poison);
        Ok(())
    }
}

/// The attempts the message used up and the queue the broker took it from.
/// Each delivery was an attempt that never finished, and the broker gives up
/// on the one past the limit (the dead-lettered copy does not say how many
/// there were). Attempts made before, in the retry tiers, are added when
/// `x-attempt` can be believed.
fn attempts_and_source(original: Option<&FieldTable>, topology: &Topology) -> (u32, String) {
    let before = headers::trusted_attempts(original, |queue| topology.is_retry_queue(queue));
    let deliveries = POISON_DELIVERY_LIMIT as u32 + 1;
    let source = headers::deaths(original)
        .into_iter()
        .find(|(_, reason)| reason == "delivery_limit")
        .map_or_else(|| topology.main.clone(), |(queue, _)| queue);
    (before.saturating_add(deliveries), source)
}
