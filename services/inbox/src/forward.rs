//! Settling a batch with the broker: park failed messages in a retry tier or
//! the dead-letter queue (publisher confirms), then acknowledge the batch.

use chrono::Utc;
use futures::future::join_all;
use lapin::{
    Channel, Confirmation,
    options::{BasicAckOptions, BasicPublishOptions},
    types::ShortString,
};

use crate::{
    config::InboxConfig,
    headers::{self, DeadLetterReason, Next},
    message::{Item, Outcome},
    metrics::{Counted, InboxMetrics},
    stats::InboxStats,
};

/// Publishes each failed item where it belongs and waits for every confirm,
/// then acks the whole batch at once. An `Err` means the channel cannot be
/// trusted: nothing more is acked and the caller reconnects, so the broker
/// redelivers whatever was not acked (committed ones come back as duplicates).
pub(crate) async fn settle<E>(
    channel: &Channel,
    config: &InboxConfig,
    topology: &crate::Topology,
    items: &[Item<E>],
    stats: &InboxStats,
    metrics: &InboxMetrics,
) -> Result<(), String> {
    let mut confirms = Vec::new();
    let mut counted = Vec::with_capacity(items.len());
    for item in items {
        let made = item.attempts_before.saturating_add(1);
        let Some((queue, headers)) = item.span.in_scope(|| route(item, made, config, topology)) else {
            counted.push(if item.outcome == Outcome::Duplicate { Counted::Duplicate } else { Counted::Processed });
            continue;
        };
        let dead = queue == &topology.dead_letter;
        counted.push(match &item.outcome {
            Outcome::DeadLetter(
                DeadLetterReason::DecodeError
                | DeadLetterReason::UnknownType
                | DeadLetterReason::InvalidMessageId
                | DeadLetterReason::UnsupportedContentType
                | DeadLetterReason::TooLarge,
                _,
            ) => Counted::Poison,
            _ if dead => Counted::DeadLettered,
            _ => Counted::Retried,
        });
        let published = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                // Mandatory: a missing queue returns the message instead of dropping it.
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &item.delivery.data,
                headers::forward_properties(&item.delivery.properties, headers),
            )
            .await
            .map_err(|err| format!("cannot publish to {queue}: {err}"))?;
        confirms.push(async move { (dead, queue, published.await) });
    }
    let answers = tokio::time::timeout(config.confirm_timeout, join_all(confirms))
        .await
        .map_err(|_| format!("no publisher confirm within {:?}", config.confirm_timeout))?;
    let mut dead_lettered = 0;
    for (dead, queue, answer) in &answers {
        match answer {
            Ok(Confirmation::Ack(None)) => {}
            Ok(Confirmation::Ack(Some(returned))) => {
                return Err(format!("{queue} refused the message: {} {}", returned.reply_code, returned.reply_text));
            }
            Ok(other) => return Err(format!("{queue} did not confirm the message: {other:?}")),
            Err(err) => return Err(format!("confirm from {queue} failed: {err}")),
        }
        dead_lettered += usize::from(*dead);
    }
    if let Some(last) = items.last() {
        // Every earlier delivery on this channel is settled: one ack covers the batch.
        last.delivery
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map_err(|err| format!("cannot acknowledge the batch: {err}"))?;
    }
    for item in items {
        match item.outcome {
            Outcome::Processed => stats.count_processed(),
            Outcome::Duplicate => stats.count_duplicate(),
            _ => {}
        }
    }
    stats.count_forwarded(answers.len() - dead_lettered, dead_lettered);
    for (item, outcome) in items.iter().zip(counted) {
        metrics.settled(&topology.main, outcome);
        if outcome == Counted::Processed {
            metrics.processed(headers::occurred_at_millis(&item.delivery.properties));
        }
    }
    Ok(())
}

/// Where a settled item goes, with its new headers; None when it only needs its ack.
fn route<'t, E>(
    item: &Item<E>,
    made: u32,
    config: &InboxConfig,
    topology: &'t crate::Topology,
) -> Option<(&'t String, lapin::types::FieldTable)> {
    let original = item.delivery.properties.headers().as_ref();
    match &item.outcome {
        Outcome::Pending => unreachable!("batch::apply settles every item"),
        Outcome::Processed => {
            tracing::debug!("event processed");
            None
        }
        Outcome::Duplicate => {
            tracing::info!(redelivered = item.delivery.redelivered, "duplicate event acknowledged");
            None
        }
        Outcome::Retry(error) => match headers::next_step(made, config.max_attempts, &config.retry_delays) {
            Next::Retry { tier, delay } => {
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "event failed, will retry");
                Some((&topology.retries[tier].1, headers::retry_headers(original, made)))
            }
            Next::DeadLetter => {
                let reason = DeadLetterReason::MaxAttemptsExceeded;
                tracing::error!(error = %error, reason = reason.as_str(), "event failed its last attempt, dead-lettered");
                Some((&topology.dead_letter, dead_letter(item, made, reason, error, topology)))
            }
        },
        Outcome::DeadLetter(reason, error) => {
            tracing::error!(error = %error, reason = reason.as_str(), "event cannot be processed, dead-lettered");
            Some((&topology.dead_letter, dead_letter(item, made, *reason, error, topology)))
        }
    }
}

fn dead_letter<E>(
    item: &Item<E>,
    made: u32,
    reason: DeadLetterReason,
    error: &str,
    topology: &crate::Topology,
) -> lapin::types::FieldTable {
    headers::dead_letter_headers(
        item.delivery.properties.headers().as_ref(),
        made,
        reason,
        error,
        &topology.main,
        Utc::now(),
    )
}
